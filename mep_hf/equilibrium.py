"""Equilibrium Propagation on a layered energy: free phase, nudged phases, and the local contrast.

This module is the whole EP algorithm. A model exposes a :class:`BlockStack` (input state ``s_0``, blocks
``f_1..f_L`` that are any callables such as ``nn.Module`` s, and its task loss ``L``); everything else is here.

With states ``s_1..s_L`` (one row per sample, batch size ``B``) and prediction errors ``e_l = s_l − f_l(s_{l−1})``::

    E(s; θ)    = 1/B · Σ_l ½‖e_l‖²                 (prediction-error energy)
    F(s; θ, β) = E(s; θ) + β·L(s_L)                  (total energy, nudged towards the labels)

* Free phase (β = 0): the minimum of F is the feed-forward pass, where every error is zero.
* Nudged phase (β ≠ 0): starting from the free state, settle towards a stationary point of F with the parameters
  held fixed. A phase is stored as its errors: the states follow front to back, ``s_l = f_l(s_{l−1}) + e_l``.
  The only autograd use is the one-block vector-Jacobian product ``J_{f_{l+1}}(s_l)ᵀ e`` for the state gradient,
  on a graph that lives for one step.
* Contrast: ``ΔL(θ) = [E(s^{+β}) − E(s^{−β})] / 2β`` (centered) or ``E(s^{β}) / β`` (positive; at the free
  state ``E`` and ``∂E/∂θ`` vanish). States are constants there, so ``∇θ ΔL`` is layer-local (θ_l sees only
  ``s_{l−1}`` and ``e_l``) and tends to ``∇θ L`` of the feed-forward pass as β → 0 (Scellier & Bengio 2017).

Two settling rules share the energy:

* ``"sweep"`` (default): a sweep sets each error to its stationarity value back to front,
  ``e_L = −β·B·∂L/∂s_L`` and ``e_l = J_{f_{l+1}}(s_l)ᵀ e_{l+1}``, at the current states. A fixed point of the
  sweep is exactly a stationary point of F, and one sweep from the free state is already exact to first order
  in β. The forward pass that places the states after the last sweep is the contrast's own forward pass.
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
    Models validate ``inputs`` (shape, NaN/inf) where they can name the argument.
    """

    inputs: Tensor
    blocks: Sequence[Callable[[Tensor], Tensor]]
    loss: Callable[[Tensor], Tensor]

    def __post_init__(self):
        if len(self.blocks) == 0:
            raise ValueError("an EP block stack needs at least one block; the model exposed none")

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]


@dataclass(frozen=True)
class SettleConfig:
    """How a nudged phase settles. Validated by ``EPTrainingArguments``; see its field docs."""

    steps: int = 2
    mode: str = "sweep"
    lr: float = 0.2
    tol: float = 0.0
    divergence_threshold: float = 10.0


@dataclass
class Phase:
    """A settled nudged phase: its β, its errors ``e_1..e_L``, and how the settling went.

    ``energy`` is F at the settled state; the contrast fills it in while placing the states.
    """

    beta: float
    errors: list[Tensor]
    steps: int
    start_energy: float
    energy: float = math.nan


@dataclass
class Linearization:
    """States ``s_1..s_L``, each block's output at its input state with the one-block graph kept, and the task
    loss with its per-sample gradient ``B·∂L/∂s_L`` at ``s_L``.

    The graphs serve the state VJPs of the next settling step and die with this object; nothing chains them.
    """

    states: list[Tensor]
    inputs: list[Tensor]
    outputs: list[Tensor]
    loss: float = math.nan
    loss_grad: Tensor | None = None

    def vjp(self, l: int, e: Tensor) -> Tensor:
        """``J_{f_l}(s_{l−1})ᵀ e`` (0-based block ``l``); parameters are not differentiated."""
        (g,) = torch.autograd.grad(self.outputs[l], self.inputs[l], e, retain_graph=True)
        return g


