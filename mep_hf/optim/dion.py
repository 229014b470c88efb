"""Dion: rank-r orthonormal updates for large matrices, with error feedback (Ahn et al. 2025, arXiv 2504.05295).

Muon orthogonalizes the whole (m, n) momentum every step: O(m n min(m, n)) work and a full matrix to
communicate. Dion keeps a rank-r basis Q (n, r) across steps and does one warm-started power iteration:

    B = M + G                     buffer: carried residual/momentum plus the new gradient
    P = orth(B Q)                 (m, r), orthonormal columns (QR)
    R = B^T P                     (n, r); P R^T is the rank-r approximation of B
    M = B - (1 - mu) P R^T        error feedback: what the rank-r update dropped stays in M
    Q = R / ||R||_col             column-normalized, also next step's warm start
    W <- W - lr * s * P Q^T       rank <= r update with unit-norm factors

O(m n r) work. Because the residual is carried (``mep_hf.optim.feedback``), the low-rank updates add up to the
full gradient over time instead of losing everything outside the top-r subspace. Matrices with
min(m, n) <= rank gain nothing from compression and go to Muon; non-matrices go to AdamW.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import feedback
from ._base import MEPOptimizer, as_matrix, dense_grads
from .muon import Muon, muon_defaults


def low_rank_approximation(B: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step warm-started from ``Q``: ``(P, R)`` with orthonormal ``P`` and ``P R^T ~ B``."""
    P = torch.linalg.qr(B @ Q).Q
    return P, B.T @ P


class Dion(Muon):
    """Dion on matrices whose smaller side exceeds ``rank``, Muon on smaller matrices, AdamW on the rest.

    Args (beyond :class:`Muon`'s):
        rank: r, the rank of each Dion update (clipped to the matrix size).
        seed: seeds the initial basis Q, so runs repeat without touching the global RNG.
    ``momentum`` is Dion's mu, the fraction of the transmitted part kept in the buffer (and the Muon groups'
    momentum); ``eps`` also guards the column normalization of R; ``nesterov`` and ``ns_*`` apply to Muon groups.
    """

    algorithms = ("dion", "muon", "adamw")
    matrix_algorithms = ("dion", "muon")

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        rank: int = 16,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str | None = None,
        adjust_lr: str = "match_rms_adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        defaults = muon_defaults(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_dtype=ns_dtype, adjust_lr=adjust_lr, betas=betas, eps=eps,
        )
        MEPOptimizer.__init__(self, params, {**defaults, "rank": rank, "seed": seed})

    def algorithm_for(self, p: Tensor, group: dict) -> str:
        if p.ndim >= 2 and min(as_matrix(p).shape) > group.get("rank", self.defaults["rank"]):
            return "dion"
        return super().algorithm_for(p, group)

    def _step_dion(self, group: dict) -> None:
        for p, grad in dense_grads(group["params"], type(self).__name__):
            G = as_matrix(grad)
            rank = min(group["rank"], *G.shape)
            state = self.state[p]
            buffer = feedback.accumulate(state, "buffer", G)
            work = buffer.to(torch.promote_types(buffer.dtype, torch.float32))  # QR has no half precision
            if "q" not in state:
                generator = torch.Generator(device=p.device).manual_seed(group["seed"])
                noise = torch.randn(G.shape[1], rank, generator=generator, device=p.device, dtype=work.dtype)
                state["q"] = torch.linalg.qr(noise).Q
            P, R = low_rank_approximation(work, state["q"].to(work.dtype))
            feedback.subtract_sent(buffer, (P @ R.T).to(buffer.dtype), retain=group["momentum"])
            state["q"] = R / R.norm(dim=0, keepdim=True).clamp(min=group["eps"])
            self._apply_matrix_update(p, P @ state["q"].T, group, rank=rank)
