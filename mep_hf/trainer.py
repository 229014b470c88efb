"""``EPTrainer``: the Hugging Face ``Trainer`` with Equilibrium Propagation in place of backprop.

Trainer's own ``training_step`` runs unchanged; only what it calls ``compute_loss`` changes during training. There,
EP settles the model's blocks with the nudging loss set to what ``Trainer.compute_loss`` would return for the
batch (the model's ``loss_function`` with ``num_items_in_batch``, the label smoother, a user's
``compute_loss_func``, token averaging across devices), evaluated at the output state. It returns a scalar whose
value is that loss at the free state (the loss Trainer logs) and whose gradient is EP's. Trainer then scales it for
gradient accumulation, backpropagates it (fp16 loss scale included), clips, steps and logs as it always does.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import unwrap_peft_model

from .adapters import prepare_ep_model
from .audit import GradientAudit, agreement
from .backward import backprop_loss, ep_step
from .batch_checks import check_batch, check_dataset_fills_a_batch
from .checkpointing import AtomicCheckpointMixin
from .block_stack import BlockStack
from .energies import energy_settings, resolve_energy
from .equilibrium import SettlingDivergedError
from .guard import UPDATE_KNOBS, LossGuard, TrainingDivergedError
from .hub import EPModelCardMixin, EPRemoteCodeMixin
from .training_args import EPTrainingArguments

# Trainer features EP cannot honour, with the reason; refused at ``EPTrainer.__init__``.
UNSUPPORTED_FEATURES = {
    "use_liger_kernel": "Liger fuses the LM head and the loss into one kernel, so there is no output state to nudge",
    "gradient_checkpointing": "EP keeps no backprop graph of the forward pass, so there is nothing to checkpoint",
}
UNSUPPORTED_OPTIMIZERS = {
    "lomo": "LOMO fuses the optimizer step into backprop's backward pass",
    "adalomo": "AdaLOMO fuses the optimizer step into backprop's backward pass",
}


@functools.cache
def _named_parameters(forward) -> frozenset[str]:
    """The arguments a ``forward`` names (all but ``labels``); what else it gets goes to its loss."""
    return frozenset(inspect.signature(forward).parameters) - {"self", "labels"}


class _OutputAt(nn.Module):
    """The model seen by ``Trainer.compute_loss`` while EP evaluates its loss at an output state.

    Called like the model, it returns the model's output at ``state`` (``BlockStack.output``); arguments the
    model's ``forward`` does not name (``num_items_in_batch``, ...) go to the output's loss, as ``forward`` routes
    them. Trainer picks the causal-LM label shift by the model's class name, so the name is the model's.
    """

    def __init__(self, model: nn.Module, stack: BlockStack):
        super().__init__()
        self._name = unwrap_peft_model(model)._get_name()
        self._named_inputs = _named_parameters(type(model).forward)
        self._output = stack.output
        self.state: torch.Tensor | None = None

    def _get_name(self) -> str:
        return self._name

    def forward(self, labels=None, **kwargs):
        loss_kwargs = {k: v for k, v in kwargs.items() if k not in self._named_inputs}
        return self._output(self.state, labels=labels, **loss_kwargs)


class EPTrainer(EPModelCardMixin, EPRemoteCodeMixin, AtomicCheckpointMixin, Trainer):
    """Drop-in ``Trainer`` whose parameter gradients come from EP settling instead of backprop.

    Expects :class:`EPTrainingArguments` and a model with ``ep_stack(**inputs) -> BlockStack`` whose ``forward``
    is decorated with :func:`~mep_hf.block_stack.routes_ep_contrast` (EP-native models; stock models get both from
    :func:`~mep_hf.adapters.prepare_ep_model`). Evaluation and prediction use the ordinary forward.

    Another Trainer subclass gets EP by coming after it: ``class X(EPTrainer, OtherTrainer)`` nudges with
    ``OtherTrainer.compute_loss`` (``mep_hf.trl.EPSFTTrainer`` is TRL's ``SFTTrainer`` so composed). The other order
    would train by backprop, and is refused at ``__init__``.
    """

    # What the parent trainers' ``compute_loss`` is given as the model while EP evaluates its loss at an output state.
    _output_at = _OutputAt

    def __init__(self, model=None, args: EPTrainingArguments | None = None, **kwargs):
        _refuse_shadowed_ep_step(type(self))  # another Trainer's step or loss ahead of EP's would train by backprop
        if args is None:
            args = EPTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, EPTrainingArguments):
            raise TypeError(f"EPTrainer needs EPTrainingArguments, got {type(args).__name__}")
        _refuse_unsupported_features(args)
        if model is not None:
            model = prepare_ep_model(model)  # an unsupported model is refused before any data work
        train_dataset = kwargs.get("train_dataset")
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError("train_dataset is empty (0 examples): there is nothing to train on")
        check_dataset_fills_a_batch(train_dataset, args)
        if model is not None and kwargs.get("processing_class") is None:
            # Like Trainer given a processing_class: what is saved goes into pipeline() (preprocessor_config.json).
            from .models.image_processing_ep import default_image_processor

            data = train_dataset if train_dataset is not None else kwargs.get("eval_dataset")
            kwargs["processing_class"] = default_image_processor(model, data)
        super().__init__(model=model, args=args, **kwargs)
        _check_label_columns(train_dataset, self.label_names)
        # The energy family the model declares (mep_hf.energies); an explicit args.ep_energy must agree.
        self._energy = resolve_energy(self.args.ep_energy, self.model)
        self._settings = energy_settings(self._energy, self.args)  # refuses a flag only another family reads
        if self.args.n_gpu > 1:
            raise ValueError("EPTrainer does not support nn.DataParallel; launch one process per GPU (accelerate/torchrun)")
        if self.args.fsdp and not self.is_fsdp_enabled:  # accelerate drops FSDP off accelerators: DDP, unsharded
            raise ValueError(f"fsdp was asked for, but accelerate enables FSDP only on accelerators (here: "
                             f"{self.accelerator.distributed_type.value}), so the Trainer would train unsharded; on CPU shard "
                             "with mep_hf.shard_for_ep and step with mep_hf.ep_backward (docs/scale_out.md)")
        self._ep_metrics: dict[str, list[float]] = defaultdict(list)
        self._unwrap_cache: tuple[nn.Module | None, nn.Module | None] = (None, None)
        self._step_kind: str | None = None  # "ep" or "backprop" (the audit's reference) inside training_step
        self._audit = GradientAudit(self.args.ep_audit_steps, self.args.ep_audit_min_cosine,
                                    self.args.ep_audit_max_rel_error, self.args.ep_audit_strict)
        self._loss_guard = LossGuard(self.args.ep_loss_guard_factor, self.args.ep_loss_guard_window)
        self._rate_checkpoints = True  # training losses are the health of the checkpoint of their parameters
        # Trainer's loop sets this per accumulation window; the default lets training_step run on its own too.
        self.current_gradient_accumulation_steps = self.args.gradient_accumulation_steps

    def call_model_init(self, trial=None):
        """``model_init``'s model (at ``__init__``, and again in ``train()`` / ``hyperparameter_search``), adapted and
        checked as ``model=`` is (:func:`~mep_hf.adapters.prepare_ep_model`): an unsupported model is refused."""
        return prepare_ep_model(super().call_model_init(trial))

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, or a MEP preset when ``args.mep_optimizer`` names one."""
        if self.optimizer is None and self.args.mep_optimizer is not None:
            from .optim import build_optimizer

            self.optimizer = build_optimizer(
                self.args.mep_optimizer,
                self.model,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                **(self.args.mep_optimizer_options or {}),
            )
            return self.optimizer
        return super().create_optimizer(model)

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """Trainer's own step; its ``compute_loss`` call gets the EP loss (see :meth:`compute_loss`). On an audited
        step (:mod:`mep_hf.audit`) a backprop step of the same loss follows, and only EP's gradient is kept. Ids and
        labels out of the model's range, or all ignored, are refused first (:mod:`mep_hf.batch_checks`)."""
        check_batch(self._unwrapped(model), inputs)
        if not (self._energy.has_backprop_reference and self._audit.due(self.state.global_step)):
            return self._step(model, inputs, num_items_in_batch, "ep")
        loss, cosine, rel_error = self.audit_step(model, inputs, num_items_in_batch)
        self._ep_metrics["ep_audit_cosine"].append(cosine)
        self._ep_metrics["ep_audit_rel_error"].append(rel_error)
        self._audit.judge(cosine, rel_error, self.state.global_step + 1)
        return loss

    def _step(self, model: nn.Module, inputs: dict, num_items_in_batch, kind: str) -> torch.Tensor:
        self._step_kind = kind
        try:
            return super().training_step(model, dict(inputs), num_items_in_batch)
        finally:
            self._step_kind = None

    def audit_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, float, float]:
        """A training step that also checks itself: the EP step, then Trainer's backprop step on the same batch
        (same scaling, all-reduce and dropout masks, the random state left as the EP step left it). Only EP's
        gradient is kept, added to what the accumulation window holds. Returns the step's loss and the cosine and
        relative error of EP's micro-batch gradient against backprop's (:func:`mep_hf.audit.agreement`)."""
        if not self._energy.has_backprop_reference:
            raise ValueError(f"the {self._energy.name!r} energy has no backprop reference to audit against")
        params = [p for p in model.parameters() if p.requires_grad]
        held = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss = self._step(model, inputs, num_items_in_batch, "ep")
        ep = [p.grad for p in params]
        for p in params:
            p.grad = None
        device = self.args.device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [],
                                   device_type=device.type if device.type != "cpu" else "cuda"):
            self._step(model, inputs, num_items_in_batch, "backprop")
        reference = [p.grad for p in params]
        for p, h, g in zip(params, held, ep):
            p.grad = g if h is None else h if g is None else h.add_(g)
        cosine, rel_error = agreement(ep, reference)
        return loss, cosine, rel_error

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """Inside a training step: the loss Trainer would compute, with EP's gradient. Elsewhere (evaluation,
        prediction): Trainer's own ``compute_loss``.

        The returned scalar is ``L(s_free) + C − C.detach()``: Trainer's loss at the feed-forward state for logging,
        and the EP contrast ``C`` for the gradient. ``C`` runs through the (possibly DDP-wrapped) model's forward so
        that gradient all-reduce hooks fire.
        """
        if self._step_kind is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped = self._unwrapped(model)
        trainer_loss = functools.partial(self._trainer_loss, unwrapped, inputs=inputs,
                                         num_items_in_batch=num_items_in_batch)
        if self._step_kind == "backprop":  # the audit's reference: through the forward, as EP's contrast runs
            loss = backprop_loss(model, unwrapped, inputs, self._energy, trainer_loss)
            return (loss, None) if return_outputs else loss
        self._free_loss = None
        try:
            loss, diagnostics = ep_step(model, unwrapped, inputs, self._energy, self.args, self._settings,
                                        trainer_loss, self._loss_scale(), on_free_loss=self._guard_against_divergence)
        except SettlingDivergedError as err:
            free_loss = self._free_loss
            if free_loss is not None and self._loss_guard.has_risen(free_loss):
                self._diverged(
                    f"settling diverged at step {self.state.global_step} on a training loss of {free_loss:.4g}, "
                    f"which had climbed from {self._loss_guard.baseline:.4g}: the parameter updates are "
                    f"diverging; {UPDATE_KNOBS}. ({err})", err
                )
            raise
        for key, value in diagnostics.items():
            self._ep_metrics[key].append(value)
        return (loss, None) if return_outputs else loss

    @contextlib.contextmanager
    def outside_training(self):
        """For EP gradients taken outside the training loop (e.g. :func:`mep_hf.callbacks.estimate_fisher`'s
        per-example ones): those losses are not training losses, so the divergence guard does not see them (only a
        non-finite loss still stops) and their settling diagnostics are not logged."""
        guard, ep_metrics = self._loss_guard, self._ep_metrics
        self._loss_guard, self._ep_metrics, self._rate_checkpoints = LossGuard(0, 1), defaultdict(list), False
        try:
            yield
        finally:
            self._loss_guard, self._ep_metrics, self._rate_checkpoints = guard, ep_metrics, True

    def _trainer_loss(self, model: nn.Module, stack: BlockStack, inputs: dict, num_items_in_batch):
        """``s_L ↦ Trainer.compute_loss`` of the model whose output state is ``s_L``: the loss EP nudges with."""
        if stack.output is None:
            raise TypeError(
                f"{type(model).__name__}.ep_stack must set BlockStack.output (the model output at the output state) "
                "so that EPTrainer can nudge with the loss Trainer computes"
            )
        parent, at_state = super().compute_loss, self._output_at(model, stack)

        def loss(state: torch.Tensor) -> torch.Tensor:
            at_state.state = state
            try:
                return parent(at_state, dict(inputs), num_items_in_batch=num_items_in_batch)
            finally:
                at_state.state = None  # the free logits would otherwise outlive the free phase

        return loss

    def _guard_against_divergence(self, loss: float) -> None:
        """Stop training (before this step can be checkpointed) when the feed-forward loss diverged. Under DDP the
        ranks decide together, so none is left waiting in a collective."""
        if self._rate_checkpoints:
            self._record_checkpoint_health(loss)
        self._free_loss = loss  # what a settling divergence later in the step is judged by
        reason = self._loss_guard.check(loss, self.state.global_step)
        if self.args.world_size > 1:
            flag = torch.tensor([float(reason is not None)], device=self.args.device)
            if float(self.accelerator.reduce(flag, "sum")) > 0 and reason is None:
                reason = f"the training loss diverged on another process at step {self.state.global_step}; {UPDATE_KNOBS}"
        if reason is not None:
            self._diverged(reason)

    def _diverged(self, reason: str, cause: Exception | None = None):
        """End training: the current parameters diverged (their checkpoint, if any, is marked so)."""
        self._mark_checkpoint_diverged(reason)
        raise TrainingDivergedError(reason + self._healthiest_checkpoint_hint()) from cause

    def _checkpoint_train_loss(self) -> float | None:
        return self._loss_guard.recent_loss()

    def _unwrapped(self, model: nn.Module) -> nn.Module:
        """``accelerator.unwrap_model``, remembered per wrapper: it probes installed packages on every call."""
        if self._unwrap_cache[0] is not model:
            self._unwrap_cache = (model, self.accelerator.unwrap_model(model))
        return self._unwrap_cache[1]

    def _loss_scale(self) -> float:
        """The fp16 ``GradScaler``'s current scale (1 without one): ``accelerator.backward`` multiplies by it."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the settling diagnostics, averaged since the last log, to the training logs."""
        if "loss" in logs and self._ep_metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._ep_metrics.items()})
            self._ep_metrics.clear()
        super().log(logs, start_time)


