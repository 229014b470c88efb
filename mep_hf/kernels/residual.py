"""``s + α·act(W·LayerNorm(s) + b)`` (a pre-norm residual block) linearized in closed form.

At depth 10,000 the engine linearizes a block four times per step (free pass, sweep, contrast); a one-block
autograd graph per block costs a graph build and a graph walk each time. This keeps what autograd's backward
would keep (the input, the normalized input with its mean and inverse std, the activation output) and computes
both products with the aten kernels autograd's backward itself calls (``native_layer_norm_backward``, the
activation backwards of :data:`~mep_hf.kernels.DENSE_ACTIVATIONS`), so the results are the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense import DENSE_ACTIVATIONS

_aten = torch.ops.aten


class ResidualDenseLinearization:
    """:class:`~mep_hf.equilibrium.BlockLinearization` of ``s + scale·act(linear(layer_norm(s)))`` at ``s``
    (layer norm without affine parameters, over the last dimension)."""

    def __init__(self, linear: nn.Linear, activation: str, scale: float, eps: float, state: Tensor):
        self.linear, self.activation, self.scale, self.input = linear, activation, scale, state.detach()
        act, _ = DENSE_ACTIVATIONS[activation]
        with torch.no_grad():
            self.normed, self.mean, self.rstd = _aten.native_layer_norm(self.input, [state.shape[-1]], None, None, eps)
            self.act = act(F.linear(self.normed, linear.weight, linear.bias))
            self.output = torch.add(self.input, self.act, alpha=scale)

    @classmethod
    def maybe(cls, linear: nn.Linear, activation: str, scale: float, eps: float, state: Tensor):
        """The closed form where it computes exactly what the module would (a known activation, the state in the
        weights' dtype, no autocast); ``None`` sends the block to autograd."""
        if activation not in DENSE_ACTIVATIONS or activation is None or state.dtype != linear.weight.dtype:
            return None
        if torch.is_autocast_enabled(state.device.type):
            return None
        return cls(linear, activation, scale, eps, state)

    def _delta(self, e: Tensor, scale: float) -> Tensor:
        """``scale·α·act'(z) ⊙ e``: the error at the branch's pre-activation (``e`` is never written to)."""
        _, derivative = DENSE_ACTIVATIONS[self.activation]
        return derivative(e, self.act).mul_(scale * self.scale)

    def vjp(self, e: Tensor) -> Tensor:
        """``e + J_LNᵀ (Wᵀ δ)``: the skip path plus the branch through the layer norm."""
        with torch.no_grad():
            g = self._delta(e, 1.0) @ self.linear.weight
            (g,) = _aten.native_layer_norm_backward(g, self.input, [g.shape[-1]], self.mean, self.rstd, None, None,
                                                    [True, False, False])[:1]
            return g.add_(e)

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        """``δᵀ·LN(s)`` for the weight and ``Σ δ`` for the bias."""
        weight, bias = self.linear.weight, self.linear.bias
        with torch.no_grad():
            delta = self._delta(e, scale)
            pairs = []
            if weight.requires_grad:
                pairs.append((weight, delta.t() @ self.normed))
            if bias is not None and bias.requires_grad:
                pairs.append((bias, delta.sum(0)))
        return pairs
