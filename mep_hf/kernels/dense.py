"""``act(W s + b)`` linearized in closed form: no autograd graph, no graph walk, one matmul per product.

The derivative ``act'(z)`` is read off the output ``o = act(z)`` (tanh: ``1 − o²``; sigmoid: ``o(1 − o)``;
relu: ``o > 0``) by the same fused aten kernels autograd's own backward uses, so the linearization keeps exactly
what autograd would (input and output) and nothing more.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_aten = torch.ops.aten
# activation name -> (in-place act, (e, output) -> act'(z) ⊙ e); None: no activation (the output block).
DENSE_ACTIVATIONS: dict[str | None, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor] | None]] = {
    None: (lambda z: z, None),
    "tanh": (torch.tanh_, _aten.tanh_backward),
    "sigmoid": (torch.sigmoid_, _aten.sigmoid_backward),
    "relu": (torch.relu_, lambda e, o: _aten.threshold_backward(e, o, 0)),
}


TRITON_MODES = ("auto", "0", "1")


def triton_enabled(state: Tensor) -> bool:
    """Whether the fused Triton kernels (:mod:`mep_hf.kernels.triton_dense`) compute this float32 state.

    ``MEP_HF_TRITON``: ``auto`` (default) uses them for CUDA states when Triton is installed; ``0`` never (the torch
    path); ``1`` always, which on the CPU needs Triton's interpreter (``TRITON_INTERPRET=1``, for tests).
    """
    mode = os.environ.get("MEP_HF_TRITON", "auto")
    if mode not in TRITON_MODES:
        raise ValueError(f"MEP_HF_TRITON={mode!r}; expected one of {TRITON_MODES}")
    if mode == "0" or state.dtype != torch.float32:
        return False
    installed = importlib.util.find_spec("triton") is not None
    if mode == "1":
        if not installed:
            raise RuntimeError("MEP_HF_TRITON=1 asks for the Triton kernels, but triton is not installed "
                               "(pip install triton, or set MEP_HF_TRITON=auto)")
        if not state.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"MEP_HF_TRITON=1 asks for the Triton kernels, which run on CUDA, but the state is on "
                               f"{state.device.type}; set MEP_HF_TRITON=auto (or TRITON_INTERPRET=1 to run them in "
                               "Triton's interpreter, for tests)")
        return True
    return state.is_cuda and installed


class DenseLinearization:
    """:class:`~mep_hf.equilibrium.BlockLinearization` of ``act(linear(s))`` at the state ``s`` (torch ops)."""

    def __init__(self, linear: nn.Linear, activation: str | None, state: Tensor):
        self.linear, self.activation, self.input = linear, activation, state.detach()
        with torch.no_grad():
            self.output = self._forward()

    def _forward(self) -> Tensor:
        """``act(W s + b)`` at the input state."""
        act, _ = DENSE_ACTIVATIONS[self.activation]
        return act(F.linear(self.input, self.linear.weight, self.linear.bias))

    @classmethod
    def maybe(cls, linear: nn.Linear, activation: str | None, state: Tensor) -> DenseLinearization | None:
        """The closed form where it computes exactly what the module would: a known activation, the state in the
        weights' dtype, no autocast (which would change the matmul dtype). ``None`` sends the block to autograd."""
        if activation not in DENSE_ACTIVATIONS or state.dtype != linear.weight.dtype:
            return None
        if torch.is_autocast_enabled(state.device.type):
            return None
        if triton_enabled(state):
            from .triton_dense import TritonDenseLinearization

            return TritonDenseLinearization(linear, activation, state)
        return cls(linear, activation, state)

    def _delta(self, e: Tensor, scale: float = 1.0) -> Tensor:
        """``scale · act'(z) ⊙ e``: the error at the pre-activation, in the block's dtype (errors stay float32 for
        bf16 blocks; see :func:`mep_hf.equilibrium._state`). ``e`` itself is never written to."""
        e = e.to(self.output.dtype)
        _, derivative = DENSE_ACTIVATIONS[self.activation]
        if derivative is None:
            return e if scale == 1 else e * scale
        delta = derivative(e, self.output)
        return delta if scale == 1 else delta.mul_(scale)

    def vjp(self, e: Tensor, scale: float = 1.0) -> Tensor:
        """``scale · J_fᵀ e`` (``scale``: for blocks that wrap this one, e.g. a residual branch's multiplier)."""
        with torch.no_grad():
            return self._delta(e, scale) @ self.linear.weight

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        """``Δᵀ s`` for the weight (contiguous, in the weight's own layout) and ``Σ Δ`` for the bias."""
        weight, bias = self.linear.weight, self.linear.bias
        with torch.no_grad():
            delta = self._delta(e, scale).reshape(-1, weight.shape[0])
            pairs = []
            if weight.requires_grad:
                pairs.append((weight, delta.t() @ self.input.reshape(-1, weight.shape[1])))
            if bias is not None and bias.requires_grad:
                pairs.append((bias, delta.sum(0)))
        return pairs
