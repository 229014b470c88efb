"""The adapter registry: families (how a shape of model becomes an EP stack) and the ``model_type`` table (which
family each stock model belongs to, where its pieces live, and its heads), and :func:`prepare_ep_model`.

A family is a class with ``name``, ``Layout`` (a frozen dataclass of attribute paths), ``check(model, layout,
head)`` and ``ep_stack(model, layout, head, args, kwargs)``; each family module calls
:func:`register_adapter_family` on import. A model type is one row of :data:`MODEL_TYPES`:
``ModelType(family, layout, heads)``, where ``layout`` holds the keyword arguments of the family's ``Layout`` and
``heads`` the :class:`~mep_hf.adapters.heads.Head` pieces it supports; :func:`register_model_type` adds a row.
Both refuse duplicates. ``docs/adding_a_family.md`` walks through adding either.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from .base import attach_ep, unsupported
from .heads import (
    CAUSAL_LM,
    FIRST_TOKEN_IMAGE_CLASSIFICATION,
    LAST_TOKEN_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    TOKEN_CLASSIFICATION_SCORE,
    Head,
    task_class_name,
)

FAMILIES: dict[str, type] = {}


def register_adapter_family(family: type) -> type:
    """Register an adapter family class under ``family.name`` (refuses a name taken by another class)."""
    for attr in ("name", "Layout", "check", "ep_stack"):
        if not hasattr(family, attr):
            raise TypeError(f"an adapter family needs `{attr}`; {family.__name__} has none")
    taken = FAMILIES.get(family.name)
    if taken is not None and taken is not family:
        raise ValueError(f"adapter family {family.name!r} is already registered ({taken.__module__}.{taken.__name__})")
    FAMILIES[family.name] = family
    return family


@dataclass(frozen=True)
class ModelType:
    """One row of the table: a model type's family, its layout (``family.Layout`` keywords) and its heads."""

    family: str
    layout: Mapping[str, Any] = field(default_factory=dict)
    heads: tuple[Head, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "layout", MappingProxyType(dict(self.layout)))
        tasks = [h.task for h in self.heads]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a model type has one head per task, got {tasks}")


# ------------------------------------------------------------------------------------------------ the table
_DECODER_HEADS = (CAUSAL_LM, LAST_TOKEN_CLASSIFICATION, TOKEN_CLASSIFICATION_SCORE)
_BERT_CLASSIFIER = Head("sequence-classification", ("bert.pooler", "dropout", "classifier"), "problem_type")
_HEAD_CLASSIFIER = Head("sequence-classification", ("classifier",), "problem_type")  # RoBERTa/ELECTRA heads pool
_ROBERTA_HEADS = (_HEAD_CLASSIFIER, TOKEN_CLASSIFICATION, Head("masked-lm", ("lm_head",), "cross_entropy"))

