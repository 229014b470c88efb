"""Checking an adapted model against its stock forward: the test every model type and new family passes.

Run it in float64 (``model.double().eval()``): then the EP gradient (centered nudging, small β, a few sweeps)
must equal backprop of the stock forward's loss tensor by tensor, and the stack's output must be the forward's
logits. ``docs/adding_a_family.md`` uses it; so does ``tests/test_adapters.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..energies.layered import Contrast, SettleConfig, free_phase, nudged_phases
from .traced import INNER_OUTPUTS

COS_MIN, REL_MAX = 0.9999, 1e-4


def ep_gradients(model: nn.Module, batch: dict, beta: float = 1e-5, nudging: str = "centered", sweeps: int = 3,
                 memory: str = "fast"):
    """EP's gradients of the trainable parameters for ``batch``, through ``model(..., ep_contrast=)`` as
    ``EPTrainer`` runs it (``None`` where a parameter gets none); ``memory``: ``ep_memory``'s modes."""
    params = [p for p in model.parameters() if p.requires_grad]
    stack = model.ep_stack(**batch)
    config = SettleConfig(steps=sweeps, memory=memory)
    phases = nudged_phases(stack, free_phase(stack, memory), beta, nudging, config)
    return torch.autograd.grad(model(**batch, ep_contrast=Contrast(phases)), params, allow_unused=True)


def backprop_gradients(model: nn.Module, batch: dict, loss: Tensor | None = None):
    """Backprop's gradients of the trainable parameters: of the stock forward's loss, or of ``loss``."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(model(**batch).loss if loss is None else loss, params, allow_unused=True)


def mismatches(model: nn.Module, ep, reference, cos_min: float = COS_MIN, rel_max: float = REL_MAX) -> list[str]:
    """Trainable tensors whose EP gradient fails ``cosine >= cos_min`` and ``relative error <= rel_max``.

    A tensor whose true gradient is zero (below 1e-9 of the largest: attention key biases under softmax's shift
    invariance, embedding rows a batch never uses) has no direction to compare; its EP gradient must be as small
    (below 1e-7 of the largest).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ep = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, ep)]
    reference = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, reference)]
    scale = max(float(g.norm()) for g in reference)
    bad = []
    for (name, _), a, b in zip(named, ep, reference):
        if float(b.norm()) < 1e-9 * scale:
            if float(a.norm()) > 1e-7 * scale:
                bad.append(f"{name}: true gradient 0, EP gradient norm {float(a.norm()):.2e}")
            continue
        # Not F.cosine_similarity: its eps clamps the norm product, which is wrong for tiny gradients.
        cos = float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()).clamp_min(torch.finfo(b.dtype).tiny))
        rel = float((a - b).norm() / b.norm())
        if cos < cos_min or rel > rel_max:
            bad.append(f"{name}: cosine {cos:.8f}, relative error {rel:.2e}")
    return bad


def check_against_backprop(model: nn.Module, batch: dict, **ep_kwargs) -> list[str]:
    """The stack's free phase against the stock forward (its output tensors, loss), and EP's gradient against
    backprop's.
    Returns what fails (empty when all agree). Call on a float64 model in eval mode."""
    reference = model(**batch)
    stack = model.ep_stack(**batch)
    s = stack.inputs
    for block in stack.blocks:
        s = block(s)
    bad, output = [], stack.output(s)
    for key, expected in reference.items():  # logits, or a QA head's start and end logits
        if key == "loss" or key in INNER_OUTPUTS or not isinstance(expected, Tensor):
            continue
        got = output.get(key)
        if got is None or got.shape != expected.shape:
            bad.append(f"free phase: {key} differ from the forward's in shape")
        elif not torch.allclose(got, expected, rtol=1e-10, atol=1e-10):
            bad.append(f"free phase: {key} differ from the forward's by {float((got - expected).abs().max()):.2e}")
    if not torch.allclose(stack.loss(s), reference.loss, rtol=1e-10, atol=1e-10):
        bad.append(f"free phase: loss {float(stack.loss(s))} != forward's {float(reference.loss)}")
    return bad + mismatches(model, ep_gradients(model, batch, **ep_kwargs), backprop_gradients(model, batch))