# Trainer methods that make a step EP's: a class ahead of EPTrainer in the MRO that defines one trains by backprop.
EP_STEP_METHODS = ("compute_loss", "training_step")
# Ready-made EP versions of Trainer subclasses, named in the refusal below.
EP_READY = {"SFTTrainer": "mep_hf.trl.EPSFTTrainer", "Seq2SeqTrainer": "mep_hf.EPSeq2SeqTrainer"}


def _refuse_shadowed_ep_step(cls: type) -> None:
    """Refuse a class whose MRO puts another class's ``compute_loss`` / ``training_step`` ahead of EPTrainer's (e.g.
    ``class X(SFTTrainer, EPTrainer)``): its steps would run that class's backprop, with no EP and no warning."""
    for name in EP_STEP_METHODS:
        owner = next(c for c in cls.__mro__ if name in vars(c))
        if issubclass(owner, EPTrainer):
            continue
        order = [c.__name__ for c in cls.__mro__[: cls.__mro__.index(EPTrainer) + 1]]
        fix = f"list EPTrainer (or your EPTrainer subclass) before {owner.__name__} in the class bases"
        for c in cls.__mro__:  # the class whose bases are in the wrong order: the same bases, EP's first
            bases = sorted(c.__bases__, key=lambda b: not issubclass(b, EPTrainer))
            if bases != list(c.__bases__):
                fix = f"class {c.__name__}({', '.join(b.__name__ for b in bases)})"
                break
        known = next((c.__name__ for c in owner.__mro__ if c.__name__ in EP_READY), None)
        ready = f"; or use {EP_READY[known]}, that order made ready for {known}" if known else ""
        under = "loss" if name == "compute_loss" else name
        raise TypeError(
            f"{cls.__name__} would train by backprop, not EP: its class order ({' -> '.join(order)}) runs "
            f"{owner.__name__}.{name} ahead of EPTrainer's. Put EPTrainer first, so that EP's step runs under "
            f"{owner.__name__}'s {under}: {fix}{ready}."
        )


