"""The layered (prediction-error) energy family: free phase, sweep settling, nudged phases and the local contrast.

A model exposes a :class:`~mep_hf.block_stack.BlockStack` (input state ``s_0``, blocks ``f_1..f_L`` that are any
callables such as ``nn.Module`` s, and its task loss ``L``). With states ``s_1..s_L`` (one row per sample, batch
size ``B``) and prediction errors ``e_l = s_l − f_l(s_{l−1})``::

    E(s; θ)    = 1/B · Σ_l ½‖e_l‖²                 (prediction-error energy)
    F(s; θ, β) = E(s; θ) + β·L(s_L)                  (total energy, nudged towards the labels)

* Free phase (β = 0): the minimum of F is the feed-forward pass, where every error is zero.
* Nudged phase (β ≠ 0): starting from the free state, settle towards a stationary point of F with the parameters
  held fixed. A phase is stored as its errors: the states follow front to back, ``s_l = f_l(s_{l−1}) + e_l``.
  Settling needs only the one-block vector-Jacobian product ``J_{f_{l+1}}(s_l)ᵀ e``: each block is kept as a
  :class:`~mep_hf.equilibrium.BlockLinearization` at its state (autograd on a one-block graph that lives for one
  step, or a closed form the block offers, see :mod:`mep_hf.kernels`).
* Inner states (``memory="fast"``, sweep settling): inside a block without a closed form, each module that owns
  parameters gets a state and an error of its own (:mod:`mep_hf.energies.inner_states`), and the block's output is
  a function of them. The sweep reads their errors off the block's backward; the contrast then needs each module
  alone at its nudged input (a linear layer's one product ``eᵀx``) instead of a backward of the whole block.
  ``memory="low"`` keeps block states only, re-running each block when its VJP is needed, and fuses the last sweep
  with the contrast (:class:`SweepContrast`).
* Contrast: ``ΔL(θ) = Σ_k w_k E(s^{β_k})`` with the nudging scheme's finite-difference weights
  (:func:`~mep_hf.equilibrium.contrast_weights`; at the free state ``E`` and ``∂E/∂θ`` vanish, so its term drops).
  States are constants there, so ``∇θ ΔL`` is layer-local (θ_l sees only ``s_{l−1}`` and ``e_l``) and tends to
  ``∇θ L`` of the feed-forward pass as β → 0 (Scellier & Bengio 2017). Each layer's parameter gradient is formed
  while its state is placed, and the layer is freed before the next: an EP step needs about the memory of a
  backprop step.

Two settling rules share the energy:

* ``"sweep"`` (default): a sweep sets each error to its stationarity value back to front,
  ``e_L = −β·B·∂L/∂s_L`` and ``e_l = J_{f_{l+1}}(s_l)ᵀ e_{l+1}``, at the current states. A fixed point of the
  sweep is exactly a stationary point of F, and one sweep from the free state is already exact to first order
  in β. The forward pass that places the states after the last sweep is the contrast's own forward pass.
* ``"gradient"``: classic synchronous gradient descent ``s ← s − lr·B·∂F/∂s`` on all layers at once.

β itself is best not fixed: EP's bias is set by how far the nudge moves each state relative to the state's own
size, which the same β makes tiny on one model and large on another. :class:`ScaleFreeBeta` (the default) picks β
each step from the first sweep, so that the largest relative displacement is a fixed small number
(``docs/defaults.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..block_stack import BlockStack
from ..equilibrium import (
    AutogradBlock,
    BlockLinearization,
    SettlingDivergedError,
    accumulate,
    closed_form,
    contrast_value,
    contrast_weights,
    energy_diverged,
    has_closed_form,
    nudging_betas,
    vjp_and_parameter_grads,
)
from . import register_energy
from .inner_states import FreeRun, InnerErrors, ModuleCalls, place_and_contrast
from .settings import divergence_threshold, is_int, is_real, settle_tol, setting, validate

SETTLE_MODES = ("sweep", "gradient")
MEMORY_MODES = ("fast", "low")


@dataclass(frozen=True)
class SettleConfig:
    """How the layered family settles a nudged phase; each field is set by the ``EPTrainingArguments`` flag it
    names (see its help)."""

    steps: int = setting(1, "ep_settle_steps", lambda v: is_int(v, 1), "an integer >= 1")
    mode: str = setting("sweep", "ep_settle_mode", lambda v: v in SETTLE_MODES, f"one of {SETTLE_MODES}")
    lr: float = setting(0.2, "ep_settle_lr", lambda v: is_real(v) and 0 < v <= 1, "in (0, 1]")
    tol: float = settle_tol()
    divergence_threshold: float = divergence_threshold()
    memory: str = setting("fast", "ep_memory", lambda v: v in MEMORY_MODES, f"one of {MEMORY_MODES}")

    def __post_init__(self):
        validate(self)

@dataclass
class Phase:
    """A settled nudged phase: its β, its errors ``e_1..e_L``, each block's inner errors (``None`` where the block
    has block states only), and how the settling went. A block with inner states has no error of its own:
    ``errors[l]`` is then the sweep's message at its output, and the storage its placed state goes into.

    ``energy`` is F at the settled state; the contrast fills it in while placing the states.
    """

    beta: float
    errors: list[Tensor]
    steps: int
    start_energy: float
    inner: list[InnerErrors | None]
    energy: float = math.nan


class SweepOnlyBlock(AutogradBlock):
    """A block's graph for input VJPs only: each module runs with its own parameters out of autograd
    (:class:`~mep_hf.energies.inner_states.ModuleCalls` with ``freeze``), so the graph keeps what the sweep needs
    and not what only parameter gradients would (a linear layer's input). The free pass's blocks after the first
    serve the sweep alone."""

    def run(self, block, x: Tensor) -> Tensor:
        with ModuleCalls(freeze=True):
            return block(x)

    def leaves(self) -> list[Tensor]:
        raise RuntimeError("this block's graph was built for input VJPs only (SweepOnlyBlock)")


class InnerStatesBlock(AutogradBlock):
    """A block run with its parameterized modules' outputs as states of their own (:mod:`mep_hf.energies.inner_states`),
    placed from ``inner`` (a previous sweep's inner errors) when given. ``vjp`` also sets :attr:`inner`, the inner
    errors it reads off the backward; a block whose modules break the inner-state assumption leaves it ``None`` and
    is an :class:`AutogradBlock` (block states only)."""

    def __init__(self, block, state: Tensor, feed_dtype, inner: InnerErrors | None = None):
        self.free_run, self.inner = FreeRun(inner), None
        super().__init__(block, state, feed_dtype, input_grad=True)
        self.modules = self.calls.modules
        self.usable = self.free_run.finish(self.output, self.input, self.calls)

    def run(self, block, x: Tensor) -> Tensor:
        # Parameters frozen: the contrast re-runs each module for its parameter product.
        with ModuleCalls(self.free_run, freeze=True) as self.calls:
            return block(x)

    def vjp(self, e: Tensor) -> Tensor:
        if not self.usable or not self.free_run.unchanged():
            return super().vjp(e)
        states = self.free_run.states()
        wanted = [t for t in states if t is not None]
        g, *adjoints = torch.autograd.grad(self.output, [self.input, *wanted], e, retain_graph=True, allow_unused=True)
        adjoints = iter(adjoints)
        errors = [None if t is None or (a := next(adjoints)) is None else _state(a) for t in states]
        self.inner = InnerErrors.read_off(self.modules, errors, self.free_run.fold_into, g)
        return g



def linearize_block(block, state: Tensor, feed_dtype: torch.dtype | None, input_grad: bool,
                    inner_states: bool = False, inner: InnerErrors | None = None,
                    parameters: bool = True) -> BlockLinearization:
    """The block's own closed form where it has one for this state, else :class:`InnerStatesBlock`
    (``inner_states``, placed from ``inner``), :class:`SweepOnlyBlock` (``parameters=False``: for input VJPs only)
    or :class:`~mep_hf.equilibrium.AutogradBlock`."""
    lin = closed_form(block, state, feed_dtype)
    if lin is not None:
        return lin
    if inner_states:
        return InnerStatesBlock(block, state, feed_dtype, inner)
    return (AutogradBlock if parameters else SweepOnlyBlock)(block, state, feed_dtype, input_grad)


class CheckpointedBlock(AutogradBlock):
    """The free pass's block in ``memory="low"``: its graph under activation checkpointing
    (``torch.utils.checkpoint``), which keeps the block's input and output (the states) and no activation. Each
    backward re-runs the block, stopping at the last activation it needs, so the output is never made twice."""

    def run(self, block, x: Tensor) -> Tensor:
        return checkpoint(block, x, use_reentrant=False)


class RecomputedBlock:
    """A placed block of ``memory="low"`` without anything of its run kept: each product re-runs the block at the
    state, so a phase holds its states and no graph.

    :func:`linearize` drops ``output`` once a nudged state is placed from it (a second copy of the state).
    """

    def __init__(self, block, state: Tensor, feed_dtype):
        self.block, self.state, self.feed_dtype = block, state.detach(), feed_dtype
        with torch.no_grad():
            self.output = block(self.state if feed_dtype is None else self.state.to(feed_dtype))

    def vjp(self, e: Tensor) -> Tensor:
        return linearize_block(self.block, self.state, self.feed_dtype, input_grad=True, parameters=False).vjp(e)

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        return linearize_block(self.block, self.state, self.feed_dtype, input_grad=False).parameter_grads(e, scale)

    def vjp_and_parameter_grads(self, error: list[Tensor], scale: float, input_grad: bool) -> tuple[Tensor, list]:
        block = linearize_block(self.block, self.state, self.feed_dtype, input_grad=input_grad)
        return vjp_and_parameter_grads(block, error, scale, input_grad)


@dataclass
class Linearization:
    """States ``s_1..s_L``, each block linearized at its input state, and the task loss with its per-sample
    gradient ``B·∂L/∂s_L`` at ``s_L``.

    The linearizations serve the state VJPs of the next settling step and die with this object; nothing chains
    them. A sweep that is their last use drops each one once its VJP is taken (``release``), so the free pass
    costs no memory beyond what the sweep still needs.
    """

    states: list[Tensor]
    blocks: list[BlockLinearization]
    loss: float = math.nan
    loss_grad: Tensor | None = None

    def vjp(self, l: int, e: Tensor) -> Tensor:
        """``J_{f_l}(s_{l−1})ᵀ e`` (0-based block ``l``); parameters are not differentiated."""
        return self.blocks[l].vjp(e)


def _state(t: Tensor) -> Tensor:
    """States are kept in at least float32: under bf16/fp16 autocast the errors are O(β) of the states and would
    vanish in a half-precision sum, while the blocks themselves still compute in the autocast dtype."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def linearize(
    stack: BlockStack,
    errors: Sequence[Tensor] | None = None,
    states: Sequence[Tensor] | None = None,
    memory: str = "fast",
    inner: Sequence[InnerErrors | None] | None = None,
):
    """Run the blocks front to back at given ``states``, or placing ``s_l = f_l(s_{l−1}) + e_l`` from ``errors``
    (and the inner states from ``inner``).

    With neither, this is the free phase: the β = 0 equilibrium is the feed-forward pass (all errors zero).
    ``memory="fast"`` gives blocks after the first inner states (:class:`InnerStatesBlock`) unless ``states`` are
    given (gradient settling works on block states). ``memory="low"`` keeps the states only: the free pass under
    activation checkpointing (:class:`CheckpointedBlock`), placed states and blocks with a closed form (whose
    products are cheaper than checkpointing's hooks) as :class:`RecomputedBlock`; each product re-runs the block.
    """
    s, dtype, lin = stack.inputs, None, Linearization([], [])
    for l, block in enumerate(stack.blocks):
        if states is not None and l > 0:
            s = states[l - 1]
        if memory == "low" and errors is None and states is None and not has_closed_form(block, s, dtype):
            b = CheckpointedBlock(block, s, dtype, input_grad=l > 0)  # the free pass, autograd's blocks
        elif memory == "low":
            b = RecomputedBlock(block, s, dtype)
        else:  # s_0 is clamped: no VJP into it is needed, and block 1 keeps its block state
            b = linearize_block(block, s, dtype, input_grad=l > 0, inner_states=l > 0 and states is None,
                                inner=None if inner is None else inner[l], parameters=l == 0)
        lin.blocks.append(b)
        own_error = errors is not None and (inner is None or inner[l] is None)  # inner states: none of its own
        s = _state(b.output) + errors[l] if own_error else _state(b.output)
        dtype = b.output.dtype
        if memory == "low" and errors is not None:
            b.output = None  # the state holds what matters; the output would be a second copy
        lin.states.append(s)
    if states is not None:
        lin.states = [t.detach() for t in states]
    with torch.enable_grad():
        last = lin.states[-1].detach().requires_grad_(True)
        loss = stack.loss(last)
        (grad,) = torch.autograd.grad(loss, last)
    lin.loss, lin.loss_grad = float(loss.detach()), grad * stack.batch_size
    return lin


def free_phase(stack: BlockStack, memory: str = "fast") -> Linearization:
    """The β = 0 equilibrium: the feed-forward pass, kept linearized for the first settling step with each block's
    inner states (``memory="fast"``), or as its block states only, re-linearized block by block when the sweep
    needs them (``"low"``)."""
    if memory not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory!r}; expected one of {MEMORY_MODES}")
    return linearize(stack, memory=memory)


