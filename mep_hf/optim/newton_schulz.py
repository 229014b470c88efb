"""Quintic Newton-Schulz iteration: a matrix -> an approximately orthogonal one, with matmuls only.

Muon wants the polar factor U V^T of G = U S V^T (every singular value set to 1). An SVD is slow on
accelerators; five steps of X <- a X + b (X X^T) X + c (X X^T)^2 X from X_0 = G / ||G||_F apply the odd
polynomial p(s) = a s + b s^3 + c s^5 to every singular value while keeping U and V. The Muon coefficients
(Keller Jordan, https://kellerjordan.github.io/posts/muon/) maximize the slope at zero rather than converge,
so the result is U S' V^T with S' in a band around 1, not exactly 1, which is what Muon relies on.

Band for 5 steps (measured on p^5 in float64 and on float32 matrices, see tests/test_optim.py):
every singular value s of G with s >= 2e-3 * ||G||_F comes out in [0.68, 1.21] (exact scalar map:
[0.6818, 1.2024]; the upper end is only reached for s/||G||_F in [2e-3, 5e-3]; for s/||G||_F >= 1e-2 the band
is [0.68, 1.135]). Smaller singular values are amplified by at most a^5 ~ 486 and stay below 0.68, so near-null
directions are not blown up to unit length -- a square Gaussian matrix, whose smallest singular values are
~1e-4 ||G||_F, keeps those few below the band.
"""

from __future__ import annotations

import torch
from torch import Tensor

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz_orthogonalize(
    G: Tensor, steps: int = 5, *, dtype: torch.dtype | None = None, eps: float = 1e-7
) -> Tensor:
    """Approximately orthogonalize the 2-D ``G`` (returns a new tensor in ``dtype``).

    ``dtype`` is the compute precision: ``None`` keeps float64 and promotes anything narrower to float32;
    ``torch.bfloat16`` is the choice on GPUs (it is what ``torch.optim.Muon`` always uses) but is ~9x slower
    than float32 on CPUs without bf16 matmul units.
    """
    if G.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(G.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    a, b, c = MUON_COEFFICIENTS
    X = G.to(dtype or torch.promote_types(G.dtype, torch.float32))
    tall = G.shape[0] > G.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        X = X.T
    X = X / X.norm().clamp(min=eps)  # ||X||_2 <= ||X||_F = 1: inside p's basin
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X
