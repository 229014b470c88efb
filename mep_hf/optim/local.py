"""Local normalized SGD: each tensor is updated from its own gradient only.

The bio-plausible choice for EP: a synapse may use its own (EP) gradient and its own history, nothing computed
across layers -- no global gradient norm, no shared statistics. Heavy-ball momentum smooths the noisy EP
estimate, and dividing by the tensor's own momentum RMS makes the step lr per coordinate (RMS) whatever the
layer's gradient scale, which in EP varies with depth and the nudging strength beta.
"""

from __future__ import annotations

from typing import Any

import torch
from ._base import MEPOptimizer, dense_grads


class LocalNormalizedSGD(MEPOptimizer):
    """m <- momentum m + g;  p <- p (1 - lr wd) - lr m / (RMS(m) + eps), independently per tensor."""

    def __init__(
        self, params: Any, lr: float = 1e-3, weight_decay: float = 0.0, *, momentum: float = 0.9, eps: float = 1e-8
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eps=eps))

    def _step_group(self, group: dict[str, Any]) -> None:
        for p, grad in dense_grads(group["params"], type(self).__name__):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buf = state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
            rms = buf.square().mean().sqrt()
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(buf / (rms + group["eps"]), alpha=-group["lr"])
