"""``s + α·act(W·LayerNorm(s) + b)`` (a pre-norm residual block) linearized in closed form.

At depth 10,000 the engine linearizes a block four times per step (free pass, sweep, contrast); a one-block
autograd graph per block costs a graph build and a graph walk each time. The branch is a
:class:`~mep_hf.kernels.DenseLinearization` at the normalized state; the layer norm keeps what autograd's backward
would (its mean and inverse std) and is differentiated by the aten kernel autograd itself calls
(``native_layer_norm_backward``), so the results are the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dense import DENSE_ACTIVATIONS, DenseLinearization

_aten = torch.ops.aten


class ResidualDenseLinearization:
    """:class:`~mep_hf.equilibrium.BlockLinearization` of ``s + scale·act(linear(layer_norm(s)))`` at ``s``
    (layer norm without affine parameters, over the last dimension)."""

    def __init__(self, linear: nn.Linear, activation: str, scale: float, eps: float, state: Tensor):
        self.scale, self.input = scale, state.detach()
        with torch.no_grad():
            normed, self.mean, self.rstd = _aten.native_layer_norm(self.input, [state.shape[-1]], None, None, eps)
            self.branch = DenseLinearization(linear, activation, normed)
            self.output = torch.add(self.input, self.branch.output, alpha=scale)

    @classmethod
    def maybe(cls, linear: nn.Linear, activation: str, scale: float, eps: float, state: Tensor):
        """The closed form where it computes exactly what the module would (a known activation, the state in the
        weights' dtype, no autocast); ``None`` sends the block to autograd."""
        if activation is None or activation not in DENSE_ACTIVATIONS or state.dtype != linear.weight.dtype:
            return None
        if torch.is_autocast_enabled(state.device.type):
            return None
        return cls(linear, activation, scale, eps, state)

    def vjp(self, e: Tensor) -> Tensor:
        """``e + J_LNᵀ (α·J_branchᵀ e)``: the skip path plus the branch through the layer norm."""
        with torch.no_grad():
            g = self.branch.vjp(e, self.scale)
            (g,) = _aten.native_layer_norm_backward(g, self.input, [g.shape[-1]], self.mean, self.rstd, None, None,
                                                    [True, False, False])[:1]
            return g.add_(e)

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        """The branch's, with its multiplier α folded into ``scale``."""
        return self.branch.parameter_grads(e, scale * self.scale)
