"""Muon on weight matrices, AdamW on everything else -- one ``torch.optim.Optimizer``.

Muon replaces the momentum of each weight matrix by its orthogonalized version (every singular value ~1), so
a step moves all directions of the layer's input/output spaces by the same amount, whatever the scale of the
gradient. That matters for EP, whose gradients come from a small finite nudge and vary in scale across layers.

Why not ``torch.optim.Muon`` as is: its Newton-Schulz runs in bfloat16 unconditionally (about 9x slower than
float32 on the CPUs this project runs on), it rejects conv kernels and anything not 2-D, and it leaves the
other parameters to a second optimizer, which the Hugging Face Trainer (one optimizer, one scheduler, one
checkpoint) cannot take. This class keeps its update rule exactly (with ``ns_dtype="bfloat16"`` it matches
``torch.optim.Muon`` bit for bit, tested) and adds: routing by parameter group, conv kernels as
(out, in*kh*kw) matrices, a float32 default for the orthogonalization, and the AdamW fallback through
``torch.optim.adamw.adamw`` (same state keys as ``torch.optim.AdamW``, also tested bit for bit).

Every parameter group carries an ``"algorithm"``: groups given without one are split by shape (>= 2 dims ->
the matrix algorithm, the rest -> ``"adamw"``). Pass embeddings explicitly as an ``"adamw"`` group: they are
lookup tables, not linear maps (``mep_hf.optim.build_optimizer`` does this).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from ._base import MEPOptimizer, as_matrix, dense_grads, tensor_of
from .newton_schulz import newton_schulz_orthogonalize

LR_ADJUSTMENTS = ("match_rms_adamw", "original")
NS_DTYPES = (None, "float32", "float64", "bfloat16", "float16")


def lr_scale(rows: int, cols: int, rank: int, adjust_lr: str) -> float:
    """Learning-rate multiplier for an update U with ``rank`` unit singular values on a (rows, cols) weight.

    ``"match_rms_adamw"`` (Moonshot, arXiv 2502.16982) makes the update's RMS 0.2, about AdamW's, so one
    learning rate serves the matrix groups and the AdamW groups alike -- the HF Trainer has only one. Since
    ||U||_F^2 = rank, RMS(U) = sqrt(rank / (rows * cols)). ``"original"`` is Keller Jordan's sqrt(max(1, rows/cols)).
    """
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(rows * cols / rank)
    return math.sqrt(max(1.0, rows / cols))


def muon_defaults(
    *, lr: float, weight_decay: float, momentum: float, nesterov: bool, ns_steps: int, ns_dtype: str | None,
    adjust_lr: str, betas: tuple[float, float], eps: float,
) -> dict[str, Any]:
    """Validated hyper-parameters of :class:`Muon` (and of the Muon/AdamW part of its subclasses)."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not (isinstance(ns_steps, int) and ns_steps >= 1):
        raise ValueError(f"ns_steps must be a positive int, got {ns_steps!r}")
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")
    if adjust_lr not in LR_ADJUSTMENTS:
        raise ValueError(f"adjust_lr must be one of {LR_ADJUSTMENTS}, got {adjust_lr!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return dict(
        lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
        ns_dtype=ns_dtype, adjust_lr=adjust_lr, betas=tuple(betas), eps=eps,
    )


class Muon(MEPOptimizer):
    """Muon (momentum -> Newton-Schulz -> scaled step, decoupled weight decay) with an AdamW fallback.

    Args:
        params: parameters or parameter groups (see module docstring for routing).
        lr, weight_decay: shared by both algorithms (decoupled decay: p <- p (1 - lr wd)).
        momentum, nesterov: Muon momentum (buf <- lerp(buf, g, 1 - momentum)).
        ns_steps, ns_dtype: Newton-Schulz steps and compute dtype name (None: float32, or float64 params).
        adjust_lr: ``"match_rms_adamw"`` (default, one lr for all groups) or ``"original"``, see :func:`lr_scale`.
        betas, eps: AdamW fallback.
    """

    algorithms: tuple[str, ...] = ("muon", "adamw")
    matrix_algorithms: tuple[str, ...] = ("muon",)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str | None = None,
        adjust_lr: str = "match_rms_adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(
            params,
            muon_defaults(
                lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                ns_dtype=ns_dtype, adjust_lr=adjust_lr, betas=betas, eps=eps,
            ),
        )

    # -- routing -------------------------------------------------------------------------------------------
    def algorithm_for(self, p: Tensor, group: dict) -> str:
        """The algorithm a parameter of a group without an explicit ``"algorithm"`` gets."""
        return "muon" if p.ndim >= 2 else "adamw"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        name = type(self).__name__
        if "algorithm" in param_group:
            routed = {param_group["algorithm"]: params}
        else:
            routed = {}
            for p in params:
                routed.setdefault(self.algorithm_for(tensor_of(p), param_group), []).append(p)
        for algorithm, ps in routed.items():
            if algorithm not in self.algorithms:
                raise ValueError(f"{name}: unknown algorithm {algorithm!r}; valid: {self.algorithms}")
            if algorithm in self.matrix_algorithms and any(tensor_of(p).ndim < 2 for p in ps):
                raise ValueError(f"{name}: algorithm {algorithm!r} needs parameters with >= 2 dims")
            super().add_param_group({**param_group, "params": ps, "algorithm": algorithm})

    # -- stepping ------------------------------------------------------------------------------------------
    def _step_group(self, group: dict[str, Any]) -> None:
        getattr(self, f"_step_{group['algorithm']}")(group)

    def _apply_matrix_update(self, p: Tensor, update: Tensor, group: dict, rank: int) -> None:
        """p <- p (1 - lr wd) - lr * lr_scale * update, for ``update`` given as a (rows, cols) matrix."""
        rows, cols = update.shape
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.reshape(p.shape), alpha=-group["lr"] * lr_scale(rows, cols, rank, group["adjust_lr"]))

    def _step_muon(self, group: dict) -> None:
        ns_dtype = getattr(torch, group["ns_dtype"]) if group["ns_dtype"] else None
        for p, grad in dense_grads(group["params"], type(self).__name__):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - group["momentum"])
            update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
            ortho = newton_schulz_orthogonalize(as_matrix(update), group["ns_steps"], dtype=ns_dtype)
            self._apply_matrix_update(p, ortho, group, rank=min(ortho.shape))

    def _step_adamw(self, group: dict) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p, grad in dense_grads(group["params"], type(self).__name__):
            state = self.state[p]
            if "step" not in state:  # the layout torch.optim.AdamW uses, so its state is interchangeable
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if params:
            beta1, beta2 = group["betas"]
            adamw(
                params, grads, exp_avgs, exp_avg_sqs, [], steps,
                amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=False,
            )
