"""EP for TRL's ``SFTTrainer``: :class:`EPSFTTrainer` and :class:`EPSFTConfig` (``pip install 'mep-hf[trl]'``).

Swap ``SFTTrainer`` for ``EPSFTTrainer`` and ``SFTConfig`` for ``EPSFTConfig``; everything else of an SFT script
stays. ``EPSFTTrainer`` is ``class EPSFTTrainer(EPTrainer, SFTTrainer)``: EP's step runs inside SFTTrainer's
``training_step`` and nudges with ``SFTTrainer.compute_loss`` evaluated at the output state, exactly as
``EPTrainer`` does with ``Trainer.compute_loss``. So SFT's loss features define the nudge: completion-only and
assistant-only loss (the ``-100`` labels of its data preparation), packing and padding-free batches (their
``position_ids``), ``loss_type="dft"``, ``num_items_in_batch`` normalisation under gradient accumulation, label
smoothing and a ``compute_loss_func``.

SFTTrainer asks the model for its fused LM head (``model(..., fused_lm_head=True)``: per-token log-probabilities,
entropy and top-1 hits, computed in tiles without the logits). At an output state EP has the logits themselves
(the decoder adapters' ``s_L``), so those quantities are computed from the logits there: the same function of the
same numbers, with the logits materialised (a ``(batch, length, vocab)`` tensor, as plain ``Trainer`` has).
SFT's metrics (``entropy``, ``mean_token_accuracy``, ``num_tokens``) are those of the feed-forward state, recorded
once per step, as backprop's SFTTrainer records them. What EP cannot give is refused by name at ``__init__``:
the MoE router loss (``router_aux_loss_coef``: no router logits at an output state) and prompt-learning
``peft_config`` (its virtual tokens are no part of an EP block stack).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import torch

try:
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import FusedCausalLMOutput
except ImportError as err:  # pragma: no cover - exercised only without trl
    raise ImportError(
        "mep_hf.trl (EPSFTTrainer, EPSFTConfig) needs TRL >= 1.16: pip install 'mep-hf[trl]' (or pip install trl)"
    ) from err
from transformers import TrainingArguments

from .trainer import EPTrainer, _OutputAt
from .training_args import EPTrainingArguments

__all__ = ["EPSFTConfig", "EPSFTTrainer"]


@dataclass
class EPSFTConfig(EPTrainingArguments, SFTConfig):
    """``SFTConfig`` plus the EP settings of :class:`~mep_hf.EPTrainingArguments` (one dataclass; works with
    ``HfArgumentParser`` / ``TrlParser``). SFTConfig's defaults stay (``bf16`` on unless ``fp16``, ``learning_rate``
    2e-5, ``logging_steps`` 10, ...) except ``gradient_checkpointing``: off, as in ``TrainingArguments``, since EP
    keeps no backprop graph to checkpoint (``EPTrainer`` refuses it)."""

    gradient_checkpointing: bool | None = field(
        default=TrainingArguments.__dataclass_fields__["gradient_checkpointing"].default,  # Trainer's: off
        metadata={"help": "Must stay off under EP: EP keeps no backprop graph of the forward to checkpoint."},
    )


class _SFTOutputAt(_OutputAt):
    """The model ``SFTTrainer.compute_loss`` sees while EP evaluates its loss at an output state: the fused LM head
    it asks for (``fused_lm_head=True``) is answered from the logits at that state (:func:`fused_outputs`)."""

    def forward(self, labels=None, fused_lm_head=False, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            extra = {k: v for k, v in (("shift_labels", shift_labels), ("num_items_in_batch", num_items_in_batch))
                     if v is not None}
            return super().forward(labels=labels, **kwargs, **extra)
        logits = super().forward(**kwargs).logits
        return fused_outputs(logits, labels, shift_labels, num_items_in_batch)


def fused_outputs(logits: torch.Tensor, labels: torch.Tensor | None, shift_labels: torch.Tensor | None = None,
                  num_items_in_batch=None) -> FusedCausalLMOutput:
    """What TRL's fused LM head returns (``trl.trainer.utils.add_fused_lm_head``, temperature 1), from the logits:
    the next-token log-probability, entropy and top-1 hit of each labelled position (zero where the label is
    ``-100``), the label mask, and the summed negative log-likelihood over ``num_items_in_batch`` (the labelled
    count when not given). Computed in at least float32, as TRL's kernel is."""
    if shift_labels is None:
        if labels is None:
            raise ValueError("the fused LM head needs labels (or shift_labels)")
        logits, labels = logits[:, :-1], labels[:, 1:]
    else:
        labels = shift_labels
    labels = labels.to(logits.device)
    mask = labels != -100
    log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    log_probs = log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0)
    entropy = -(log_p.exp() * log_p).sum(-1).masked_fill(~mask, 0)
    is_top1 = (logits.argmax(-1) == labels) & mask
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / count
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)


