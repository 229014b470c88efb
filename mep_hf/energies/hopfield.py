"""The Hopfield (convergent-RNN) energy: classic Equilibrium Propagation, with a free phase that settles.

States ``s_1..s_N`` live in ``[0, 1]``; the input ``s_0 = x`` is clamped. Block ``f_l`` couples ``s_l`` to
``s_{l+1}``: a dense map ``W·s + b`` (P-MLP) or ``pool(conv(s) + b)`` (P-CNN). With the primitive function of
Laborieux et al. (2021)::

    Φ(s; θ)    = Σ_l s_{l+1} · f_l(s_l)
    E(s; θ)    = 1/B · (½ Σ_l ‖s_l‖² − Φ(s; θ))          over the box s ∈ [0, 1]
    F(s; θ, β) = E(s; θ) + β·L(s_N)

On the box, where the hard sigmoid ``ρ(s) = clamp(s, 0, 1)`` is the identity, this is Scellier & Bengio's (2017)
Hopfield energy ``½Σ‖s_l‖² − Σ ρ(s_{l+1})ᵀW_l ρ(s_l) − Σ b_l·ρ(s_l)`` with dense blocks.

* Settling (free phase, β = 0, from ``s = 0``; nudged phases from the free state): the fixed-point iteration of
  Ernoult et al. (2019) and Laborieux et al. (2021), all layers at once::

      s_l ← ρ(∂Φ/∂s_l − β·B·∂L/∂s_l),    ∂Φ/∂s_l = f_{l−1}(s_{l−1}) + J_{f_l}(s_l)ᵀ s_{l+1}

  A fixed point satisfies ``s = Π_[0,1](s − B·∇_s F)``: it is a stationary point of F over the box (hard-sigmoid
  saturated units sit on a face of the box, the others have zero gradient), which is what EP's theorem needs.
  Each step is one ``f_l`` and one VJP per block in closed form (:mod:`mep_hf.kernels.linear_maps`); the drive of
  the clamped input, ``f_1(x)``, is computed once per batch. The nudging force ``−β·B·∂L/∂s_N`` is the gradient
  of the loss Trainer computes at the model's output (``BlockStack.output``), by autograd through that output
  only. Settling stops after T steps or once the relative residual ``‖s_{t+1} − s_t‖ / ‖s_{t+1}‖`` falls below
  the tolerance; the final residual of each phase goes to the logs.
* Contrast: ``ΔL(θ) = Σ_k w_k F(s^{β_k}; θ, β_k)`` over the nudged phases and the free one, with the nudging
  scheme's finite-difference weights (:func:`~mep_hf.equilibrium.contrast_weights`): ``[F(s^β) − F(s^{−β})] / 2β``
  (centered), ``[F(s^β) − F(s^0)] / β`` (positive, random sign). With the states constant,
  ``∂E/∂θ_l = −1/B · J_θ f_l(s_l)ᵀ s_{l+1}``: each block's gradient is local. Parameters of the read-out
  (the ``output`` a cross-entropy model applies to ``s_N``) get ``Σ w·β·∂L/∂θ`` through an ordinary autograd graph.

The model's own ``forward`` runs the same free phase (its config holds T_free), with autograd if the caller has it
on: a plain ``Trainer`` then backpropagates through the unrolled settling (BPTT), the baseline EP is measured
against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..block_stack import BlockStack
from ..equilibrium import (
    BlockLinearization,
    SettlingDivergedError,
    accumulate,
    contrast_value,
    contrast_weights,
    energy_diverged,
    linearize_block,
    nudging_betas,
)
from . import register_energy
from .settings import divergence_threshold, is_int, settle_tol, setting, validate


@dataclass(frozen=True)
class HopfieldSettings:
    """How the Hopfield family settles; ``None`` and 0 defer to the model's own schedule (its config)."""

    free_steps: int | None = setting(None, "ep_free_steps", lambda v: v is None or is_int(v, 1),
                                     "an integer >= 1 or None (the model's)")
    nudged_steps: int | None = setting(None, "ep_nudged_steps", lambda v: v is None or is_int(v, 1),
                                       "an integer >= 1 or None (the model's)")
    tol: float = settle_tol()
    divergence_threshold: float = divergence_threshold()

    def __post_init__(self):
        validate(self)


