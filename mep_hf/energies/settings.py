"""Each energy family's settings: a small frozen dataclass whose fields name the ``EPTrainingArguments`` flag that
sets them and say what a valid value is.

The trainer arguments stay flat for users (``--ep_settle_steps 3``); the family that reads a flag owns its meaning,
its default and its validation. A flag the model's family does not read, set away from its default, would be
ignored in silence: :func:`settings_for` refuses it, naming the flag, for every family alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field, fields
from typing import Any


def setting(default: Any, argument: str, valid: Callable[[Any], bool], expected: str):
    """A settings field set by the trainer flag ``argument``; ``valid(value)`` or a ``ValueError`` that says
    ``"{argument} must be {expected}"``."""
    return field(default=default, metadata={"argument": argument, "valid": valid, "expected": expected})


def is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def settle_tol() -> Any:
    """``ep_settle_tol``: every family may stop settling early on a relative change (0 = off)."""
    return setting(0.0, "ep_settle_tol", lambda v: is_real(v) and v >= 0, ">= 0")


def divergence_threshold() -> Any:
    """``ep_divergence_threshold``: the growth of the energy past which a phase counts as diverged."""
    return setting(10.0, "ep_divergence_threshold", lambda v: is_real(v) and v > 0, "> 0")


def validate(settings) -> None:
    """Check every field of a settings dataclass (call it from its ``__post_init__``)."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if not f.metadata["valid"](value):
            raise ValueError(f"{f.metadata['argument']} must be {f.metadata['expected']}, got {value!r}")


def arguments(settings_type) -> dict[str, str]:
    """``{flag: field name}`` of a settings dataclass."""
    return {f.metadata["argument"]: f.name for f in fields(settings_type)}


def from_arguments(settings_type, args):
    """The settings an ``EPTrainingArguments`` holds for one family (validated on construction)."""
    return settings_type(**{name: getattr(args, flag) for flag, name in arguments(settings_type).items()})


def settings_for(family, families, args):
    """``family``'s settings from ``args``, refusing any flag another family reads that was set away from its
    default (``families``: every registered family)."""
    own = arguments(family.settings_type)
    for other in families:
        for f in fields(other.settings_type):
            flag = f.metadata["argument"]
            value = getattr(args, flag)
            if flag not in own and value != f.default:
                raise ValueError(
                    f"{flag}={value!r} is not read by the {family.name} energy (it reads {', '.join(sorted(own))}); "
                    f"leave {flag} at its default {f.default!r}"
                )
    return from_arguments(family.settings_type, args)
