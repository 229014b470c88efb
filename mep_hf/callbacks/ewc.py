"""Elastic Weight Consolidation (EWC, Kirkpatrick et al. 2017) as a ``TrainerCallback``, for EP and backprop alike.

The penalty is ``½·λ·Σ_i F_i (θ_i − θ*_i)²``. Its gradient ``λ·F_i·(θ_i − θ*_i)`` needs only parameter ``i`` itself,
so adding it to ``p.grad`` keeps EP's update local; the EP step itself is untouched.

Where in Trainer's step (transformers 5, ``Trainer._inner_training_loop``): after the accumulation window's
backward passes, Trainer clips (``accelerator.clip_grad_norm_``, which first unscales fp16 gradients), computes the
norm it logs, then fires ``on_pre_optimizer_step`` and calls ``optimizer.step()``. The penalty gradient is added in
``on_pre_optimizer_step``: once per optimizer step (not per micro-batch), on unscaled gradients, and outside
``max_grad_norm`` clipping and the logged ``grad_norm`` (clipping bounds the data gradient's step, the anchor's pull
is not clipped).

Several tasks: online EWC (Schwarz et al. 2018). After task ``t``, ``F ← γ·F + F_t`` and ``θ* ← θ_t``; with the
default ``γ = 1`` the Fisher terms add up, and one Fisher and one anchor are stored whatever the number of tasks.

Fisher estimator (:meth:`EWCCallback.consolidate`): the diagonal of the *true* Fisher, ``E_x E_{y~p_θ(·|x)}
[g(x, y)²]``, with ``g`` the per-example gradient of the Trainer's loss for the label ``y`` sampled from the model's
own predictive distribution. Why that one: it is the Fisher EWC's Laplace argument asks for; the *empirical*
Fisher (``y`` the data label, ``estimator="empirical"``) nearly vanishes on examples the model already fits, which
is where it matters most. EP needs nothing new for it: the nudged phase simply pulls the output towards the sampled
label. Gradients are EP's own (``EPTrainer.training_step`` on one example at a time), or backprop's with
``gradients="backprop"`` on the same examples and labels, for comparison.

Checkpoints: the Fisher and anchors are one safetensors file, ``ewc_state.safetensors``. Under ``EPTrainer`` (any
:class:`~mep_hf.checkpointing.AtomicCheckpointMixin` trainer) it is written into the staged checkpoint before the
manifest and loaded after verification, so a missing or changed file is refused by name. A plain ``Trainer`` has no
such hook: the callback writes the file in ``on_save``, and a resume calls :meth:`EWCCallback.load_checkpoint_state`
with the checkpoint folder before ``train(resume_from_checkpoint=...)``.
"""

from __future__ import annotations

import contextlib
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..checkpointing import CheckpointIntegrityError

EWC_STATE_NAME = "ewc_state.safetensors"
ESTIMATORS = ("true", "empirical")
GRADIENTS = ("ep", "backprop")


class EWCCallback(TrainerCallback):
    """Adds the EWC penalty's gradient to every consolidated parameter's gradient before each optimizer step.

    ``ewc_lambda``: penalty strength λ (≥ 0). ``gamma``: online-EWC decay of the earlier tasks' Fisher (1 = keep).
    Train a task, call :meth:`consolidate`, train the next task with the same callback.
    """

    def __init__(self, ewc_lambda: float, gamma: float = 1.0):
        if not ewc_lambda >= 0:
            raise ValueError(f"ewc_lambda must be >= 0, got {ewc_lambda!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        self.ewc_lambda = float(ewc_lambda)
        self.gamma = float(gamma)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.num_tasks = 0

    # ------------------------------------------------------------------ the penalty
    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """``½·λ·Σ F (θ − θ*)²`` (differentiable; for logging and checks, training uses :meth:`add_penalty_grad`)."""
        total = torch.zeros(())
        for name, p in model.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name] * (p - self.anchor[name]) ** 2).sum()
        return 0.5 * self.ewc_lambda * total

    @torch.no_grad()
    def add_penalty_grad(self, model: torch.nn.Module) -> None:
        """``p.grad += λ·F·(θ − θ*)`` for every consolidated parameter (a missing grad counts as zero)."""
        if not self.fisher or self.ewc_lambda == 0:
            return
        for name, p in model.named_parameters():
            if name not in self.fisher or not p.requires_grad:
                continue
            grad = self.ewc_lambda * self.fisher[name] * (p - self.anchor[name])
            if p.grad is None:
                p.grad = grad.to(p.dtype)
            else:
                p.grad.add_(grad.to(p.grad.dtype))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.add_penalty_grad(model)

    # ------------------------------------------------------------------ consolidation
    def consolidate(self, trainer: Trainer, dataset, num_samples: int | None = None, estimator: str = "true",
                    gradients: str | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """After training a task: estimate its diagonal Fisher on ``dataset`` and fold it into the penalty; anchor
        at the current parameters. Returns the task's Fisher (see :func:`estimate_fisher` for the arguments)."""
        fisher = estimate_fisher(trainer, dataset, num_samples, estimator, gradients, seed)
        model = trainer.model
        for name, p in model.named_parameters():
            if name in fisher:
                old = self.fisher.get(name)
                self.fisher[name] = fisher[name] if old is None else self.gamma * old + fisher[name]
                self.anchor[name] = p.detach().clone()
        self.num_tasks += 1
        return fisher

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint_state(self, folder: str) -> None:
        """Write the Fisher and anchors into ``folder`` (a checkpoint being saved)."""
        tensors = {f"fisher.{k}": v.contiguous() for k, v in self.fisher.items()}
        tensors.update({f"anchor.{k}": v.contiguous() for k, v in self.anchor.items()})
        metadata = {"num_tasks": str(self.num_tasks), "gamma": repr(self.gamma), "ewc_lambda": repr(self.ewc_lambda)}
        save_file(tensors, os.path.join(folder, EWC_STATE_NAME), metadata=metadata)

    def load_checkpoint_state(self, folder: str, model: torch.nn.Module | None = None) -> None:
        """Read the Fisher and anchors back from checkpoint ``folder``; refuses a missing or unreadable file, and one
        whose tensors do not fit ``model``'s parameters (when given)."""
        path = os.path.join(folder, EWC_STATE_NAME)
        if not os.path.isfile(path):
            raise CheckpointIntegrityError(
                f"checkpoint {folder} has no {EWC_STATE_NAME}: it was saved without the EWC callback, so resuming "
                "would drop the consolidated tasks' Fisher and anchors"
            )
        try:
            tensors = load_file(path)
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
            num_tasks, saved = int(metadata["num_tasks"]), (float(metadata["ewc_lambda"]), float(metadata["gamma"]))
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            raise CheckpointIntegrityError(f"{path} is not a readable EWC state ({err})") from None
        if saved != (self.ewc_lambda, self.gamma):
            raise CheckpointIntegrityError(
                f"{path} was saved with ewc_lambda={saved[0]:g}, gamma={saved[1]:g}, but this EWCCallback has "
                f"ewc_lambda={self.ewc_lambda:g}, gamma={self.gamma:g}: the resumed run would not continue the saved "
                "one. Build the callback with the saved values.")
        fisher = {k[len("fisher."):]: v for k, v in tensors.items() if k.startswith("fisher.")}
        anchor = {k[len("anchor."):]: v for k, v in tensors.items() if k.startswith("anchor.")}
        if set(fisher) != set(anchor) or len(fisher) + len(anchor) != len(tensors):
            raise CheckpointIntegrityError(f"{path} is damaged: its fisher.* and anchor.* tensors do not pair up")
        if model is not None:
            params = dict(model.named_parameters())
            wrong = [k for k, v in fisher.items() if k not in params or params[k].shape != v.shape]
            if wrong:
                raise CheckpointIntegrityError(
                    f"{path} does not fit {type(model).__name__}: no parameter of that name and shape for {wrong[:5]}")
            fisher = {k: v.to(params[k].device) for k, v in fisher.items()}
            anchor = {k: v.to(params[k].device) for k, v in anchor.items()}
        self.fisher, self.anchor, self.num_tasks = fisher, anchor, num_tasks

    def on_save(self, args, state, control, **kwargs):
        """Plain ``Trainer``: put the state into the checkpoint just written (an EP trainer already staged it)."""
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, EWC_STATE_NAME)):
            self.save_checkpoint_state(folder)