def hard_sigmoid(u: Tensor) -> Tensor:
    """``ρ(u) = clamp(u, 0, 1)``: the projection onto the box the states live in."""
    return torch.clamp(u, 0.0, 1.0)


@dataclass
class HopfieldStack(BlockStack):
    """A :class:`~mep_hf.equilibrium.BlockStack` whose blocks couple settling states (``f_l(s_l)`` drives
    ``s_{l+1}``), with the model's own settling schedule: T_free, T_nudged and the residual tolerance. ``output``
    maps the last state ``s_N`` to the model output (identity for an MSE model, a read-out for cross-entropy)."""

    free_steps: int = 20
    nudged_steps: int = 10
    settle_tol: float = 0.0


@dataclass
class HopfieldPhase:
    """A settled phase: its β, states ``s_1..s_N``, steps taken, final relative residual, the task loss at
    ``s_N`` and (filled in by the contrast) its energy F and the free state's energy at the same β."""

    beta: float
    states: list[Tensor]
    steps: int
    residual: float
    loss: float = math.nan
    start_energy: float = math.nan
    energy: float = math.nan
    first_block: BlockLinearization | None = None  # block 1 at the clamped input (free phase only)


def _first_block(stack: BlockStack) -> BlockLinearization:
    """Block 1 linearized at the clamped input: its output ``f_1(x)`` drives ``s_1`` in every step of every phase."""
    return linearize_block(stack.blocks[0], stack.inputs, None, input_grad=False)


def initial_states(stack: BlockStack, first: BlockLinearization) -> list[Tensor]:
    """``s = 0`` in every layer (the shapes from one pass of the blocks at zero states)."""
    states = [torch.zeros_like(first.output)]
    with torch.no_grad():
        for block in stack.blocks[1:]:
            states.append(torch.zeros_like(block(states[-1])))
    return states


def dynamics_step(stack: BlockStack, first: BlockLinearization, states: Sequence[Tensor], beta: float = 0.0,
                  loss_grad: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
    """One synchronous step ``s_l ← ρ(f_{l−1}(s_{l−1}) + J_{f_l}(s_l)ᵀ s_{l+1} [− β·loss_grad(s_N)])``."""
    n = len(states)
    lins = [first] + [linearize_block(b, s, None, input_grad=True) for b, s in zip(stack.blocks[1:], states[:-1])]
    new = []
    for l in range(n):
        u = lins[l].output
        if l + 1 < n:
            u = u + lins[l + 1].vjp(states[l + 1])
        if l == n - 1 and beta != 0:
            u = u - beta * loss_grad(states[l])
        new.append(hard_sigmoid(u))
    return new


def residual(new: Sequence[Tensor], old: Sequence[Tensor]) -> float:
    """``‖s_{t+1} − s_t‖ / ‖s_{t+1}‖`` over all layers and the batch (one read-back)."""
    sq = torch.stack([torch.stack([(a - b).detach().pow(2).sum(), a.detach().pow(2).sum()]) for a, b in zip(new, old)])
    change, size = sq.sum(0).tolist()
    return math.sqrt(change / max(size, 1e-30))


def settle(stack: BlockStack, first: BlockLinearization, states: list[Tensor], steps: int, tol: float = 0.0,
           beta: float = 0.0, loss_grad: Callable[[Tensor], Tensor] | None = None) -> tuple[list[Tensor], int, float]:
    """Iterate :func:`dynamics_step` ``steps`` times, or until the residual is below ``tol`` (checked each step when
    ``tol > 0``). Returns the states, the steps taken and the final residual."""
    res, t = math.nan, 0
    for t in range(1, steps + 1):
        new = dynamics_step(stack, first, states, beta, loss_grad)
        if tol > 0 or t == steps:
            res = residual(new, states)
        states = new
        if tol > 0 and res < tol:
            break
    return states, t, res


def free_phase(stack: BlockStack, steps: int, tol: float = 0.0) -> HopfieldPhase:
    """The β = 0 equilibrium from ``s = 0`` (autograd records it when it is on: the model's ``forward`` under
    backprop). ``loss`` is left unset: the caller evaluates the loss it needs."""
    first = _first_block(stack)
    states, taken, res = settle(stack, first, initial_states(stack, first), steps, tol)
    return HopfieldPhase(beta=0.0, states=states, steps=taken, residual=res, first_block=first)


def loss_gradient(loss: Callable[[Tensor], Tensor], batch_size: int) -> Callable[[Tensor], Tensor]:
    """``s_N ↦ B·∂L/∂s_N`` (per-sample nudging force) by autograd through the loss at the output only."""

    def grad(s: Tensor) -> Tensor:
        with torch.enable_grad():
            s = s.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(s), s)
        return g * batch_size

    return grad