def _refuse_unsupported_features(args: EPTrainingArguments) -> None:
    """Trainer features EP cannot honour end here, before any data work, with the reason."""
    for flag, why in UNSUPPORTED_FEATURES.items():
        if getattr(args, flag, False):
            # transformers 5.24 renamed gradient_checkpointing (now a deprecated alias): the fix names the new flag
            fix = "activation_checkpointing" if flag == "gradient_checkpointing" and hasattr(
                args, "activation_checkpointing") else flag
            also = f" ({fix})" if fix != flag else ""
            raise ValueError(f"EPTrainer cannot honour {flag}=True{also}: {why}. Set {fix}=False.")
    optim = str(getattr(args.optim, "value", args.optim))
    if optim in UNSUPPORTED_OPTIMIZERS:
        raise ValueError(f"EPTrainer cannot use optim={optim!r}: {UNSUPPORTED_OPTIMIZERS[optim]}. Pick another optim.")


def _check_label_columns(dataset, label_names: list[str]) -> None:
    """String labels never reach the model (the collator drops what it cannot make a tensor of): refuse them before
    any data work. (A missing label column is fine here: collators such as the masked-LM one create the labels.)"""
    features = getattr(dataset, "features", None) or {}
    for name in dict.fromkeys([*label_names, "label"]):
        if getattr(features.get(name), "dtype", None) in ("string", "large_string"):
            raise ValueError(
                f"the train_dataset column {name!r} holds strings; EP (like the model's loss) needs integer class ids. "
                f"Encode it first, e.g. dataset = dataset.class_encode_column({name!r})"
            )
