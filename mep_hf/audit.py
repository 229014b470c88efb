"""The gradient audit: every ``ep_audit_steps`` optimizer steps, EP's gradient against backprop's on the same batch.

EP's gradient is backprop's only in the limit of a small nudge, and how small is small enough depends on the model
(docs/defaults.md). So the trainer checks instead of trusting: on an audited step it runs the EP step as always,
then one backprop step of the same Trainer loss through the same blocks (the same dropout masks), compares the two
micro-batch gradients, and puts the EP one back. ``ep_audit_cosine`` and ``ep_audit_rel_error`` go to the logs
beside the loss; leaving the bounds warns once, or raises :class:`GradientAuditError` with ``ep_audit_strict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.utils import logging

logger = logging.get_logger(__name__)


class GradientAuditError(RuntimeError):
    """EP's gradient left the audit's bounds against backprop's (``ep_audit_strict=True``)."""


def agreement(ep: Sequence[Tensor | None], reference: Sequence[Tensor | None]) -> tuple[float, float]:
    """Cosine and relative error ``‖g_EP − g_BP‖/‖g_BP‖`` of two whole gradients (all tensors as one vector, in
    float64; a missing gradient counts as zero)."""
    dot = ep_sq = ref_sq = diff_sq = 0.0
    for a, b in zip(ep, reference):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        a, b = a.detach().double(), b.detach().double()
        dot, ep_sq = dot + float(a.flatten() @ b.flatten()), ep_sq + float(a.square().sum())
        ref_sq, diff_sq = ref_sq + float(b.square().sum()), diff_sq + float((a - b).square().sum())
    if ref_sq == 0:
        return (1.0 if ep_sq == 0 else 0.0), (0.0 if ep_sq == 0 else math.inf)
    return dot / math.sqrt(max(ep_sq * ref_sq, 1e-300)), math.sqrt(diff_sq / ref_sq)


@dataclass
class GradientAudit:
    """When to audit and what counts as agreeing (``EPTrainingArguments.ep_audit_*``)."""

    every: int
    min_cosine: float
    max_rel_error: float
    strict: bool
    _last_step: int = -1
    _warned: bool = False

    def due(self, global_step: int) -> bool:
        """At the first micro-batch of optimizer steps 0, N, 2N, ... (``global_step`` counts finished steps)."""
        if self.every == 0 or global_step % self.every or global_step == self._last_step:
            return False
        self._last_step = global_step
        return True

    def judge(self, cosine: float, rel_error: float, step: int) -> None:
        """Warn once (or raise, when strict) if the gradients disagree beyond the bounds."""
        if cosine >= self.min_cosine and rel_error <= self.max_rel_error:
            return
        message = (
            f"EP gradient audit at step {step}: against backprop on this batch, cosine {cosine:.5f} (bound >= "
            f"{self.min_cosine}) and relative error {rel_error:.3g} (bound <= {self.max_rel_error}). EP is not "
            "following the loss's gradient here: leave ep_beta unset (scale-free) or lower ep_nudge_displacement / "
            "ep_beta, or use ep_nudging='centered' (docs/defaults.md)."
        )
        if self.strict:
            raise GradientAuditError(message)
        if not self._warned:
            self._warned = True
            logger.warning(message + " Set ep_audit_strict=True to stop training instead; this warning is shown once.")
