"""Energy families EP can drive, by name.

A family is the energy, its settling rule and its settings; the rest of EP is the family-neutral core
(:mod:`mep_hf.equilibrium`: nudging schemes and their contrast weights, block linearizations, the gradients'
hand-off to autograd, divergence detection) and the contrast routed through the model's ``forward(ep_contrast=...)``.

* ``layered``: prediction errors ``Σ ½‖s_l − f_l(s_{l−1})‖²``; the free phase is one forward pass
  (:mod:`mep_hf.energies.layered`, with :mod:`mep_hf.energies.inner_states`).
* ``hopfield``: ``½Σ‖s_l‖² − Σ s_{l+1}·f_l(s_l)`` over ``[0, 1]`` states (Scellier & Bengio 2017; Laborieux et al.
  2021); both phases settle by fixed-point iteration (:mod:`mep_hf.energies.hopfield`).

Each family implements :class:`EnergyFamily` (its settings a dataclass of :mod:`mep_hf.energies.settings` fields)
and joins with :func:`register_energy`. A model's config names its
family in the class attribute ``ep_energy`` (configs that do not are ``layered``); ``EPTrainingArguments.ep_energy``
may name it too, and ``EPTrainer`` refuses a disagreement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor, nn

from ..block_stack import BlockStack
from .settings import settings_for

DEFAULT_ENERGY = "layered"


class EnergyFamily(Protocol):
    """What ``EPTrainer`` asks of a family, in the order of one training step."""

    name: str
    settings_type: type  # a frozen dataclass of settings fields, each set by the ep_* flag it names
    default_nudging: str  # ep_nudging when the user sets none
    # Whether EP's gradient tends to backprop's through ``feed_forward`` (the gradient audit, mep_hf.audit, needs it).
    has_backprop_reference: bool

    def free_phase(self, stack: BlockStack, config: Any) -> Any:
        """The β = 0 equilibrium; the result's ``loss`` is the task loss there (what Trainer logs)."""

    def default_beta(self, displacement: float) -> Any:
        """β when ``ep_beta`` is unset: the layered energy's scale-free rule for ``displacement``
        (``ep_nudge_displacement``), or a family's own fixed β."""

    def nudged_phases(self, stack: BlockStack, free: Any, beta: Any, nudging: str, config: Any) -> list:
        """Settle the nudged phase(s) of :func:`mep_hf.equilibrium.nudging_betas` from the free state."""

    def contrast(self, free: Any, phases: list, config: Any, grad_scale: float,
                 loss: Callable[[Tensor], Tensor]) -> Callable[[BlockStack], Tensor]:
        """The contrast: called on the stack inside the model's ``forward(ep_contrast=...)``, it returns a scalar
        whose parameter gradient is EP's. It checks the phases for divergence while computing their energies."""

    def feed_forward(self, stack: BlockStack) -> Tensor:
        """The output state of the feed-forward pass, differentiable: backprop of ``stack.loss`` of it is the
        reference EP's gradient tends to (families with ``has_backprop_reference``)."""

    def diagnostics(self, contrast: Any) -> dict[str, float]:
        """Scalars for the Trainer's logs (averaged between logging steps), read from the contrast after it ran."""


ENERGIES: dict[str, EnergyFamily] = {}


def register_energy(family: EnergyFamily) -> EnergyFamily:
    """Add a family under ``family.name``; a name can be registered once."""
    if not family.name or family.name in ENERGIES:
        raise ValueError(f"energy family {family.name!r} is empty or already registered ({sorted(ENERGIES)})")
    ENERGIES[family.name] = family
    return family


def get_energy(name: str) -> EnergyFamily:
    if name not in ENERGIES:
        raise ValueError(f"unknown energy family {name!r}; expected one of {tuple(ENERGIES)}")
    return ENERGIES[name]


def model_energy(model: nn.Module) -> str:
    """The family a model declares (``config.ep_energy``), ``layered`` where it declares none (stock models, the
    layered EP models)."""
    return getattr(getattr(model, "config", None), "ep_energy", DEFAULT_ENERGY)


def energy_settings(family: EnergyFamily, args) -> Any:
    """``family``'s settings from ``EPTrainingArguments``; a flag only another family reads, set away from its
    default, is refused by name (:func:`mep_hf.energies.settings.settings_for`)."""
    return settings_for(family, ENERGIES.values(), args)


def resolve_energy(requested: str | None, model: nn.Module) -> EnergyFamily:
    """The family that trains ``model``: the one it declares; ``requested`` (``ep_energy``) must agree."""
    declared = model_energy(model)
    if requested is not None and requested != declared:
        raise ValueError(
            f"ep_energy={requested!r} but {type(model).__name__} is a {declared!r}-energy model (its config declares "
            f"ep_energy={declared!r}); set ep_energy={declared!r} or leave it unset to follow the model"
        )
    return get_energy(declared)


from . import layered  # noqa: E402, I001  (each module registers its family; layered first: the default)
from . import hopfield  # noqa: E402

__all__ = ["ENERGIES", "EnergyFamily", "energy_settings", "get_energy", "model_energy", "register_energy",
           "resolve_energy"]