@dataclass
class HopfieldContrast:
    """``ΔL`` for two settled phases (see the module docstring); call it on the stack, from the model's
    ``forward(..., ep_contrast=...)``. It records each phase's energy and raises :class:`SettlingDivergedError`
    when a nudged phase's energy is non-finite or grew past the shared rule
    (:func:`~mep_hf.equilibrium.energy_diverged`) from the free state's energy at the same β."""

    phases: list[HopfieldPhase]  # the nudged phase(s)
    free: HopfieldPhase
    divergence_threshold: float = HopfieldSettings.divergence_threshold
    grad_scale: float = 1.0
    loss: Callable[[Tensor], Tensor] | None = None

    def __call__(self, stack: BlockStack) -> Tensor:
        weights, free_weight = contrast_weights([p.beta for p in self.phases])
        pairs = list(zip(self.phases, weights))
        if free_weight != 0:  # the free phase's term (positive, random sign); symmetric schemes cancel it exactly
            pairs.append((self.free, free_weight))
        loss = self.loss or stack.loss
        grads: dict[Tensor, Tensor] = {}
        scale = -self.grad_scale / stack.batch_size
        with torch.no_grad():
            first = self.free.first_block or _first_block(stack)
            self.free.first_block = None
            # s_0 is clamped: block 1's parameter gradient is linear in the state it drives, one product serves all.
            e = sum(p.states[0] * w for p, w in pairs)
            accumulate(grads, first.parameter_grads(e, scale))
            energies = [self._energy(stack, first, p.states, w * scale, grads) for p, w in pairs]
            free_energy = energies[-1] if free_weight != 0 else self._energy(stack, first, self.free.states)
        readout = None
        for (phase, w), energy in zip(pairs, energies):
            if phase is self.free:
                phase.energy = energy
                continue
            with torch.enable_grad():
                value = loss(phase.states[-1].detach())
            term = value * (w * phase.beta)
            readout = term if readout is None else readout + term
            phase.loss = float(value.detach())
            phase.energy = energy + phase.beta * phase.loss
            phase.start_energy = free_energy + phase.beta * self.free.loss
            if energy_diverged(phase.energy, phase.start_energy, self.divergence_threshold):
                raise SettlingDivergedError(
                    f"settling diverged at step {phase.steps} (beta={phase.beta:g}): the Hopfield energy went from "
                    f"{phase.start_energy:.4g} at the free state to {phase.energy:.4g}. The parameters are not to "
                    "blame (the free-phase loss is finite and within the guard): settling itself diverged. Lower "
                    "ep_beta or raise ep_nudged_steps."
                )
        out = contrast_value(sum(w * p.energy for p, w in pairs), self.grad_scale, grads, stack.inputs)
        if readout is not None and readout.requires_grad:  # a read-out with parameters (cross-entropy models)
            out = out + (readout - readout.detach())
        return out

    @staticmethod
    def _energy(stack, first, states, scale=None, grads=None) -> float:
        """``E = (½Σ‖s_l‖² − Σ s_{l+1}·f_l(s_l)) / B``; with ``scale``, also add ``scale·J_θ f_l(s_l)ᵀ s_{l+1}`` of
        blocks 2..N into ``grads``."""
        phi = [(states[0] * first.output).sum()]
        for l in range(1, len(states)):
            lin = linearize_block(stack.blocks[l], states[l - 1], None, input_grad=False)
            phi.append((states[l] * lin.output).sum())
            if scale is not None:
                accumulate(grads, lin.parameter_grads(states[l], scale))
        sq = sum(s.pow(2).sum() for s in states)
        return float(0.5 * sq - sum(phi)) / stack.batch_size


