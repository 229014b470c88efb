"""What every stock-model adapter shares: attaching EP to one model *instance* without touching its class."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable

from torch import Tensor, nn

from ..modeling_utils import require_labels


def unsupported(model: nn.Module, what: str) -> TypeError:
    return TypeError(f"{type(model).__name__} cannot be trained by EP: {what}")


def attach_ep(model: nn.Module, ep_stack: Callable) -> nn.Module:
    """Give ``model`` (this instance only) an ``ep_stack`` method and a forward that accepts ``ep_contrast=``.

    Idempotent: a model already adapted is returned unchanged. The wrapper forward keeps the class forward's
    signature (``functools.wraps`` on the unbound function, then bound with ``types.MethodType``).
    """
    if getattr(model, "_ep_adapted", False):
        return model
    class_forward = type(model).forward

    @functools.wraps(class_forward)
    def forward(self, *args, ep_contrast=None, **kwargs):
        if ep_contrast is not None:
            return ep_contrast(self.ep_stack(*args, **kwargs))
        return class_forward(self, *args, **kwargs)

    model.ep_stack = types.MethodType(ep_stack, model)
    model.forward = types.MethodType(forward, model)
    model._ep_adapted = True
    return model


def _bind_positional(model: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Positional arguments of the class forward (``model(input_ids, ...)``) as keywords."""
    if not args:
        return kwargs
    names = [p for p in inspect.signature(type(model).forward).parameters if p != "self"]
    return {**dict(zip(names, args)), **kwargs}


def token_inputs(model: nn.Module, args: tuple, kwargs: dict) -> tuple[dict, Tensor, Tensor]:
    """The class-forward arguments as keywords, with the token ids and labels EP needs checked."""
    kw = _bind_positional(model, args, kwargs)
    labels = require_labels(kw.get("labels"))
    if kw.get("inputs_embeds") is not None:
        raise unsupported(model, "EP needs `input_ids` (inputs_embeds are not supported: s_0 must be the token ids)")
    if kw.get("input_ids") is None:
        raise ValueError("`input_ids` is required")
    return kw, kw["input_ids"], labels
