"""What every stock-model adapter shares: attaching EP to one model *instance* without touching its class, the
batch checks, and attribute paths.

``attach_ep`` gives the instance two things, leaving its class alone so that ``save_pretrained``,
``from_pretrained`` with the stock class, the Auto classes and peft keep working:

* ``model.ep_stack(**batch) -> BlockStack``;
* ``model.forward``: the class's forward routed by :func:`~mep_hf.block_stack.routes_ep_contrast`, as every
  EP-native model's is: with ``ep_contrast=c`` it returns ``c(model.ep_stack(...))`` (so the contrast runs inside
  DDP's forward, and inside peft's); without it, the class's own forward, unchanged.

The contrast's ``ep_stack`` call replays the dropout masks of the step's first call
(:mod:`mep_hf.adapters.dropout`), under the instance's ``ep_contrast_context``.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Callable

from torch import Tensor, nn
from transformers.utils import logging

from ..block_stack import routes_ep_contrast
from ..modeling_utils import require_labels
from .dropout import active_dropout

logger = logging.get_logger(__name__)

# Arguments of stock forwards that have no meaning in an EP training step, refused when set (None / False pass).
REFUSED_INPUTS = {
    "inputs_embeds": "EP needs the token ids: s_0 is `input_ids` (inputs_embeds are not supported)",
    "decoder_inputs_embeds": "EP needs the decoder's token ids (decoder_inputs_embeds are not supported)",
    "encoder_outputs": "EP runs the encoder as part of its block stack (encoder_outputs are not supported)",
    "cache": "a key/value cache has no place in an EP training step",
    "past_key_values": "a key/value cache has no place in an EP training step",
    "use_cache": "a key/value cache (use_cache=True) has no place in an EP training step",
    "encoder_hidden_states": "cross-attention (encoder_hidden_states) is not supported",
    "encoder_attention_mask": "cross-attention (encoder_attention_mask) is not supported",
    "bool_masked_pos": "masked-image inputs (bool_masked_pos) are not supported",
    "logits_to_keep": "EP nudges every output position, so logits_to_keep must be 0",
    "head_mask": "head_mask is not supported",
}


def unsupported(model: nn.Module, what: str) -> TypeError:
    return TypeError(f"{type(model).__name__} cannot be trained by EP: {what}")


def resolve(obj, path: str):
    """``obj.a.b`` for ``path="a.b"``."""
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def has_path(obj, path: str) -> bool:
    try:
        return resolve(obj, path) is not None
    except AttributeError:
        return False


def attach_ep(model: nn.Module, ep_stack: Callable) -> nn.Module:
    """Give ``model`` (this instance only) an ``ep_stack`` method and a forward that accepts ``ep_contrast=``.

    Idempotent: a model already adapted is returned unchanged.
    """
    if getattr(model, "_ep_adapted", False):
        return model
    model.ep_stack = types.MethodType(ep_stack, model)
    model.ep_contrast_context = types.MethodType(_replaying_dropout, model)
    model.forward = types.MethodType(routes_ep_contrast(type(model).forward), model)
    model._ep_adapted = True
    model._ep_replay_dropout = False
    # The adapter shares one dropout mask per step across phases, so the EP step may run in train mode.
    model.ep_shares_dropout = True
    return model


@contextlib.contextmanager
def _replaying_dropout(model: nn.Module):
    """The contrast re-evaluates this step's phases: its ``ep_stack`` call replays the same dropout masks."""
    _say_if_dropout_is_off(model)
    model._ep_replay_dropout = True
    try:
        yield
    finally:
        model._ep_replay_dropout = False


def replaying(model: nn.Module) -> bool:
    """Whether this ``ep_stack`` call is the contrast's, which replays the step's dropout masks."""
    return getattr(model, "_ep_replay_dropout", False)


def _say_if_dropout_is_off(model: nn.Module) -> None:
    """An EP step of a model in eval mode runs without its configured dropout: say so once, and why."""
    if model.training or getattr(model, "_ep_said_dropout_off", False):
        return
    found = active_dropout(model)
    model._ep_said_dropout_off = True
    if found:
        shown = ", ".join(f"{k}={v:g}" for k, v in list(found.items())[:4]) + (", ..." if len(found) > 4 else "")
        logger.warning(
            f"EP training step of {type(model).__name__} in eval mode: its dropout ({shown}) is OFF in these steps. "
            "EP needs every phase of a step to evaluate the same network; this adapter can share one dropout mask "
            "per step across phases, but only when the trainer runs the step in train mode."
        )


def bind_inputs(model: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The class-forward arguments as keywords (``model(input_ids, ...)`` works too), refusing what EP can't use."""
    if args:
        names = [p for p in inspect.signature(type(model).forward).parameters if p != "self"]
        kwargs = {**dict(zip(names, args)), **kwargs}
    for name, why in REFUSED_INPUTS.items():
        value = kwargs.get(name)
        if value is not None and value is not False and not (name == "logits_to_keep" and value == 0):
            raise unsupported(model, why)
    return kwargs


def main_input(model: nn.Module, kw: dict, name: str) -> tuple[Tensor, Tensor]:
    """The batch's ``name`` (``input_ids`` / ``pixel_values``) and its labels, checked."""
    labels = require_labels(kw.get("labels"))
    x = kw.get(name)
    if x is None:
        raise ValueError(f"`{name}` is required")
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (0 examples); EP needs at least one example per step")
    return x, labels


def call_with_accepted(module: nn.Module, **kwargs):
    """``module(**kwargs)`` with only the keywords its forward names (``None`` values dropped): embedding modules
    differ in what they take (DistilBERT's has no token types)."""
    params = inspect.signature(module.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return module(**{k: v for k, v in kwargs.items() if v is not None and (takes_any or k in params)})
