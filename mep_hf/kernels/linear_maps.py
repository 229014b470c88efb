"""Closed-form linearizations of the two linear maps a Hopfield (primitive-function) energy couples layers with.

``f(s) = W·flatten(s) + b`` (dense) and ``f(s) = pool(conv(s))`` (convolution, then max or average pooling).
Each offers the three things EP needs at a state ``s`` (the :class:`~mep_hf.equilibrium.BlockLinearization`
protocol): ``output = f(s)``, the state VJP ``J_f(s)ᵀ e`` and the parameter product ``scale · J_θ f(s)ᵀ e``,
written with the aten kernels autograd's own backward uses (``conv_transpose2d``, ``max_pool2d_with_indices_backward``,
``convolution_backward``): no autograd graph, no graph walk.

Unlike :class:`~mep_hf.kernels.DenseLinearization`, these do not switch autograd off: the engine runs them under
``torch.no_grad()``, and a model's ``forward`` run with autograd on records them, so backprop through an unrolled
settling loop (BPTT, the baseline EP is compared with) differentiates the very same operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_aten = torch.ops.aten
POOLS = ("max", "avg", "none")


class LinearMapLinearization:
    """``W·flatten(s) + b`` at the state ``s`` (any shape ``(batch, ...)``; the VJP comes back in that shape)."""

    def __init__(self, linear: nn.Linear, state: Tensor):
        self.linear, self.input = linear, state
        self.output = F.linear(state.flatten(1), linear.weight, linear.bias)

    def vjp(self, e: Tensor) -> Tensor:
        return (e @ self.linear.weight).view(self.input.shape)

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        weight, bias, pairs = self.linear.weight, self.linear.bias, []
        if weight.requires_grad:
            pairs.append((weight, (e.t() @ self.input.flatten(1)).mul_(scale)))
        if bias is not None and bias.requires_grad:
            pairs.append((bias, e.sum(0).mul_(scale)))
        return pairs


class ConvPoolLinearization:
    """``pool(conv(s) + b)`` at the state ``s``: stride-1 convolution with zero ``padding``, then ``pool_size``-wide
    non-overlapping max or average pooling (or none). Max pooling is piecewise linear: its linearization routes each
    error to the position that won the max at ``s`` (ties go to the first, as in ``max_pool2d``)."""

    def __init__(self, conv: nn.Conv2d, pool: str, pool_size: int, state: Tensor):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        self.conv, self.pool, self.k, self.input = conv, pool, pool_size, state
        self.z = F.conv2d(state, conv.weight, conv.bias, 1, conv.padding)
        if pool == "max":
            self.output, self.indices = F.max_pool2d(self.z, pool_size, pool_size, return_indices=True)
        elif pool == "avg":
            self.output = F.avg_pool2d(self.z, pool_size, pool_size)
        else:
            self.output = self.z

    def _unpool(self, e: Tensor) -> Tensor:
        """``J_pool(z)ᵀ e``: the error at the convolution's output."""
        k = self.k
        if self.pool == "max":
            return _aten.max_pool2d_with_indices_backward(e, self.z, [k, k], [k, k], [0, 0], [1, 1], False, self.indices)
        if self.pool == "avg":
            return _aten.avg_pool2d_backward(e, self.z, [k, k], [k, k], [0, 0], False, True, None)
        return e

    def vjp(self, e: Tensor) -> Tensor:
        return F.conv_transpose2d(self._unpool(e), self.conv.weight, None, 1, self.conv.padding)

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        weight, bias = self.conv.weight, self.conv.bias
        mask = [False, weight.requires_grad, bias is not None and bias.requires_grad]
        if not any(mask):
            return []
        delta = self._unpool(e)
        _, dw, db = _aten.convolution_backward(
            delta, self.input, weight, None if bias is None else [bias.shape[0]], [1, 1], list(self.conv.padding),
            [1, 1], False, [0, 0], 1, mask,
        )
        pairs = []
        if mask[1]:
            pairs.append((weight, dw.mul_(scale)))
        if mask[2]:
            pairs.append((bias, db.mul_(scale)))
        return pairs
