"""An independent reference for the Hopfield-energy tests: the primitive function Φ written with plain torch ops, its
fixed-point map ``G(s) = clamp(∂Φ/∂s − β·B·∂L/∂s, 0, 1)`` by autograd, implicit differentiation (recurrent
backprop) at the free fixed point, and BPTT through the unrolled dynamics. Nothing here uses the engine's closed
forms (:mod:`mep_hf.kernels.linear_maps`) or its settling loop (:mod:`mep_hf.energies.hopfield`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mep_hf.models.hopfield.modeling_ep_hopfield import HopfieldConvPool, HopfieldDense


def drive(block, s: Tensor, params: dict | None = None) -> Tensor:
    """``f(s)`` of a Hopfield block, with its parameters taken from ``params`` (name -> tensor) when given."""
    if isinstance(block, HopfieldDense):
        w, b = (block.linear.weight, block.linear.bias) if params is None else params
        return F.linear(s.flatten(1), w, b)
    assert isinstance(block, HopfieldConvPool)
    w, b = (block.conv.weight, block.conv.bias) if params is None else params
    z = F.conv2d(s, w, b, padding=block.conv.padding)
    k = block.pool_size
    return {"max": lambda: F.max_pool2d(z, k), "avg": lambda: F.avg_pool2d(z, k), "none": lambda: z}[block.pool]()


def block_params(model) -> list[tuple[Tensor, Tensor]]:
    return [(b.linear.weight, b.linear.bias) if isinstance(b, HopfieldDense) else (b.conv.weight, b.conv.bias)
            for b in model.blocks]


def phi(model, x: Tensor, states: list[Tensor], params=None) -> Tensor:
    """``Φ = Σ_l s_{l+1}·f_l(s_l)`` summed over the batch."""
    params = params or [None] * len(model.blocks)
    below = [x, *states[:-1]]
    return sum((s * drive(b, sb, p)).sum() for b, sb, s, p in zip(model.blocks, below, states, params))


def transition(model, x, states, labels=None, beta=0.0, params=None, create_graph=True):
    """Pre-activations ``u = ∂Φ/∂s − β·B·∂L/∂s_N`` and states ``clamp(u, 0, 1)`` (autograd, graph kept)."""
    states = [s if s.requires_grad else s.detach().requires_grad_(True) for s in states]
    grads = torch.autograd.grad(phi(model, x, states, params), states, create_graph=create_graph)
    u = list(grads)
    if beta != 0:
        loss = model.ep_output(states[-1], labels=labels).loss * x.shape[0]
        (g,) = torch.autograd.grad(loss, states[-1], create_graph=create_graph)
        u[-1] = u[-1] - beta * g
    return u, [uu.clamp(0, 1) for uu in u]


def zero_states(model, x):
    states, s = [], x
    with torch.no_grad():
        for b in model.blocks:
            s = torch.zeros_like(drive(b, s))
            states.append(s)
    return states


def fixed_point(model, x, steps=2000, tol=1e-15):
    states = zero_states(model, x)
    for _ in range(steps):
        _, new = transition(model, x, states, create_graph=False)
        new = [n.detach() for n in new]
        change = max((a - b).abs().max().item() for a, b in zip(new, states))
        states = new
        if change < tol:
            break
    return states, change


def implicit_gradient(model, x, labels, steps=5000, tol=1e-15):
    """``dL(s*)/dθ`` at the free fixed point: the adjoint ``λ = ∂L/∂s + (∂G/∂s)ᵀλ`` by fixed-point iteration
    (recurrent backprop, Almeida–Pineda), then ``(∂G/∂θ)ᵀλ + ∂L/∂θ`` (the read-out's direct term)."""
    star, change = fixed_point(model, x)
    assert change < 1e-13, f"the reference free phase did not converge (change {change:.3g})"
    params = list(model.parameters())
    s = [t.detach().requires_grad_(True) for t in star]
    _, g = transition(model, x, s)
    loss = model.ep_output(s[-1], labels=labels).loss
    dl_ds = torch.autograd.grad(loss, s, allow_unused=True, retain_graph=True)
    dl_ds = [torch.zeros_like(t) if d is None else d for t, d in zip(s, dl_ds)]
    lam = [d.clone() for d in dl_ds]
    for _ in range(steps):
        back = torch.autograd.grad(g, s, lam, retain_graph=True)
        new = [d + b for d, b in zip(dl_ds, back)]
        change = max((a - b).abs().max().item() for a, b in zip(new, lam))
        lam = new
        if change < tol:
            break
    assert change < 1e-13, f"the adjoint did not converge (change {change:.3g})"
    through_g = torch.autograd.grad(g, params, lam, retain_graph=True, allow_unused=True)
    direct = torch.autograd.grad(loss, params, allow_unused=True)
    return [sum(t for t in (a, b) if t is not None) for a, b in zip(through_g, direct)]
