"""Equilibrium Propagation on a layered energy: free phase, nudged phases, and the local contrast.

This module is the whole EP algorithm. A model exposes a :class:`BlockStack` (input state ``s_0``, blocks
``f_1..f_L`` that are any callables such as ``nn.Module`` s, and its task loss ``L``); everything else is here.

With states ``s_1..s_L`` (one row per sample, batch size ``B``)::

    E(s; θ)    = 1/B · Σ_l ½‖s_l − f_l(s_{l−1}; θ_l)‖²          (prediction-error energy)
    F(s; θ, β) = E(s; θ) + β·L(s_L)                               (total energy, nudged towards the labels)

* Free phase (β = 0): the minimum of F is the feed-forward pass, where every prediction error is zero.
* Nudged phase (β ≠ 0): start from the free state and settle ``s`` towards a minimum of F with the parameters
  held fixed. No autograd graph survives a settling step; the only autograd use is a one-block
  vector-Jacobian product ``J_{f_{l+1}}(s_l)ᵀ e`` for the state gradient.
* Contrast: ``ΔL(θ) = [E(s^{+β}) − E(s^{−β})] / 2β`` (centered) or ``E(s^{β}) / β`` (positive; at the free
  state ``E`` and ``∂E/∂θ`` vanish). States are constants here, so ``∇θ ΔL`` is layer-local (θ_l sees only
  ``s_{l−1}, s_l``) and tends to ``∇θ L`` of the feed-forward pass as β → 0 (Scellier & Bengio 2017).

Two settling rules share the energy:

* ``"sweep"`` (default): one sweep sets each layer's prediction error to its stationarity value, back to front
  (``e_L = −β·B·∂L/∂s_L``, ``e_l = J_{f_{l+1}}(s_l)ᵀ e_{l+1}``), then re-places the states front to back
  (``s_l = f_l(s_{l−1}) + e_l``). A fixed point of the sweep is exactly a stationary point of F; one sweep is
  already exact to first order in β, so a few sweeps suffice.
* ``"gradient"``: classic synchronous gradient descent ``s ← s − lr·B·∂F/∂s`` on all layers at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NUDGING_MODES = ("positive", "centered")
SETTLE_MODES = ("sweep", "gradient")


class SettlingDivergedError(RuntimeError):
    """Settling made the energy non-finite or grow: the nudged phase has no usable equilibrium."""


@dataclass
class BlockStack:
    """What a model shows EP: the input state, the blocks ``s_l = f_l(s_{l−1})``, and the task loss of ``s_L``.

    ``loss`` must be the batch *mean* of per-sample losses, so that ``B·∂L/∂s_L`` is the per-sample gradient.
    """

    inputs: Tensor
    blocks: Sequence[Callable[[Tensor], Tensor]]
    loss: Callable[[Tensor], Tensor]

    def __post_init__(self):
        if len(self.blocks) == 0:
            raise ValueError("an EP block stack needs at least one block; the model exposed none")
        if not torch.isfinite(self.inputs).all():
            raise ValueError("the model inputs contain NaN or inf; EP cannot settle on non-finite inputs")

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]


@dataclass(frozen=True)
class SettleConfig:
    """How a nudged phase settles. Validated by ``EPTrainingArguments``; see its field docs."""

    steps: int = 3
    mode: str = "sweep"
    lr: float = 0.2
    tol: float = 0.0
    divergence_threshold: float = 10.0


@dataclass
class Phase:
    """A settled nudged phase: its β, its states ``s_1..s_L``, and how the settling went."""

    beta: float
    states: list[Tensor]
    steps: int
    energy: float


def free_phase(stack: BlockStack) -> list[Tensor]:
    """The β = 0 equilibrium: one feed-forward pass (all prediction errors are zero)."""
    states, s = [], stack.inputs
    with torch.no_grad():
        for block in stack.blocks:
            s = block(s)
            states.append(s)
    return states


def _vjp(block: Callable[[Tensor], Tensor], s: Tensor, e: Tensor) -> Tensor:
    """``J_f(s)ᵀ e`` for one block; parameters are not differentiated and the graph dies on return."""
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(block(s), s, e)
    return g


def _loss_and_grad(stack: BlockStack, s_last: Tensor) -> tuple[Tensor, Tensor]:
    """Task loss at ``s_L`` and its per-sample gradient ``B·∂L/∂s_L``."""
    with torch.enable_grad():
        s = s_last.detach().requires_grad_(True)
        loss = stack.loss(s)
        (g,) = torch.autograd.grad(loss, s)
    return loss.detach(), g * stack.batch_size


def _sum_squares(t: Tensor) -> float:
    return float(t.float().pow(2).sum())


def _sweep(stack: BlockStack, states: list[Tensor], errors: list[Tensor], beta: float, loss_grad: Tensor):
    """Back to front: stationary errors; front to back: states = prediction + error."""
    blocks, n = stack.blocks, len(states)
    errors = list(errors)
    errors[-1] = -beta * loss_grad
    for l in range(n - 2, -1, -1):
        errors[l] = _vjp(blocks[l + 1], states[l], errors[l + 1])
    new_states, s = [], stack.inputs
    with torch.no_grad():
        for block, e in zip(blocks, errors):
            s = block(s) + e
            new_states.append(s)
    return new_states, errors


def _gradient_step(stack, states, errors, beta, loss_grad, lr):
    """One synchronous step of ``s ← s − lr·B·∂F/∂s`` (``B·∂F/∂s_l = e_l − J_{f_{l+1}}ᵀ e_{l+1}``)."""
    new_states = []
    for l, (s, e) in enumerate(zip(states, errors)):
        if l + 1 < len(states):
            grad = e - _vjp(stack.blocks[l + 1], s, errors[l + 1])
        else:
            grad = e + beta * loss_grad
        new_states.append(s - lr * grad)
    inputs = [stack.inputs, *new_states[:-1]]
    with torch.no_grad():
        new_errors = [s - block(prev) for block, prev, s in zip(stack.blocks, inputs, new_states)]
    return new_states, new_errors


def _check_energy(energy: float, start: float, layers: list[float], step: int, beta: float, threshold: float):
    """Raise when settling diverged: energy non-finite, or grown past ``start + threshold·|start|``."""
    grown = energy - start > threshold * max(abs(start), 1e-12)
    if math.isfinite(energy) and not grown:
        return
    bad = [i for i, v in enumerate(layers) if not math.isfinite(v)]
    layer = bad[0] if bad else max(range(len(layers)), key=layers.__getitem__)
    what = "became non-finite" if not math.isfinite(energy) else f"grew from {start:.4g} to {energy:.4g}"
    raise SettlingDivergedError(
        f"settling diverged at step {step} (beta={beta:g}): the energy {what}; layer {layer + 1} of "
        f"{len(layers)} has the largest prediction error (energy {layers[layer]:.4g}). "
        "Lower ep_settle_lr or ep_beta, or use ep_settle_mode='sweep'."
    )


def settle(stack: BlockStack, free_states: list[Tensor], beta: float, config: SettleConfig) -> Phase:
    """Settle a nudged phase from the free state; stop after ``config.steps`` steps or when states move < tol."""
    states = list(free_states)
    errors = [torch.zeros_like(s) for s in states]
    loss, loss_grad = _loss_and_grad(stack, states[-1])
    start = energy = beta * float(loss)
    steps = 0
    for steps in range(1, config.steps + 1):
        if config.mode == "sweep":
            new_states, errors = _sweep(stack, states, errors, beta, loss_grad)
        else:
            new_states, errors = _gradient_step(stack, states, errors, beta, loss_grad, config.lr)
        moved = max(
            math.sqrt(_sum_squares(n - s)) / (math.sqrt(_sum_squares(s)) + 1e-12) for n, s in zip(new_states, states)
        )
        states = new_states
        loss, loss_grad = _loss_and_grad(stack, states[-1])
        layers = [0.5 * _sum_squares(e) / stack.batch_size for e in errors]
        energy = sum(layers) + beta * float(loss)
        _check_energy(energy, start, layers, steps, beta, config.divergence_threshold)
        if moved < config.tol:
            break
    return Phase(beta=beta, states=states, steps=steps, energy=energy)


def nudged_phases(stack: BlockStack, free_states: list[Tensor], beta: float, nudging: str, config: SettleConfig):
    """The nudged phases a contrast needs: ``+β`` alone, or ``+β`` and ``−β`` for centered nudging."""
    if nudging not in NUDGING_MODES:
        raise ValueError(f"unknown nudging mode {nudging!r}; expected one of {NUDGING_MODES}")
    betas = (beta, -beta) if nudging == "centered" else (beta,)
    return [settle(stack, free_states, b, config) for b in betas]


def prediction_energy(stack: BlockStack, states: list[Tensor]) -> Tensor:
    """``E(s; θ)`` with the states held constant: differentiable in the parameters only."""
    inputs = [stack.inputs, *states[:-1]]
    total = 0.0
    for block, s_prev, s in zip(stack.blocks, inputs, states):
        total = total + 0.5 * (s.detach() - block(s_prev.detach())).pow(2).sum()
    return total / stack.batch_size


@dataclass
class Contrast:
    """The EP contrast ΔL for given settled phases; call it on a :class:`BlockStack` to get the scalar.

    Models call it from their ``forward(..., ep_contrast=...)`` so that, under DDP, the contrast runs through the
    wrapped model's forward and gradients are all-reduced as for any loss.
    """

    phases: list[Phase]

    def __call__(self, stack: BlockStack) -> Tensor:
        plus = self.phases[0]
        if len(self.phases) == 1:
            return prediction_energy(stack, plus.states) / plus.beta
        minus = self.phases[1]
        return (prediction_energy(stack, plus.states) - prediction_energy(stack, minus.states)) / (
            plus.beta - minus.beta
        )