def _state(t: Tensor) -> Tensor:
    """States are kept in at least float32: under bf16/fp16 autocast the errors are O(β) of the states and would
    vanish in a half-precision sum, while the blocks themselves still compute in the autocast dtype."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _feed(state: Tensor, previous_output: Tensor | None) -> Tensor:
    """A float32 state enters the next block in the dtype the previous block computed in (a bf16 model's own
    dtype; a no-op under autocast or in full precision), differentiably, so VJPs still arrive in float32."""
    return state if previous_output is None else state.to(previous_output.dtype)


def linearize(stack: BlockStack, errors: Sequence[Tensor] | None = None, states: Sequence[Tensor] | None = None):
    """Run the blocks front to back at given ``states``, or placing ``s_l = f_l(s_{l−1}) + e_l`` from ``errors``.

    With neither, this is the free phase: the β = 0 equilibrium is the feed-forward pass (all errors zero).
    """
    s, out, lin = stack.inputs, None, Linearization([], [], [])
    with torch.enable_grad():
        for l, block in enumerate(stack.blocks):
            if states is not None and l > 0:
                s = states[l - 1]
            s = s.detach().requires_grad_(l > 0)  # s_0 is clamped: no VJP into it is ever needed
            out = block(_feed(s, out))
            lin.inputs.append(s)
            lin.outputs.append(out)
            s = _state(out) if errors is None else _state(out) + errors[l]
            lin.states.append(s)
        if states is not None:
            lin.states = [t.detach() for t in states]
        last = lin.states[-1].detach().requires_grad_(True)
        loss = stack.loss(last)
        (grad,) = torch.autograd.grad(loss, last)
    lin.loss, lin.loss_grad = float(loss.detach()), grad * stack.batch_size
    return lin


def free_phase(stack: BlockStack) -> Linearization:
    """The β = 0 equilibrium: the feed-forward pass, kept linearized for the first settling step."""
    return linearize(stack)


def _sum_squares(errors: Sequence[Tensor]) -> list[float]:
    """``‖t‖²`` of each tensor, read back in one device sync."""
    return torch.stack([t.detach().float().pow(2).sum() for t in errors]).tolist()


def _sweep(lin: Linearization, beta: float) -> list[Tensor]:
    """Back to front: each error set to its stationarity value given the layer above."""
    errors = [-beta * lin.loss_grad]
    for l in range(len(lin.outputs) - 1, 0, -1):
        errors.insert(0, lin.vjp(l, errors[0]))
    return errors


def _gradient_step(lin: Linearization, errors, beta: float, lr: float) -> list[Tensor]:
    """One synchronous step of ``s ← s − lr·B·∂F/∂s`` (``B·∂F/∂s_l = e_l − J_{f_{l+1}}ᵀ e_{l+1}``)."""
    grads = [e - lin.vjp(l + 1, errors[l + 1]) for l, e in enumerate(errors[:-1])]
    grads.append(errors[-1] + beta * lin.loss_grad)
    return [s - lr * g for s, g in zip(lin.states, grads)]


def _energy(errors: Sequence[Tensor], loss: float, beta: float, batch_size: int) -> tuple[float, list[float]]:
    """F = Σ_l ½‖e_l‖²/B + β·L, and the per-layer terms (for divergence reports)."""
    layers = [0.5 * v / batch_size for v in _sum_squares(errors)]
    return sum(layers) + beta * loss, layers


def check_energy(energy: float, start: float, layers: Sequence[float], step: int, beta: float, threshold: float):
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
        "Lower ep_beta (or ep_settle_lr with ep_settle_mode='gradient')."
    )


def settle(stack: BlockStack, free: Linearization, beta: float, config: SettleConfig) -> Phase:
    """Settle one nudged phase from the free state.

    Stops after ``config.steps`` steps, or once the largest relative change of the errors ``‖Δe_l‖/‖e_l‖`` falls
    below ``config.tol``.
    """
    lin = free
    start = beta * lin.loss
    errors = [torch.zeros_like(s) for s in lin.states]
    steps = 0
    for steps in range(1, config.steps + 1):
        if config.mode == "sweep":
            if steps > 1:  # place the states the last sweep's errors define (the last placement is the contrast's)
                lin = linearize(stack, errors=errors)
                energy, layers = _energy(errors, lin.loss, beta, stack.batch_size)
                check_energy(energy, start, layers, steps - 1, beta, config.divergence_threshold)
            new_errors = _sweep(lin, beta)
        else:
            lin = linearize(stack, states=_gradient_step(lin, errors, beta, config.lr))
            new_errors = [s - _state(p) for s, p in zip(lin.states, lin.outputs)]
            energy, layers = _energy(new_errors, lin.loss, beta, stack.batch_size)
            check_energy(energy, start, layers, steps, beta, config.divergence_threshold)
        if config.tol > 0:
            change = _sum_squares([n - e for n, e in zip(new_errors, errors)])
            size = _sum_squares(new_errors)
            moved = max(math.sqrt(c / (n + 1e-30)) for c, n in zip(change, size))
        errors = new_errors
        if config.tol > 0 and moved < config.tol:
            break
    return Phase(beta=beta, errors=[e.detach() for e in errors], steps=steps, start_energy=start)


def nudged_phases(stack: BlockStack, free: Linearization, beta: float, nudging: str, config: SettleConfig):
    """The nudged phases a contrast needs: ``+β`` alone, or ``+β`` and ``−β`` (centered), from one free pass."""
    if nudging not in NUDGING_MODES:
        raise ValueError(f"unknown nudging mode {nudging!r}; expected one of {NUDGING_MODES}")
    betas = (beta, -beta) if nudging == "centered" else (beta,)
    return [settle(stack, free, b, config) for b in betas]


@dataclass
class Contrast:
    """The EP contrast ΔL for settled phases; call it on a :class:`BlockStack` to get the scalar.

    Models call it from their ``forward(..., ep_contrast=...)`` so that, under DDP, the contrast runs through the
    wrapped model's forward and gradients are all-reduced as for any loss. While placing each phase's states it
    records the phase's final energy and checks that settling did not diverge. ``first_prediction`` is the free
    pass's ``f_1(s_0)``, graph included, when the caller kept it.
    """

    phases: list[Phase]
    divergence_threshold: float = SettleConfig.divergence_threshold
    first_prediction: Tensor | None = None

    def __call__(self, stack: BlockStack) -> Tensor:
        betas = [p.beta for p in self.phases]
        weights = [1 / betas[0]] if len(betas) == 1 else [1 / (betas[0] - betas[1]), -1 / (betas[0] - betas[1])]
        return sum(w * self._prediction_energy(stack, p) for w, p in zip(weights, self.phases))

    def _prediction_energy(self, stack: BlockStack, phase: Phase) -> Tensor:
        """``E(s; θ)`` with the phase's states held constant: differentiable in the parameters only.

        ``s_l = f_l(s_{l−1}) + e_l`` with the prediction detached, so ``½‖s_l − f_l(s_{l−1})‖²`` has the value
        ``½‖e_l‖²`` and the parameter gradient ``−(∂f_l/∂θ_l)ᵀ e_l``. The states are built in the errors' own
        storage (the phase is consumed), so the graph holds two tensors per layer: the state and the prediction.
        """
        layers = [0.5 * v / stack.batch_size for v in _sum_squares(phase.errors)]
        s, prediction, total = stack.inputs.detach(), None, 0.0
        for l, (block, e) in enumerate(zip(stack.blocks, phase.errors)):
            # s_0 is clamped, so f_1(s_0) is the same in every phase: the free pass's graph serves (saves a forward).
            reuse = l == 0 and self.first_prediction is not None
            prediction = self.first_prediction if reuse else block(_feed(s, prediction))
            s = e.add_(prediction.detach())
            total = total + _PredictionError.apply(prediction, s)
        with torch.no_grad():
            loss = float(stack.loss(s))
        phase.energy = sum(layers) + phase.beta * loss
        check_energy(phase.energy, phase.start_energy, layers, phase.steps, phase.beta, self.divergence_threshold)
        return total / stack.batch_size


class _PredictionError(torch.autograd.Function):
    """``½‖s − p‖²`` whose backward recomputes ``s − p`` from the state and prediction the graph keeps anyway,
    instead of saving the difference as a third tensor per layer."""

    @staticmethod
    def forward(ctx, prediction: Tensor, state: Tensor) -> Tensor:
        ctx.save_for_backward(prediction, state)
        return 0.5 * (state - prediction).pow(2).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        prediction, state = ctx.saved_tensors
        return (grad * (prediction - state)).to(prediction.dtype), None