def estimate_fisher(trainer: Trainer, dataset, num_samples: int | None = None, estimator: str = "true",
                    gradients: str | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal Fisher ``mean_x g(x, y)²`` of ``trainer.model`` on the first ``num_samples`` rows of ``dataset``.

    ``g(x, y)`` is the per-example gradient of the Trainer's training loss (its ``compute_loss``, so a
    ``compute_loss_func`` mask is honoured) for label ``y``: sampled from the model's predictive distribution
    (``estimator="true"``, one draw per example from a generator seeded with ``seed``; masked by the Trainer's
    ``preprocess_logits_for_metrics`` when it has one) or the data label (``"empirical"``). ``gradients``: ``"ep"``
    (``EPTrainer.training_step``: EP's own gradient, the trainer's β, nudging and settling) or ``"backprop"``
    (``Trainer.training_step``); default: ``"ep"`` for an ``EPTrainer``, else ``"backprop"``.
    """
    from ..trainer import EPTrainer

    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if gradients is None:
        gradients = "ep" if isinstance(trainer, EPTrainer) else "backprop"
    if gradients not in GRADIENTS:
        raise ValueError(f"gradients must be one of {GRADIENTS}, got {gradients!r}")
    if gradients == "ep" and not isinstance(trainer, EPTrainer):
        raise TypeError(f"gradients='ep' needs an EPTrainer, got {type(trainer).__name__}")
    if num_samples is not None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        dataset = dataset.select(range(min(num_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the dataset to estimate the Fisher on is empty")
    step = trainer.training_step if gradients == "ep" else (lambda *a, **k: Trainer.training_step(trainer, *a, **k))
    model = trainer.model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    count = 0
    saved_accumulation = getattr(trainer, "current_gradient_accumulation_steps", None)
    trainer.current_gradient_accumulation_steps = 1  # one example's loss, not a share of an accumulation window
    was_training = model.training
    context = trainer.outside_training() if gradients == "ep" else contextlib.nullcontext()
    try:
        with context:
            for batch in trainer.get_test_dataloader(dataset):  # on the device already (accelerate's loader)
                if estimator == "true":
                    batch["labels"] = _sample_labels(trainer, model, batch, generator)
                size = len(batch["labels"])
                for i in range(size):
                    example = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
                    model.zero_grad(set_to_none=True)
                    step(model, example, num_items_in_batch=1)
                    for n, p in params.items():
                        if p.grad is not None:
                            fisher[n] += p.grad.detach() ** 2
                count += size
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        trainer.current_gradient_accumulation_steps = saved_accumulation
    return {n: f / count for n, f in fisher.items()}


@torch.no_grad()
def _sample_labels(trainer: Trainer, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """One label per example drawn from the model's predictive distribution (softmax of its logits)."""
    model.eval()
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    if trainer.preprocess_logits_for_metrics is not None:  # e.g. a task-incremental logit mask
        logits = trainer.preprocess_logits_for_metrics(logits, batch["labels"])
    probs = torch.softmax(logits.double(), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(batch["labels"].device)
