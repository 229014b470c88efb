"""Error feedback: a compressed update keeps what it dropped and sends it later.

A compressor C (low rank, top-k, quantization) applied to a stream g_1, g_2, ... loses a part of every
step. Error feedback compresses b_t = e_{t-1} + g_t instead and carries the residual e_t = b_t - C(b_t), so
the sum of what was sent telescopes: sum_t C(b_t) = sum_t g_t - e_T. As long as the residual stays bounded,
the transmitted sum tracks the true sum with a relative error that shrinks like 1/T -- nothing is lost, only
delayed. The buffer lives in the optimizer state under a caller-chosen key, so it is checkpointed with it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accumulate(state: dict, key: str, value: Tensor) -> Tensor:
    """Add this step's input to the carried residual; returns the buffer (updated in place) to compress."""
    buffer = state.get(key)
    if buffer is None:
        buffer = state[key] = torch.zeros_like(value)
    return buffer.add_(value)


def subtract_sent(buffer: Tensor, sent: Tensor, retain: float = 0.0) -> None:
    """Remove what the compressor transmitted; the dropped part stays for the next step.

    ``retain`` in [0, 1) also keeps that fraction of the transmitted part: the buffer then decays like a
    heavy-ball momentum on top of the feedback (Dion's M_t = B_t - (1 - mu) P R^T). ``retain=0`` is plain error
    feedback.
    """
    buffer.sub_(sent, alpha=1.0 - retain)
