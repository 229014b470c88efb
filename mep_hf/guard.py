"""The divergence guard: training stops, before another checkpoint is written, when the loss at the feed-forward
state is non-finite or explodes.

The loss is read before any settling, at the free state, which only the parameters decide: when it blows up, the
parameter *updates* diverged (learning rate, clipping). When it is fine and settling then diverges, settling is to
blame (β, settle steps): :class:`~mep_hf.equilibrium.SettlingDivergedError` says so. The two never get confused.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

UPDATE_KNOBS = "lower learning_rate or set max_grad_norm (gradient clipping)"


class TrainingDivergedError(RuntimeError):
    """The parameter updates diverged: the training loss at the feed-forward state is non-finite or exploded."""


class LossGuard:
    """Watches the per-step training loss. It explodes when it exceeds ``factor`` times the baseline: the lowest
    median of ``window`` consecutive losses seen so far (a slow climb cannot drag it up), but at least 10% of the
    first loss: a loss that converged near zero may fluctuate by orders of magnitude (a trained classic-EP MLP's MSE
    loss jumped 0.005 → 0.05 between batches while its accuracy rose). ``factor = 0`` turns that check off;
    non-finite losses always stop training."""

    rising = 2.0  # settling that fails on a loss this many times its baseline is blamed on the updates
    floor = 0.1  # the baseline never drops below this fraction of the first loss

    def __init__(self, factor: float, window: int):
        self.factor, self.recent, self.lowest, self.first = factor, deque(maxlen=window), math.inf, None

    @property
    def baseline(self) -> float:
        return math.inf if self.first is None else max(self.lowest, self.floor * abs(self.first))

    def has_risen(self, loss: float) -> bool:
        """Whether the loss has climbed well above its baseline: the updates, not β, are then the likely culprit
        when settling diverges."""
        return loss > self.rising * self.baseline

    def recent_loss(self) -> float | None:
        """Median of the last few losses: the health a checkpoint saved now is recorded with."""
        return statistics.median(list(self.recent)[-5:]) if self.recent else None

    def check(self, loss: float, step: int) -> str | None:
        """Why training must stop at this loss, or ``None`` (the loss is then recorded)."""
        if not math.isfinite(loss):
            return (f"the training loss at the feed-forward state is {loss} at step {step}, before any settling: the "
                    f"last parameter update diverged; {UPDATE_KNOBS}")
        if self.factor > 0 and loss > self.factor * self.baseline:
            return (f"the training loss exploded at step {step}: {loss:.4g} is more than ep_loss_guard_factor="
                    f"{self.factor:g} times its lowest recent median {self.baseline:.4g}. It is measured at the "
                    f"feed-forward state, before settling, so the parameter updates diverged: {UPDATE_KNOBS} "
                    "(or raise ep_loss_guard_factor, 0 = off, if such jumps are expected)")
        self.recent.append(loss)
        self.first = loss if self.first is None else self.first
        self.lowest = min(self.lowest, statistics.median(self.recent))
        return None