MODEL_TYPES: dict[str, ModelType] = {
    # decoder-only language models
    "llama": ModelType("decoder", {}, _DECODER_HEADS),
    "mistral": ModelType("decoder", {"mask": "sliding"}, _DECODER_HEADS),
    "qwen2": ModelType("decoder", {"mask": "layer_types"}, _DECODER_HEADS),
    "qwen3": ModelType("decoder", {"mask": "layer_types"}, _DECODER_HEADS),
    "smollm3": ModelType("decoder", {"mask": "layer_types"}, _DECODER_HEADS),
    "gemma": ModelType("decoder", {}, _DECODER_HEADS),
    "gemma2": ModelType(
        "decoder",
        {"mask": "layer_types"},
        (Head("causal-lm", ("lm_head", ":softcap"), "lm"), LAST_TOKEN_CLASSIFICATION, TOKEN_CLASSIFICATION_SCORE),
    ),
    "phi3": ModelType("decoder", {"mask": "sliding"}, _DECODER_HEADS),
    "phi": ModelType("decoder", {"norm": "final_layernorm", "embed_dropout": "embed_dropout"}, _DECODER_HEADS),
    "starcoder2": ModelType("decoder", {"mask": "sliding", "embed_dropout": "embedding_dropout"}, _DECODER_HEADS),
    "olmo": ModelType("decoder", {}, (CAUSAL_LM, LAST_TOKEN_CLASSIFICATION)),
    "olmo2": ModelType("decoder", {}, (CAUSAL_LM, LAST_TOKEN_CLASSIFICATION)),
    "gpt_neox": ModelType(
        "decoder",
        {"base": "gpt_neox", "embed": "embed_in", "norm": "final_layer_norm", "embed_dropout": "emb_dropout"},
        (CAUSAL_LM, LAST_TOKEN_CLASSIFICATION, Head("token-classification", ("dropout", "classifier"), "token")),
    ),
    "gpt2": ModelType(
        "decoder",
        {"base": "transformer", "embed": "wte", "positions": "wpe", "token_types": "wte", "embed_dropout": "drop",
         "layers": "h", "norm": "ln_f", "rotary": None},
        (CAUSAL_LM, Head("sequence-classification", ("score", ":last_token"), "problem_type"), TOKEN_CLASSIFICATION),
    ),
    # BERT-style text encoders
    "bert": ModelType(
        "encoder", {"base": "bert"}, (_BERT_CLASSIFIER, TOKEN_CLASSIFICATION, Head("masked-lm", ("cls",), "cross_entropy"))
    ),
    "roberta": ModelType("encoder", {"base": "roberta"}, _ROBERTA_HEADS),
    "xlm-roberta": ModelType("encoder", {"base": "roberta"}, _ROBERTA_HEADS),
    "camembert": ModelType("encoder", {"base": "roberta"}, _ROBERTA_HEADS),
    "electra": ModelType(
        "encoder",
        {"base": "electra", "embed_project": "embeddings_project"},
        (_HEAD_CLASSIFIER, TOKEN_CLASSIFICATION,
         Head("masked-lm", ("generator_predictions", "generator_lm_head"), "cross_entropy")),
    ),
    "distilbert": ModelType(
        "encoder",
        {"base": "distilbert", "layers": "transformer.layer"},
        (
            Head("sequence-classification", (":first_token", "pre_classifier", ":relu", "dropout", "classifier"),
                 "problem_type"),
            TOKEN_CLASSIFICATION,
            Head("masked-lm", ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"), "cross_entropy"),
        ),
    ),
    # ViT-style image encoders
    "vit": ModelType("vision", {"base": "vit"}, (FIRST_TOKEN_IMAGE_CLASSIFICATION,)),
    "deit": ModelType("vision", {"base": "deit"}, (FIRST_TOKEN_IMAGE_CLASSIFICATION,)),
    "dinov2": ModelType(
        "vision",
        {"base": "dinov2", "layers": "encoder.layer"},
        (Head("image-classification", (":cls_and_mean_patch", "classifier"), "image"),),
    ),
}


def register_model_type(model_type: str, row: ModelType) -> None:
    """Add a row to :data:`MODEL_TYPES` (refuses a model type already there)."""
    if model_type in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} already has an EP adapter row")
    MODEL_TYPES[model_type] = row


def supported_classes(model_type: str) -> list[str]:
    """The transformers class names EP adapts for ``model_type``, one per head."""
    row = MODEL_TYPES[model_type]
    return [name for name in (task_class_name(h.task, model_type) for h in row.heads) if name]


def supported_models() -> dict[str, list[str]]:
    """Every registered ``model_type`` with the stock classes (heads) EP trains for it."""
    return {t: supported_classes(t) for t in sorted(MODEL_TYPES)}