class HopfieldEnergy:
    """The Hopfield family for ``EPTrainer``: the free phase and the nudged phases settle, T_free / T_nudged from
    ``ep_free_steps`` / ``ep_nudged_steps`` or else the model's own; ``ep_settle_tol`` (else the model's
    ``settle_tol``) stops a phase early on its residual."""

    name = "hopfield"
    settings_type = HopfieldSettings
    default_nudging = "centered"
    # Its gradient tends to that of the loss at the settled free state, which no single forward pass computes.
    has_backprop_reference = False

    @staticmethod
    def _schedule(stack: HopfieldStack, config: HopfieldSettings) -> tuple[int, int, float]:
        if not isinstance(stack, HopfieldStack):
            raise TypeError(f"the hopfield energy needs a HopfieldStack (the model's settling schedule), got "
                            f"{type(stack).__name__}")
        free = config.free_steps if config.free_steps is not None else stack.free_steps
        nudged = config.nudged_steps if config.nudged_steps is not None else stack.nudged_steps
        return free, nudged, config.tol if config.tol > 0 else stack.settle_tol

    def free_phase(self, stack: HopfieldStack, config: HopfieldSettings) -> HopfieldPhase:
        steps, _, tol = self._schedule(stack, config)
        with torch.no_grad():
            free = free_phase(stack, steps, tol)
            free.loss = float(stack.loss(free.states[-1]))
        return free

    def default_beta(self, displacement: float) -> float:
        """A fixed 0.1: classic EP settles each phase for a few steps, so the nudge must beat what settling leaves
        unconverged; β is a fraction of the [0, 1] state range, not the layered energy's vanishing scale-free one."""
        return 0.1

    def nudged_phases(self, stack, free, beta, nudging, config) -> list[HopfieldPhase]:
        _, steps, tol = self._schedule(stack, config)
        force = loss_gradient(stack.loss, stack.batch_size)
        phases = []
        with torch.no_grad():
            for b in nudging_betas(beta, nudging):
                states, taken, res = settle(stack, free.first_block, free.states, steps, tol, b, force)
                phases.append(HopfieldPhase(beta=b, states=states, steps=taken, residual=res))
        return phases

    def contrast(self, free, phases, config, grad_scale, loss) -> HopfieldContrast:
        return HopfieldContrast(phases, free, config.divergence_threshold, grad_scale, loss)

    def diagnostics(self, contrast: HopfieldContrast) -> dict[str, float]:
        phases, free = contrast.phases, contrast.free
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return {
            "ep_energy": mean([p.energy for p in phases]),
            "ep_settle_steps": mean([p.steps for p in phases]),
            "ep_nudged_residual": mean([p.residual for p in phases]),
            "ep_free_steps": float(free.steps),
            "ep_free_residual": free.residual,
        }


register_energy(HopfieldEnergy())
