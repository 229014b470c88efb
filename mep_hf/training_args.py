"""``EPTrainingArguments``: every EP knob as a validated ``TrainingArguments`` field (works with ``HfArgumentParser``)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import torch
from transformers import TrainingArguments

from .checkpointing import OPTIMIZER_STATE, RESUME_SETTINGS
from .energies import ENERGIES
from .energies.layered import ScaleFreeBeta, SettleConfig
from .energies.settings import arguments, from_arguments
from .equilibrium import NUDGING_SCHEMES


@dataclass
class EPTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the Equilibrium Propagation settings used by :class:`~mep_hf.EPTrainer`."""

    ep_beta: float | None = field(
        default=None,
        metadata={"help": "Nudging strength β > 0, fixed. Default (unset): the energy family's; for the layered "
                          "energy a scale-free β chosen each step so that no state moves by more than "
                          "ep_nudge_displacement of its own size (docs/defaults.md)."},
    )
    ep_nudge_displacement: float = field(
        default=ScaleFreeBeta.displacement,
        metadata={"help": "With ep_beta unset (layered energy): the largest relative state displacement ‖Δs_l‖/‖s_l‖ "
                          "the nudge may cause. EP's bias grows linearly with it (about 24x it on a stock Llama, "
                          "0.07x on BERT: docs/defaults.md)."},
    )
    ep_nudging: str | None = field(
        default=None,
        metadata={"help": "'positive' (one +β phase, O(β) bias, cheapest), 'centered' (±β phases, O(β²) bias, "
                          "a second contrast), 'random_sign' (one phase, β's sign drawn each step) or 'five_point' "
                          "(±β, ±2β: O(β⁴) bias, four phases); any scheme registered with "
                          "mep_hf.equilibrium.register_nudging. Default (unset): the energy family's ('positive' for "
                          "layered, 'centered' for hopfield)."},
    )
    ep_energy: str | None = field(
        default=None,
        metadata={"help": "Energy family (mep_hf.energies: 'layered', 'hopfield'). Default: the one the model's config "
                          "declares; a value that disagrees with the model is refused."},
    )
    ep_free_steps: int | None = field(
        default=None,
        metadata={"help": "Hopfield energy: T_free, settling steps of the free phase (default: the model config's "
                          "free_steps). The layered energy's free phase is one forward pass."},
    )
    ep_nudged_steps: int | None = field(
        default=None,
        metadata={"help": "Hopfield energy: T_nudged, settling steps of each nudged phase (default: the model "
                          "config's nudged_steps). The layered energy uses ep_settle_steps."},
    )
    ep_settle_mode: str = field(
        default=SettleConfig.mode,
        metadata={"help": "'sweep' (back-to-front error sweep, exact to first order per sweep) or 'gradient'."},
    )
    ep_settle_steps: int = field(
        default=SettleConfig.steps,
        metadata={"help": "Maximum settling steps (sweeps) per nudged phase. One sweep from the free state is exact "
                          "to first order in β; more only help at a large β."},
    )
    ep_settle_lr: float = field(
        default=SettleConfig.lr, metadata={"help": "State step size for ep_settle_mode='gradient' (unused by 'sweep')."}
    )
    ep_settle_tol: float = field(
        default=SettleConfig.tol,
        metadata={"help": "Stop settling early once the largest relative state change ‖Δs‖/‖s‖ falls below this (0 = off)."},
    )
    ep_memory: str = field(
        default=SettleConfig.memory,
        metadata={"help": "'fast': keep each block's graph from the free pass for the first sweep, and give every "
                          "parameterized module inside a block a state of its own, so the contrast needs each module "
                          "alone instead of a backward of the block (memory about backprop's); 'low': keep block "
                          "states only and re-run each block when its VJP is needed (activation memory of "
                          "checkpointed backprop)."},
    )
    ep_divergence_threshold: float = field(
        default=SettleConfig.divergence_threshold,
        metadata={"help": "Settling is declared diverged when the energy exceeds its start by this many times its size."},
    )
    ep_loss_guard_factor: float = field(
        default=10.0,
        metadata={"help": "Stop training when the loss exceeds this many times its lowest recent median (the "
                          "updates diverged); 0 = off. A non-finite loss always stops training."},
    )
    ep_loss_guard_window: int = field(
        default=20, metadata={"help": "Steps in the running median of the divergence guard's baseline."}
    )
    ep_audit_steps: int = field(
        default=100,
        metadata={"help": "Every this many optimizer steps (and at the first), compare EP's gradient with backprop's "
                          "on that batch (one extra forward and backward) and log ep_audit_cosine and "
                          "ep_audit_rel_error; 0 = off."},
    )
    ep_audit_min_cosine: float = field(
        default=0.99,
        metadata={"help": "The audit warns (once) when the cosine of EP's and backprop's gradients falls below this."},
    )
    ep_audit_max_rel_error: float = field(
        default=0.1,
        metadata={"help": "The audit warns (once) when ‖g_EP − g_BP‖/‖g_BP‖ exceeds this."},
    )
    ep_audit_strict: bool = field(
        default=False,
        metadata={"help": "Raise GradientAuditError instead of warning when the audit leaves its bounds."},
    )
    ep_resume_without_optimizer_state: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint that lacks optimizer.pt / scheduler.pt, with a fresh optimizer "
                          "(otherwise such a checkpoint is refused)."},
    )
    ep_resume_allow_changes: None | str | list[str] = field(
        default=None,
        metadata={"help": "Settings this run may change from the checkpoint it resumes (a list, or names separated "
                          "by commas), e.g. 'learning_rate,ep_beta'. Resume refuses any other change of the EP and "
                          "optimization settings (mep_hf.checkpointing.RESUME_SETTINGS). Changing optim or "
                          "another optimizer hyperparameter (OPTIMIZER_STATE) also needs "
                          "ep_resume_without_optimizer_state=True: optimizer and scheduler then start afresh; a new "
                          "learning_rate rescales the saved one."},
    )
    mep_optimizer: str | None = field(
        default=None,
        metadata={"help": "Name of a MEP optimizer preset (see mep_hf.optim.PRESETS); default: the Trainer's `optim`."},
    )
    mep_optimizer_options: dict | str | None = field(
        default=None, metadata={"help": "Options for the MEP preset, as a dict or a JSON string."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # pinned memory serves copies to an accelerator; torch warns without one
        check_step_settings(self)  # the settings of one EP step, as mep_hf.ep_backward checks its keywords
        if isinstance(self.ep_audit_steps, bool) or not (isinstance(self.ep_audit_steps, int) and self.ep_audit_steps >= 0):
            raise ValueError(f"ep_audit_steps must be an integer >= 0 (0 = off), got {self.ep_audit_steps!r}")
        if not _is_number(self.ep_audit_min_cosine) or not -1 <= self.ep_audit_min_cosine <= 1:
            raise ValueError(f"ep_audit_min_cosine must be in [-1, 1], got {self.ep_audit_min_cosine!r}")
        if not _is_number(self.ep_audit_max_rel_error) or not self.ep_audit_max_rel_error > 0:
            raise ValueError(f"ep_audit_max_rel_error must be > 0, got {self.ep_audit_max_rel_error!r}")
        if isinstance(self.ep_loss_guard_factor, bool) or not (
            isinstance(self.ep_loss_guard_factor, (int, float)) and math.isfinite(self.ep_loss_guard_factor)
            and (self.ep_loss_guard_factor == 0 or self.ep_loss_guard_factor > 1)
        ):
            raise ValueError(f"ep_loss_guard_factor must be 0 (off) or a finite number > 1, got {self.ep_loss_guard_factor!r}")
        if isinstance(self.ep_loss_guard_window, bool) or not (
            isinstance(self.ep_loss_guard_window, int) and self.ep_loss_guard_window >= 5
        ):
            raise ValueError(f"ep_loss_guard_window must be an integer >= 5, got {self.ep_loss_guard_window!r}")
        self._check_resume_allow_changes()
        if isinstance(self.mep_optimizer_options, str):
            try:
                self.mep_optimizer_options = json.loads(self.mep_optimizer_options)
            except json.JSONDecodeError as err:
                raise ValueError(f"mep_optimizer_options is not valid JSON: {err}") from None
        if self.mep_optimizer_options is not None and not isinstance(self.mep_optimizer_options, dict):
            raise ValueError(f"mep_optimizer_options must be a dict, got {type(self.mep_optimizer_options).__name__}")
        if self.mep_optimizer_options and self.mep_optimizer is None:
            raise ValueError("mep_optimizer_options were given but no mep_optimizer preset is set")

    def _check_resume_allow_changes(self) -> None:
        names = self.ep_resume_allow_changes
        if names is None:
            return
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"ep_resume_allow_changes must be a list of setting names, got {names!r}")
        unknown = [n for n in names if n not in RESUME_SETTINGS]
        if unknown:
            raise ValueError(f"ep_resume_allow_changes names {unknown}, which resume does not compare; it compares "
                             f"{', '.join(RESUME_SETTINGS)}")
        held = [n for n in names if n in OPTIMIZER_STATE]
        if held and not self.ep_resume_without_optimizer_state:
            raise ValueError(f"ep_resume_allow_changes names {held}, which the saved optimizer and scheduler state "
                             "hold: also set ep_resume_without_optimizer_state=True (they then start afresh)")
        self.ep_resume_allow_changes = list(names)


# The fields that shape one EP step (settling, nudging, the energy), as opposed to the training run's (audit, guard,
# optimizer): ``mep_hf.ep_backward`` takes these as keywords, with the same defaults and the same checks.
STEP_SETTINGS = ("ep_beta", "ep_nudge_displacement", "ep_nudging", "ep_energy",
                 *dict.fromkeys(flag for family in ENERGIES.values() for flag in arguments(family.settings_type)))


def step_settings(**settings) -> SimpleNamespace:
    """The EP step settings ``settings`` names, the rest at ``EPTrainingArguments``' defaults, checked as
    ``EPTrainingArguments`` checks them (``ValueError`` naming the setting; ``TypeError`` for an unknown name)."""
    unknown = sorted(set(settings) - set(STEP_SETTINGS))
    if unknown:
        raise TypeError(f"unknown EP setting(s) {unknown}; the EP step settings are {list(STEP_SETTINGS)}")
    namespace = SimpleNamespace(**{**_step_defaults(), **settings})
    check_step_settings(namespace)
    return namespace


@functools.cache
def _step_defaults() -> dict:
    return {f.name: f.default for f in fields(EPTrainingArguments) if f.name in STEP_SETTINGS}


def check_step_settings(settings) -> None:
    """Refuse an EP step setting out of its range (``settings``: ``EPTrainingArguments`` or :func:`step_settings`);
    each energy family checks the flags it reads (:mod:`mep_hf.energies.settings`)."""
    if settings.ep_beta is not None and (isinstance(settings.ep_beta, bool) or not (
        isinstance(settings.ep_beta, (int, float)) and math.isfinite(settings.ep_beta) and settings.ep_beta > 0
    )):
        raise ValueError(f"ep_beta must be a finite number > 0 or None (scale-free), got {settings.ep_beta!r}")
    if not _is_number(settings.ep_nudge_displacement) or not 0 < settings.ep_nudge_displacement < 1:
        raise ValueError(f"ep_nudge_displacement must be in (0, 1), got {settings.ep_nudge_displacement!r}")
    if settings.ep_nudging is not None and settings.ep_nudging not in NUDGING_SCHEMES:
        raise ValueError(f"ep_nudging must be one of {tuple(NUDGING_SCHEMES)} or None (the family's), got "
                         f"{settings.ep_nudging!r}")
    if settings.ep_energy is not None and settings.ep_energy not in ENERGIES:
        raise ValueError(f"ep_energy must be one of {tuple(ENERGIES)} or None (the model's), got {settings.ep_energy!r}")
    for family in ENERGIES.values():
        from_arguments(family.settings_type, settings)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