def _norms(tensors: Sequence[Tensor]) -> Tensor:
    """``‖t‖`` of each tensor, as one float64 tensor on their device (nothing is read back)."""
    return torch.stack(torch._foreach_norm([t.detach() for t in tensors])).double()


def _sum_squares(errors: Sequence[Tensor]) -> list[float]:
    """``‖t‖²`` of each tensor, read back in one device sync."""
    return _norms(errors).square().tolist()


def _sweep(lin: Linearization, beta: float, release: bool = False) -> tuple[list[Tensor], list[InnerErrors | None]]:
    """Back to front: each error (and inner error) set to its stationarity value given the layer above. With
    ``release`` the linearization is consumed on the way (all but block 1's, which the contrast reuses)."""
    errors, inner = [-beta * lin.loss_grad], [None] * len(lin.blocks)
    for l in range(len(lin.blocks) - 1, 0, -1):
        errors.insert(0, _own_storage(lin.vjp(l, errors[0]), errors[0]))
        inner[l] = getattr(lin.blocks[l], "inner", None)
        if release:
            lin.blocks[l] = lin.states[l] = None
    return errors, inner


def _own_storage(error: Tensor, above: Tensor) -> Tensor:
    """A block that passes (part of) its input through (an encoder state carried by decoder blocks) gets back a
    view of the error above as its VJP; the contrast places each state in its error's storage, so each error must
    own its storage."""
    return error.clone() if error.untyped_storage().data_ptr() == above.untyped_storage().data_ptr() else error


def _layer_energies(errors: Sequence[Tensor], inner: Sequence[InnerErrors | None], batch_size: int) -> list[float]:
    """Each layer's ``½‖e_l‖²/B``, or, for a block with inner states, its inner errors' terms."""
    owners = [(l, e) for l, e in enumerate(errors) if inner[l] is None]
    owners += [(l, e) for l, block in enumerate(inner) if block is not None for e in block.tensors()]
    layers = [0.0] * len(errors)
    for (l, _), v in zip(owners, _sum_squares([e for _, e in owners])):
        layers[l] += 0.5 * v / batch_size
    return layers


def _gradient_step(lin: Linearization, errors, beta: float, lr: float) -> list[Tensor]:
    """One synchronous step of ``s ← s − lr·B·∂F/∂s`` (``B·∂F/∂s_l = e_l − J_{f_{l+1}}ᵀ e_{l+1}``)."""
    grads = [e - lin.vjp(l + 1, errors[l + 1]) for l, e in enumerate(errors[:-1])]
    grads.append(errors[-1] + beta * lin.loss_grad)
    return [s - lr * g for s, g in zip(lin.states, grads)]


def _energy(errors: Sequence[Tensor], inner: Sequence[InnerErrors | None], loss: float, beta: float,
            batch_size: int) -> tuple[float, list[float]]:
    """F = Σ_l ½‖e_l‖²/B + β·L, and the per-layer terms (for divergence reports)."""
    layers = _layer_energies(errors, inner, batch_size)
    return sum(layers) + beta * loss, layers



def check_energy(energy: float, start: float, layers: Sequence[float], step: int, beta: float, threshold: float):
    """Raise when settling diverged (:func:`energy_diverged`)."""
    if not energy_diverged(energy, start, threshold):
        return
    bad = [i for i, v in enumerate(layers) if not math.isfinite(v)]
    layer = bad[0] if bad else max(range(len(layers)), key=layers.__getitem__)
    what = "became non-finite" if not math.isfinite(energy) else f"grew from {start:.4g} to {energy:.4g}"
    raise SettlingDivergedError(
        f"settling diverged at step {step} (beta={beta:g}): the energy {what}; layer {layer + 1} of "
        f"{len(layers)} has the largest prediction error (energy {layers[layer]:.4g}). "
        "The parameters are not to blame (the feed-forward loss is finite and within the guard): settling itself "
        "diverged. Lower ep_beta, or ep_settle_steps / ep_settle_lr with ep_settle_mode='gradient'."
    )


def settle(stack: BlockStack, free: Linearization, beta: float, config: SettleConfig, errors=None) -> Phase:
    """Settle one nudged phase from the free state.

    Stops after ``config.steps`` steps, or once the largest relative change of the errors ``‖Δe_l‖/‖e_l‖`` falls
    below ``config.tol``. ``errors``: the first sweep's result when the caller already has it (see
    :func:`nudged_phases`), as ``(errors, inner errors)``; it counts as step 1.
    """
    lin = free
    start = beta * lin.loss
    first = 1 if errors is None else 2
    errors, inner = ([torch.zeros_like(s) for s in lin.states], [None] * len(lin.states)) if errors is None else errors
    steps = first - 1
    for steps in range(first, config.steps + 1):
        if config.mode == "sweep":
            if steps > 1:  # place the states the last sweep's errors define (the last placement is the contrast's)
                lin = linearize(stack, errors=errors, memory=config.memory, inner=inner)
                energy, layers = _energy(errors, inner, lin.loss, beta, stack.batch_size)
                check_energy(energy, start, layers, steps - 1, beta, config.divergence_threshold)
            new_errors, inner = _sweep(lin, beta)
        else:
            lin = linearize(stack, states=_gradient_step(lin, errors, beta, config.lr), memory=config.memory)
            new_errors = [s - _state(b.output) for s, b in zip(lin.states, lin.blocks)]
            energy, layers = _energy(new_errors, inner, lin.loss, beta, stack.batch_size)
            check_energy(energy, start, layers, steps, beta, config.divergence_threshold)
        if config.tol > 0:
            change = _sum_squares([n - e for n, e in zip(new_errors, errors)])
            size = _sum_squares(new_errors)
            moved = max(math.sqrt(c / (n + 1e-30)) for c, n in zip(change, size))
        errors = new_errors
        if config.tol > 0 and moved < config.tol:
            break
    return Phase(beta=beta, errors=[e.detach() for e in errors], steps=steps, start_energy=start, inner=inner)


@dataclass(frozen=True)
class ScaleFreeBeta:
    """β chosen each step so that the nudge moves no state by more than ``displacement`` of the state's own size.

    Why: EP's bias comes from evaluating each layer's Jacobian at the nudged state instead of the free one, so it
    is set by how far the states move *relative to their own scale*, not by β itself. The same β displaces the
    logits of an MLP by 1e-4 of their size and a Llama's small residual stream (behind RMSNorm's curvature) a
    hundred times more; a mean over tokens shrinks the per-token nudge by the token count. The first sweep from
    the free state is linear in β, so it runs once at β = 1 and its errors are scaled by
    ``β = displacement / max_l ‖u_l‖/‖s_l‖`` (``u_l``: the unit sweep's error at block ``l``): no extra work, and
    the same default is exact enough on every model (``docs/defaults.md``). The errors are stored, never formed as
    differences of states, so a small displacement costs no precision, in float32 or under autocast.
    """

    displacement: float = 1e-4

    def resolve(self, errors: Sequence[Tensor], state_norms: Tensor) -> float:
        """β for a unit sweep's ``errors`` at states of norms ``state_norms`` (:func:`_norms`), read back in one
        device sync."""
        return self.resolve_from_norms(_norms(errors), state_norms)

    def resolve_from_norms(self, error_norms, state_norms: Tensor) -> float:
        """The same from the unit errors' norms."""
        error_norms = torch.as_tensor(error_norms, dtype=state_norms.dtype, device=state_norms.device)
        ratios = torch.where(state_norms > 0, error_norms / state_norms, torch.zeros_like(error_norms))
        largest = float(ratios.max())
        return self.displacement / largest if largest > 0 and math.isfinite(largest) else 1.0



def _scaled(sweep: tuple[list[Tensor], list[InnerErrors | None]], factor: float):
    """A sweep's errors (and inner errors) times ``factor``, as new tensors: the first sweep is linear in β."""
    errors, inner = sweep
    return [e * factor for e in errors], [None if block is None else block * factor for block in inner]


def _scale_(sweep: tuple[list[Tensor], list[InnerErrors | None]], factor: float):
    """The same in place, so that resolving a :class:`ScaleFreeBeta` costs no second copy of the errors. Autograd
    may hand one gradient tensor to several errors (both sides of a residual sum): each memory region is scaled
    once; tensors that are other views of a storage already in the list are scaled out of place instead."""
    errors, inner = sweep
    regions: dict[tuple, Tensor] = {}
    storages: dict[int, tuple] = {}

    def scale(t: Tensor) -> Tensor:
        region = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if region in regions:
            return regions[region]
        if storages.setdefault(region[0], region) != region:
            return t * factor
        regions[region] = t.mul_(factor)
        return t

    errors = [scale(e) for e in errors]
    for block in inner:
        if block is not None:
            block.errors = [None if e is None else scale(e) for e in block.errors]
    return errors, inner


def nudged_phases(stack: BlockStack, free: Linearization, beta: float | ScaleFreeBeta, nudging: str,
                  config: SettleConfig):
    """The nudged phases a contrast needs (:func:`nudging_betas`), from one free pass.

    With sweep settling, the first sweep from the free state is linear in β: it runs once, consuming the free
    pass's block linearizations (all but block 1's), and each phase starts from it scaled by its own β (a
    :class:`ScaleFreeBeta` is resolved from that same sweep, run at β = 1).
    """
    unit = None
    if isinstance(beta, ScaleFreeBeta):
        state_norms = _norms(free.states)  # before the sweep releases the states
        unit = _sweep(free, 1.0, release=config.mode == "sweep")
        beta = beta.resolve(unit[0], state_norms)
    betas = nudging_betas(beta, nudging)
    if config.mode != "sweep":
        return [settle(stack, free, b, config) for b in betas]
    first = _sweep(free, betas[0], release=True) if unit is None else _scale_(unit, betas[0])
    del unit
    starts = [first] + [_scaled(first, b / betas[0]) for b in betas[1:]]
    return [settle(stack, free, b, config, errors=e) for b, e in zip(betas, starts)]


@dataclass
class Contrast:
    """The EP contrast ΔL for settled phases; call it on a :class:`BlockStack` to get the scalar.

    Models call it from their ``forward(..., ep_contrast=...)`` so that, under DDP, the contrast runs through the
    wrapped model's forward and gradients are all-reduced as for any loss. While placing each phase's states it
    records the phase's final energy and checks that settling did not diverge. ``first_block`` is the free
    pass's linearization of block 1 when the caller kept it (``s_0`` is clamped, so it serves every phase).
    ``grad_scale`` is the loss scale the caller's backward will apply (fp16 ``GradScaler``): the layer gradients
    are taken at that scale so that half-precision blocks do not underflow, and the backward divides it out again.
    ``loss``: the loss the phases were settled with, when it is not the stack's own (``EPTrainer`` nudges with
    Trainer's loss); the final energies use it.
    """

    phases: list[Phase]
    divergence_threshold: float = SettleConfig.divergence_threshold
    first_block: BlockLinearization | None = None
    grad_scale: float = 1.0
    loss: Callable[[Tensor], Tensor] | None = None

    def __call__(self, stack: BlockStack) -> Tensor:
        """Place the states front to back and take each layer's parameter gradient as soon as its prediction
        exists, so nothing outlives its layer: the peak holds the not-yet-placed errors and the gradients.

        ``E(s; θ)`` with the states held constant has the layer-local gradient ``∂/∂θ_l ½‖s_l − f_l(s_{l−1})‖²
        = −(∂f_l/∂θ_l)ᵀ e_l``. The states are built in the errors' own storage: the phases are consumed.
        """
        weights, _ = contrast_weights([p.beta for p in self.phases])  # the free state's E and ∂E/∂θ vanish
        layers = [_layer_energies(p.errors, p.inner, stack.batch_size) for p in self.phases]
        states = [stack.inputs.detach()] * len(self.phases)
        dtypes = [None] * len(self.phases)  # dtype the previous block computed in, per phase
        grads: dict[Tensor, Tensor] = {}
        scale = -self.grad_scale / stack.batch_size
        for l, block in enumerate(stack.blocks):
            self._place_layer(l, block, states, dtypes, [w * scale for w in weights], grads)
        with torch.no_grad():
            losses = [float((self.loss or stack.loss)(s)) for s in states]
        for phase, phase_layers, loss in zip(self.phases, layers, losses):
            phase.energy = sum(phase_layers) + phase.beta * loss
            check_energy(
                phase.energy, phase.start_energy, phase_layers, phase.steps, phase.beta, self.divergence_threshold
            )
        value = sum(w * sum(phase_layers) for w, phase_layers in zip(weights, layers))
        return contrast_value(value, self.grad_scale, grads, stack.inputs)

    def _place_layer(self, l: int, block, states: list, dtypes: list, weights: list[float], grads: dict) -> None:
        """Layer ``l`` of every phase: add its parameter gradient (phase ``p`` weighted by ``weights[p]``) into
        ``grads``, then place its state in storage the phase no longer needs. All else of the layer dies with this
        call, and each phase's layer is done before the next phase's is built."""
        if l == 0 and self.first_block is not None:  # s_0 is clamped: f_1(s_0) is the same in every phase
            self.first_block, first = None, self.first_block
            errors = [p.errors[l] for p in self.phases]
            combined = errors[0]
            for e, w in zip(errors[1:], weights[1:]):
                combined = combined.add(e, alpha=w / weights[0])
            accumulate(grads, first.parameter_grads(combined, weights[0]))
            del errors, combined
            placed = [(phase.errors[l].add_(first.output.detach()), first.output.dtype) for phase in self.phases]
        else:
            placed = []
            for phase, s, d, w in zip(self.phases, states, dtypes, weights):
                e = phase.errors[l]
                if phase.inner[l] is not None:  # each module's contrast (mep_hf.energies.inner_states)
                    output, pairs = place_and_contrast(lambda: block(s if d is None else s.to(d)), phase.inner[l], w)
                    phase.inner[l] = None
                    # The block's output is a function of its inner states: it has no error of its own.
                    placed.append((e.copy_(output), output.dtype))
                else:
                    prediction = linearize_block(block, s, d, input_grad=False)
                    pairs = prediction.parameter_grads(e, w)
                    placed.append((e.add_(prediction.output.detach()), prediction.output.dtype))
                    del prediction  # its graph is spent: the next phase's is built without it
                accumulate(grads, pairs)
        for p, (state, dtype) in enumerate(placed):
            states[p], dtypes[p], self.phases[p].errors[l] = state, dtype, None



@dataclass
class DeferredSweep:
    """The nudged phases of a ``memory="low"`` step before their last sweep, which :class:`SweepContrast` runs:
    ``settled`` holds the phases after ``steps − 1`` sweeps (``None`` with one sweep: it starts from the free
    state, and β is resolved from it)."""

    beta: float | ScaleFreeBeta
    nudging: str
    settled: list[Phase] | None


@dataclass
class SweepContrast:
    """The contrast of ``memory="low"``, fused with the last sweep: back to front, each block is re-run once at the
    state that sweep linearizes it at, and one backward gives both its input VJP (the next error) and its parameter
    product ``J_θ f_l(s_{l−1})ᵀ e_l`` (the contrast's layer gradient at that state).

    Why: the low mode re-runs every block anyway, and a contrast at the states the last sweep's errors would place
    costs a further forward and a parameter backward of every block: 6 forward passes of work against activation
    checkpointing's 4 (``docs/transformer_memory.md``). Fused, it costs what checkpointing does. The contrast is
    then taken at the states the last sweep linearized, the previous iterate of settling instead of the next: the
    same states once a phase has settled (a fixed point of the sweep). With one sweep (the default) that is the free
    state, every phase's errors are ``β_k·u`` of one unit sweep ``u``, and ``Σ_k w_k β_k = 1`` for every nudging
    scheme, so all phases share that one sweep and the gradient is EP's β → 0 limit, exactly: β and the nudging
    then only set the energies reported and checked. ``phases`` is filled in by the call (diagnostics).
    """

    free: Linearization
    pending: DeferredSweep
    divergence_threshold: float = SettleConfig.divergence_threshold
    grad_scale: float = 1.0
    loss: Callable[[Tensor], Tensor] | None = None
    phases: list[Phase] = field(default_factory=list)

    def __call__(self, stack: BlockStack) -> Tensor:
        """The layer gradients into one scalar (:func:`~mep_hf.equilibrium.contrast_value`), each phase's energy
        recorded and checked: with one sweep the minimum of the linearized phase, ``β_k·L − Σ_l ½‖e_l‖²/B`` (it
        cannot grow: a sweep from the free state is a VJP), otherwise F at the states the contrast is taken at."""
        grads: dict[Tensor, Tensor] = {}
        scale, batch = -self.grad_scale / stack.batch_size, stack.batch_size
        free, self.free = self.free, None
        if self.pending.settled is None:
            state_norms, loss = _norms(free.states), free.loss
            unit = _fused_sweep(free, scale, grads)
            beta = self.pending.beta
            if isinstance(beta, ScaleFreeBeta):
                beta = beta.resolve_from_norms(unit, state_norms)
            self.phases = [Phase(b, [], 1, b * loss, [None] * len(unit)) for b in nudging_betas(beta, self.pending.nudging)]
            weights, _ = contrast_weights([p.beta for p in self.phases])
            layers = [[0.5 * (p.beta * v) ** 2 / batch for v in unit] for p in self.phases]
            energies = [p.start_energy - sum(e) for p, e in zip(self.phases, layers)]
        else:
            if self.loss is not None:
                stack.loss = self.loss  # the phases settled with the caller's loss
            self.phases, self.pending.settled = self.pending.settled, None
            weights, _ = contrast_weights([p.beta for p in self.phases])
            layers, energies = [], []
            for phase, w in zip(self.phases, weights):
                layers.append(_layer_energies(phase.errors, phase.inner, batch))
                lin = linearize(stack, errors=phase.errors, memory="low")
                phase.errors, phase.steps = [], phase.steps + 1
                _fused_sweep(lin, scale * w * phase.beta, grads)
                energies.append(sum(layers[-1]) + phase.beta * lin.loss)
        for phase, phase_layers, energy in zip(self.phases, layers, energies):
            phase.energy = energy
            check_energy(energy, phase.start_energy, phase_layers, phase.steps, phase.beta, self.divergence_threshold)
        value = sum(w * sum(phase_layers) for w, phase_layers in zip(weights, layers))
        return contrast_value(value, self.grad_scale, grads, stack.inputs)


def _fused_sweep(lin: Linearization, scale: float, grads: dict) -> list[float]:
    """A unit sweep (``e_L = −B·∂L/∂s_L``) through ``lin``'s blocks, adding each block's parameter product times
    ``scale`` into ``grads``; consumes ``lin`` on the way. Returns ``‖e_l‖`` per layer, front to back, read back
    in one device sync."""
    error, lin.loss_grad = [lin.loss_grad.neg_()], None  # handed to each block's backward, which frees it
    norms = []
    for l in range(len(lin.blocks) - 1, -1, -1):
        norms.append(_norms(error)[0])
        block, lin.blocks[l], lin.states[l] = lin.blocks[l], None, None  # the output state: only its error is needed
        e, pairs = vjp_and_parameter_grads(block, error, scale, input_grad=l > 0)
        accumulate(grads, pairs)
        error = [e]
        del block, pairs, e
    return torch.stack(norms[::-1]).tolist()


class LayeredEnergy:
    """``E = 1/B Σ_l ½‖s_l − f_l(s_{l−1})‖²``: the free phase is the forward pass; nudged phases settle by sweeps."""

    name = "layered"
    settings_type = SettleConfig
    default_nudging = "positive"  # with a scale-free β, one phase is exact enough and a second contrast is not paid
    has_backprop_reference = True

    def default_beta(self, displacement: float) -> ScaleFreeBeta:
        return ScaleFreeBeta(displacement)

    def free_phase(self, stack: BlockStack, config: SettleConfig) -> Linearization:
        return free_phase(stack, config.memory)

    def nudged_phases(self, stack, free, beta, nudging, config) -> list[Phase] | DeferredSweep:
        if _fuses_last_sweep(config):
            settled = None if config.steps == 1 else nudged_phases(stack, free, beta, nudging,
                                                                  replace(config, steps=config.steps - 1))
            return DeferredSweep(beta, nudging, settled)
        return nudged_phases(stack, free, beta, nudging, config)

    def contrast(self, free, phases, config, grad_scale, loss) -> Contrast | SweepContrast:
        if isinstance(phases, DeferredSweep):
            return SweepContrast(free, phases, config.divergence_threshold, grad_scale, loss)
        # The contrast keeps only block 1's linearization of the free pass, and frees it after layer 1.
        return Contrast(phases, config.divergence_threshold, first_block=free.blocks[0], grad_scale=grad_scale,
                        loss=loss)

    def feed_forward(self, stack: BlockStack) -> Tensor:
        s = stack.inputs
        for block in stack.blocks:
            s = block(s)
        return s

    def diagnostics(self, contrast: Contrast) -> dict[str, float]:
        phases = contrast.phases
        return {"ep_energy": sum(p.energy for p in phases) / len(phases),
                "ep_settle_steps": sum(p.steps for p in phases) / len(phases),
                "ep_beta": abs(phases[0].beta)}


def _fuses_last_sweep(config: SettleConfig) -> bool:
    """Low memory with sweep settling: the last sweep and the contrast are one pass (:class:`SweepContrast`)."""
    return config.memory == "low" and config.mode == "sweep"


register_energy(LayeredEnergy())