# ------------------------------------------------------------------------------------------------ entry point
def prepare_ep_model(model: nn.Module) -> nn.Module:
    """``model`` ready for ``EPTrainer``: EP-native models and adapted ones unchanged, stock models of a registered
    type adapted in place (a peft model: its base model), anything else refused with the reason."""
    if callable(getattr(model, "ep_stack", None)):
        return model
    target = _peft_base(model)
    config = getattr(target, "config", None)
    model_type = getattr(config, "model_type", None)
    row = MODEL_TYPES.get(model_type)
    found = None if row is None else _head_for(target, model_type, row)
    if found is None:
        return _adapt_by_structure(model, target, model_type, row)
    head, stock = found
    _refuse_overridden_forward(target, stock)
    missing = head.missing(target)
    if missing:
        raise unsupported(target, f"its {head.task} head lacks {missing} (the {model_type} EP head reads them)")
    _refuse_checkpointing(target)
    family = FAMILIES[row.family]
    layout = family.Layout(**row.layout)
    family.check(target, layout, head)

    def ep_stack(self, *args, **kwargs):
        return family.ep_stack(self, layout, head, args, kwargs)

    functools.update_wrapper(ep_stack, family.ep_stack, assigned=("__doc__",))
    attach_ep(target, ep_stack)
    return model


def _head_for(model: nn.Module, model_type: str, row: ModelType) -> tuple[Head, type] | None:
    """The row's head for the model's class (the stock transformers class in its MRO), if the row has one."""
    for cls in type(model).__mro__:
        if not cls.__module__.startswith("transformers."):
            continue
        for head in row.heads:
            if task_class_name(head.task, model_type) == cls.__name__:
                return head, cls
    return None


def _adapt_by_structure(model: nn.Module, target: nn.Module, model_type: str | None, row: ModelType | None):
    """A model the table does not cover, adapted by its structure (:mod:`mep_hf.adapters.traced`), or refused with
    what failed."""
    from .traced import DoesNotFit, trace_structure

    name = type(target).__name__
    stock = next((c for c in type(target).__mro__ if c.__module__.startswith("transformers.models.")), None)
    if stock is None:
        raise TypeError(f"{name} cannot be split into EP blocks: it has no `ep_stack(**inputs)` method and is no "
                        f"transformers model (model_type={model_type!r}). {_what_is_supported()}")
    _refuse_overridden_forward(target, stock)
    _refuse_checkpointing(target)
    covered = "" if row is None else f" (the {model_type} row covers {', '.join(supported_classes(model_type))})"
    try:
        structure = trace_structure(target)
    except DoesNotFit as err:
        raise TypeError(f"{name} cannot be split into EP blocks: no adapter row fits model_type={model_type!r}"
                        f"{covered}, and the structural adapter does not fit: {err}. {_what_is_supported()}") from None

    def ep_stack(self, *args, **kwargs):
        return structure.ep_stack(self, args, kwargs)

    attach_ep(target, ep_stack)
    return model


def _refuse_overridden_forward(model: nn.Module, stock: type) -> None:
    if type(model).forward is not stock.forward:
        raise unsupported(model, f"it overrides {stock.__name__}.forward, so EP cannot know the loss it computes; "
                                 f"adapt the stock class, or give {type(model).__name__} its own `ep_stack`")


def _what_is_supported() -> str:
    return (f"EP adapters exist for: {_supported_text()}, and for transformers models whose layers run from one "
            "layer list. Use an EP model from mep_hf.models, or add a model type / family (docs/adding_a_family.md).")


def _refuse_checkpointing(model: nn.Module) -> None:
    checkpointing = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else (
        "is_gradient_checkpointing")
    if getattr(model, checkpointing, False):
        raise unsupported(model, "gradient checkpointing is pointless under EP (no backprop graph); disable it")


def _peft_base(model: nn.Module) -> nn.Module:
    """A peft model's underlying transformers model (LoRA layers injected in place), refusing prompt learning."""
    get_base = getattr(model, "get_base_model", None)
    if get_base is None or not hasattr(model, "peft_config"):
        return model
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        raise TypeError(
            f"{type(model).__name__} uses prompt learning ({config.peft_type}): its virtual tokens are not part of "
            "an EP block stack. LoRA and other adapters that wrap layers in place are supported."
        )
    return get_base()


def _supported_text() -> str:
    return "; ".join(f"{t} ({', '.join(c)})" for t, c in supported_models().items())