class EPSFTTrainer(EPTrainer, SFTTrainer):
    """TRL's ``SFTTrainer`` trained by EP: ``SFTTrainer``'s data preparation, collator, loss, metrics and
    evaluation, with EP's gradient in place of backprop's. Takes :class:`EPSFTConfig` (other ``TrainingArguments``
    are converted to it, as SFTTrainer converts them to ``SFTConfig``) and a model EP supports (a stock causal LM of
    a registered type, or its name / path, loaded as SFTTrainer loads it)."""

    _output_at = _SFTOutputAt

    def __init__(self, model, args: EPSFTConfig | TrainingArguments | None = None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = EPSFTConfig(f"{name.rstrip('/').split('/')[-1]}-SFT")
        elif not isinstance(args, EPSFTConfig):
            values = args.to_dict()
            # to_dict hides every *_token value (hub_token, and SFTConfig's pad_token / eos_token) behind a placeholder
            values.update({k: getattr(args, k) for k in values if k.endswith("_token")})
            args = EPSFTConfig(**values)
        peft_config = kwargs.get("peft_config")
        if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
            raise TypeError(
                f"peft_config={type(peft_config).__name__} is prompt learning: its virtual tokens are not part of an "
                "EP block stack. LoRA and other adapters that wrap layers in place are supported."
            )
        if isinstance(model, str):  # EPTrainer adapts the model before SFTTrainer would load it
            from trl.trainer.utils import create_model_from_path

            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = create_model_from_path(model, **init_kwargs)
            args.model_init_kwargs = None  # used: SFTTrainer would warn that they are ignored
        super().__init__(model=model, args=args, **kwargs)
        if self.aux_loss_enabled:
            raise ValueError(
                f"router_aux_loss_coef={self.router_aux_loss_coef}: the MoE load-balancing loss needs the router "
                "logits, which an EP output state does not carry. Set router_aux_loss_coef=0.0."
            )

    def _trainer_loss(self, model, stack, inputs, num_items_in_batch):
        """SFTTrainer's loss at an output state. EP evaluates it several times a step (the free state, then each
        nudged phase), and SFTTrainer records its metrics on every call: only the step's first evaluation, at the
        feed-forward state, keeps them (the audit's backprop reference keeps none)."""
        loss, calls = super()._trainer_loss(model, stack, inputs, num_items_in_batch), itertools.count()

        def loss_recorded_once(state: torch.Tensor) -> torch.Tensor:
            keep = self._step_kind == "ep" and next(calls) == 0
            with self._sft_metrics(keep):
                return loss(state)

        return loss_recorded_once

    @contextlib.contextmanager
    def _sft_metrics(self, keep: bool):
        """Keep (as training metrics) or undo what ``SFTTrainer.compute_loss`` records inside the block. Undone
        records gather nothing across processes: ranks may settle for different numbers of steps
        (``ep_settle_tol``), and a collective in only some ranks' calls would hang them all."""
        saved_tokens = self._total_train_tokens
        saved = {mode: {k: list(v) for k, v in metrics.items()} for mode, metrics in self._metrics.items()}
        accelerator, held = self.accelerator, vars(self.accelerator).get("gather_for_metrics")
        if not keep:
            accelerator.gather_for_metrics = _local
        try:
            yield
        finally:
            if not keep:
                if held is None:
                    del accelerator.gather_for_metrics
                else:
                    accelerator.gather_for_metrics = held
                self._total_train_tokens = saved_tokens
                for mode, metrics in saved.items():
                    self._metrics[mode].clear()
                    self._metrics[mode].update(metrics)


def _local(data, use_gather_object=False):
    """``Accelerator.gather_for_metrics`` without the gather: this process's values (for records that are undone)."""
    return data
