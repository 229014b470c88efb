"""``EPTrainer``: the Hugging Face ``Trainer`` with Equilibrium Propagation in place of backprop.

Only ``training_step`` changes: free phase, nudged phase(s), then ``accelerator.backward`` on the EP contrast, an
ordinary scalar. The optimizer, scheduler, clipping, accumulation, AMP, logging, callbacks and checkpointing are
the Trainer's own.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer

from .adapters import prepare_ep_model
from .checkpointing import AtomicCheckpointMixin
from .equilibrium import BlockStack, Contrast, free_phase, nudged_phases
from .training_args import EPTrainingArguments


class EPTrainer(AtomicCheckpointMixin, Trainer):
    """Drop-in ``Trainer`` whose parameter gradients come from EP settling instead of backprop.

    Expects :class:`EPTrainingArguments` and a model with ``ep_stack(**inputs) -> BlockStack`` whose ``forward``
    accepts ``ep_contrast=`` (see :mod:`mep_hf.models`). Evaluation and prediction use the ordinary forward.
    """

    def __init__(self, model=None, args: EPTrainingArguments | None = None, **kwargs):
        if args is None:
            args = EPTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, EPTrainingArguments):
            raise TypeError(f"EPTrainer needs EPTrainingArguments, got {type(args).__name__}")
        if model is not None:
            model = prepare_ep_model(model)
        super().__init__(model=model, args=args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("EPTrainer does not support nn.DataParallel; launch one process per GPU (accelerate/torchrun)")
        self._ep_metrics: dict[str, list[float]] = defaultdict(list)
        self._unwrap_cache: tuple[nn.Module | None, nn.Module | None] = (None, None)

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
        # Every phase must see the same deterministic energy, so dropout-like train-mode behaviour stays off.
        model.eval()
        inputs = self._prepare_inputs(inputs)
        args = self.args
        with self.compute_loss_context_manager():
            stack: BlockStack = self._unwrapped(model).ep_stack(**inputs)
            free = free_phase(stack)
            loss = free.loss
            phases = nudged_phases(stack, free, args.ep_beta, args.ep_nudging, args.settle_config)
            contrast_fn = Contrast(
                phases, args.ep_divergence_threshold, first_block=free.blocks[0], grad_scale=self._loss_scale()
            )
            del free  # the contrast keeps only block 1's linearization, and frees it after layer 1
            # Through the (possibly DDP-wrapped) model's forward, so gradient all-reduce hooks fire.
            contrast = model(**inputs, ep_contrast=contrast_fn)
        # Set by the Trainer's loop (the last accumulation window may be shorter); absent outside `train()`.
        steps = getattr(self, "current_gradient_accumulation_steps", args.gradient_accumulation_steps)
        self.accelerator.backward(contrast / steps)
        self._ep_metrics["ep_energy"].append(sum(p.energy for p in phases) / len(phases))
        self._ep_metrics["ep_settle_steps"].append(sum(p.steps for p in phases) / len(phases))
        return torch.tensor(loss / steps, device=args.device)

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
