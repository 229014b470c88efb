"""What the MEP optimizers share: matrix views, input checks, the step frame.

Every optimizer here treats a weight of shape (out, *rest) as the matrix (out, prod(rest)) -- a conv kernel
maps its flattened receptive field to its output channels -- and refuses inputs it cannot update correctly
(complex values, sparse gradients) with an error naming the problem and the parameter's shape, instead of
producing garbage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def as_matrix(t: Tensor) -> Tensor:
    """(out, *rest) -> (out, prod(rest)); a view when the layout allows it."""
    return t.reshape(t.shape[0], -1)


def tensor_of(item: Tensor | tuple[str, Tensor]) -> Tensor:
    """A group's params may be tensors or (name, tensor) pairs, as ``torch.optim`` allows."""
    return item[1] if isinstance(item, tuple) else item


def check_real(params: Iterable[Tensor | tuple[str, Tensor]], optimizer: str) -> None:
    for p in map(tensor_of, params):
        if torch.is_complex(p):
            raise TypeError(
                f"{optimizer} does not support complex parameters (got one of shape {tuple(p.shape)}, {p.dtype})"
            )


def dense_grads(params: Iterable[Tensor], optimizer: str) -> Iterator[tuple[Tensor, Tensor]]:
    """(param, grad) for every param that has a gradient; sparse gradients are an error."""
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise TypeError(
                f"{optimizer} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                "use a dense embedding (sparse=False)"
            )
        yield p, p.grad


class MEPOptimizer(Optimizer):
    """Common frame: lr and weight decay are checked, complex parameters are refused when added, and
    ``step`` runs the closure, then ``_step_group(group)`` under ``no_grad`` for every group."""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        if defaults["lr"] < 0 or defaults["weight_decay"] < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {defaults['lr']}, {defaults['weight_decay']}")
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        check_real([params] if isinstance(params, Tensor) else list(params), type(self).__name__)
        super().add_param_group(param_group)

    def _step_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss
