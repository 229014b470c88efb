"""EP's ``loss.backward()`` for any training loop: :func:`ep_backward` and :func:`ep_loss`.

One engine, two doors: :class:`~mep_hf.EPTrainer` runs its steps through :func:`ep_step` too, adding only what is
the Trainer's (its loss at the output state, the divergence guard, the audit, the fp16 loss scale, its logs).

A stock model needs nothing first: :func:`ep_loss` adapts it in place (:func:`~mep_hf.prepare_ep_model`, idempotent)
on its first call. Adapt it before wrapping it (DDP, FSDP) when you want an unsupported model refused up front.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from .adapters import prepare_ep_model
from .block_stack import BlockStack
from .distributed import ready_for_ep
from .energies import EnergyFamily, energy_settings, resolve_energy
from .training_args import step_settings

# ``stack ↦ (s_L ↦ scalar)``: the loss EP nudges with, given the batch's stack (whose ``output`` it may evaluate).
NudgeLoss = Callable[[BlockStack], Callable[[Tensor], Tensor]]


def ep_backward(model: nn.Module, inputs: Mapping[str, Any], loss_fn: Callable | None = None, **ep_settings) -> Tensor:
    """Fill each trainable parameter's ``.grad`` with EP's gradient of the loss on ``inputs`` (added to what is
    there, as ``loss.backward()`` does) and return the loss at the free state, detached.

    ``model``: an EP model, a stock one of a supported type, or a peft model of one, as it is or wrapped in DDP /
    FSDP (the contrast runs through the wrapper's forward, so its gradient hooks fire; FSDP2: shard it with
    :func:`~mep_hf.shard_for_ep`). ``loss_fn(output, inputs)``:
    a loss of the model output at the output state (``logits``, ...); default: the model's own loss (``labels``).
    ``ep_settings``: the ``EPTrainingArguments`` EP step fields (``ep_beta=``, ``ep_nudging=``, ...), same defaults,
    same checks. For gradient accumulation, scale :func:`ep_loss` instead: ``(ep_loss(...) / k).backward()``.
    """
    loss = ep_loss(model, inputs, loss_fn, **ep_settings)
    loss.backward()
    return loss.detach()


def ep_loss(model: nn.Module, inputs: Mapping[str, Any], loss_fn: Callable | None = None, *,
            grad_scale: float = 1.0, **ep_settings) -> Tensor:
    """The loss whose ``.backward()`` is EP's: its value is the loss at the free state, its gradient EP's
    (``L(s_free) + C − C.detach()``, ``C`` the contrast). Return it where a loop expects a loss it will scale and
    backpropagate itself; see :func:`ep_backward` for the arguments. ``grad_scale``: the loss scale the caller's
    backward applies (an fp16 ``GradScaler``'s), so that half-precision layer gradients are formed at that scale.
    """
    unwrapped, energy, settings, config = prepare(model, **ep_settings)
    loss = None if loss_fn is None else output_loss(loss_fn, inputs)
    return ep_step(model, unwrapped, dict(inputs), energy, settings, config, loss, grad_scale=grad_scale)[0]


def prepare(model: nn.Module, **ep_settings) -> tuple[nn.Module, EnergyFamily, Any, Any]:
    """``(the EP model inside model's wrappers, adapted; its energy family; the checked step settings; the family's
    settings of them)``: a flag only another family reads is refused here."""
    settings = step_settings(**ep_settings)
    unwrapped = prepare_ep_model(extract_model_from_parallel(model))
    energy = resolve_energy(settings.ep_energy, unwrapped)
    return unwrapped, energy, settings, energy_settings(energy, settings)


def output_loss(loss_fn: Callable, inputs: Mapping[str, Any]) -> NudgeLoss:
    """``loss_fn(output, inputs)`` on the model output at each output state EP visits."""
    def nudge_loss(stack: BlockStack) -> Callable[[Tensor], Tensor]:
        if stack.output is None:
            raise TypeError("a loss_fn needs the model output at the output state, but this model's ep_stack sets no "
                            "BlockStack.output; leave loss_fn unset to nudge with the stack's own loss")
        return lambda state: loss_fn(stack.output(state), inputs)

    return nudge_loss


def ep_step(model: nn.Module, unwrapped: nn.Module, inputs: dict, energy: EnergyFamily, settings, config,
            loss: NudgeLoss | None = None, grad_scale: float = 1.0,
            on_free_loss: Callable[[float], None] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Settle, nudge, contrast: ``(L(s_free) + C − C.detach(), the energy's diagnostics)``.

    ``model`` is what the contrast runs through (the DDP/FSDP wrapper, if any), ``unwrapped`` the EP model inside;
    ``settings`` checked step settings (``EPTrainingArguments`` or :func:`~mep_hf.training_args.step_settings`), and
    ``config`` the family's settings of them (:func:`~mep_hf.energies.energy_settings`, built once per run);
    ``loss`` the loss EP nudges with (default: the stack's own); ``on_free_loss`` sees the free-state loss before
    any nudged phase settles (EPTrainer's divergence guard).
    """
    ready_for_ep(unwrapped)  # FSDP2: made its root before settling runs a sharded layer (mep_hf.distributed)
    with _energy_mode(unwrapped):
        stack: BlockStack = unwrapped.ep_stack(**inputs)
        if loss is not None:
            stack.loss = loss(stack)
        nudge = stack.loss
        free = energy.free_phase(stack, config)
        free_loss = free.loss
        if on_free_loss is not None:
            on_free_loss(free_loss)
        beta = settings.ep_beta if settings.ep_beta is not None else energy.default_beta(settings.ep_nudge_displacement)
        phases = energy.nudged_phases(stack, free, beta, settings.ep_nudging or energy.default_nudging, config)
        contrast_fn = energy.contrast(free, phases, config, grad_scale, nudge)
        # The contrast keeps what it needs of the free phase and frees it on the way; it builds its own stack
        # (through the model's forward, so that DDP's hooks fire), so this one's masks and rotary tables go now.
        del free, stack
        contrast = model(**inputs, ep_contrast=contrast_fn)
    return contrast - contrast.detach() + free_loss, energy.diagnostics(contrast_fn)


def backprop_loss(model: nn.Module, unwrapped: nn.Module, inputs: dict, energy: EnergyFamily,
                  loss: NudgeLoss | None = None) -> Tensor:
    """The loss EP's gradient tends to, on the feed-forward pass through ``model``'s forward, in the mode EP's step
    runs in: backprop of it is EP's reference (EPTrainer's gradient audit)."""
    def at_feed_forward(stack: BlockStack) -> Tensor:
        return (stack.loss if loss is None else loss(stack))(energy.feed_forward(stack))

    with _energy_mode(unwrapped):
        return model(**inputs, ep_contrast=at_feed_forward)


@contextlib.contextmanager
def _energy_mode(model: nn.Module):
    """Every phase must evaluate the same energy. Models that share one dropout mask per step across phases (the
    stock-model adapters, :mod:`mep_hf.adapters.dropout`) stay in train mode; for the others dropout-like train-mode
    behaviour is off during the EP step."""
    was_training = model.training
    if not getattr(model, "ep_shares_dropout", False):
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)
