"""Spectral constraint sigma_max(W) <= gamma, attached to any optimizer.

Why: EP settles states by iterating the network's own maps; weight matrices with spectral norm <= gamma (< 1
for the energy to stay contractive under 1-Lipschitz activations) keep settling convergent and the fixed point
unique, whatever the optimizer does. After each optimizer step every constrained weight (as a matrix
(out, in*k*k) for conv kernels) is rescaled by min(1, gamma / sigma_max): spectral normalization, which keeps
the direction and the relative spectrum, rather than the SVD projection that clips each singular value.

sigma_max comes from power iteration warm-started from the previous step's right singular vector, kept in the
optimizer state (``"spectral_v"``), so a few iterations suffice (1-7 per matrix and step on the tests' MLP, ~20
right after a large change); iterations continue until the estimate changes by less than ``power_tol``
(relative), because power iteration approaches sigma_max from below and a stopped-early estimate would let
sigma_max exceed gamma. Each iteration costs two matrix-vector products and one host sync. The settings live in the param groups
(``spectral_gamma``; ``None`` leaves a group unconstrained), so both they and the vectors are saved by
``optimizer.state_dict()`` and survive a checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._base import as_matrix


def constrain_spectral_norm(
    optimizer: Optimizer, gamma: float = 1.0, *, power_tol: float = 1e-5, power_iterations: int = 100
) -> Optimizer:
    """Make ``optimizer.step()`` keep sigma_max(W) <= gamma for its matrix parameters; returns ``optimizer``.

    Works with any ``torch.optim.Optimizer`` (it registers a step post-hook). Groups that already set
    ``spectral_gamma`` keep their value (``None``: not constrained, e.g. embeddings and biases).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if gamma <= 0 or power_tol <= 0 or power_iterations < 1:
        raise ValueError(
            f"need gamma > 0, power_tol > 0, power_iterations >= 1; got {gamma}, {power_tol}, {power_iterations}"
        )
    if getattr(optimizer, "_spectral_hook", None) is not None:
        raise ValueError("this optimizer already has a spectral constraint")
    for group in optimizer.param_groups:
        group.setdefault("spectral_gamma", gamma)
        group.setdefault("spectral_power_tol", power_tol)
        group.setdefault("spectral_power_iterations", power_iterations)
    optimizer._spectral_hook = optimizer.register_step_post_hook(_project)
    return optimizer


def spectral_norm_estimate(W: Tensor, v: Tensor, tol: float, max_iterations: int) -> float:
    """sigma_max(W) by power iteration from the unit vector ``v`` (updated in place); a lower bound."""
    sigma = 0.0
    for _ in range(max_iterations):
        u = W @ v
        u = u / u.norm().clamp(min=torch.finfo(u.dtype).tiny)
        w = W.T @ u
        new = w.norm().item()
        if new == 0.0:
            return 0.0
        v.copy_(w / new)
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma


@torch.no_grad()
def _project(optimizer: Optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        gamma = group.get("spectral_gamma")
        if gamma is None:
            continue
        for p in group["params"]:
            if p.grad is None or p.ndim < 2:  # only what this step may have changed
                continue
            W = as_matrix(p).to(torch.promote_types(p.dtype, torch.float32))  # half precision is too coarse
            state = optimizer.state[p]
            if "spectral_v" not in state:
                generator = torch.Generator(device=p.device).manual_seed(0)
                state["spectral_v"] = torch.randn(W.shape[1], generator=generator, device=p.device, dtype=p.dtype)
            v = state["spectral_v"].to(W.dtype)
            v /= v.norm()
            sigma = spectral_norm_estimate(W, v, group["spectral_power_tol"], group["spectral_power_iterations"])
            state["spectral_v"].copy_(v)
            if sigma > gamma:
                p.mul_(gamma / sigma)
