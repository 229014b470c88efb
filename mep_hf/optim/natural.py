"""Diagonal natural gradient: the gradient preconditioned by the inverse of a diagonal empirical Fisher.

The natural gradient F^{-1} g measures a step by how much it changes the model's predictions rather than by
how far the raw parameters move, so coordinates that barely affect the output (small Fisher) get larger steps
and over-sensitive ones smaller steps. Here F is diagonal: an exponential moving average of squared gradients
(bias-corrected like Adam's second moment), damped by ``damping`` times its per-tensor mean so coordinates
with a tiny Fisher are not amplified without bound. Unlike Adam (F^{-1/2} g) this is the full inverse.

Step length: the empirical-Fisher natural gradient scales like 1/gradient, so its raw size says little; each
tensor's natural direction n = g / (F + lambda) is rescaled to RMS 1 and the step is lr * n / RMS(n). The
learning rate is thus the per-coordinate RMS step, as in the other MEP optimizers, and every tensor is
preconditioned with its own statistics only.
"""

from __future__ import annotations

from typing import Any

import torch
from ._base import MEPOptimizer, dense_grads


class DiagonalNaturalGradient(MEPOptimizer):
    """Args: lr (RMS step per tensor), weight_decay (decoupled), beta (Fisher EMA), damping (relative), eps."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        beta: float = 0.95,
        damping: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if damping <= 0 or eps <= 0:
            raise ValueError(f"damping and eps must be > 0, got damping={damping}, eps={eps}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, beta=beta, damping=damping, eps=eps))

    def _step_group(self, group: dict[str, Any]) -> None:
        beta = group["beta"]
        for p, grad in dense_grads(group["params"], type(self).__name__):
            state = self.state[p]
            if "fisher" not in state:
                state["step"] = torch.tensor(0.0)
                state["fisher"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            state["fisher"].lerp_(grad.square(), 1 - beta)
            fisher = state["fisher"] / (1 - beta ** state["step"].item())
            natural = grad / (fisher + group["damping"] * fisher.mean() + group["eps"])
            rms = natural.square().mean().sqrt().clamp(min=group["eps"])
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(natural / rms, alpha=-group["lr"])
