"""Turn stock Hugging Face models into EP block stacks, so ``EPTrainer(model=<stock model>)`` just works.

Adapters go by family, not by model: a family module (``decoder``, ``encoder``, ``vision``) turns a declared layout
(embedding, layer list, final norm, mask rule) into a :class:`~mep_hf.equilibrium.BlockStack`; a head
(:mod:`mep_hf.adapters.heads`) is the small piece on top. ``registry.MODEL_TYPES`` gives each ``model_type`` its
family, layout and heads. :func:`prepare_ep_model` (called by ``EPTrainer.__init__``) returns EP-native models
unchanged, adapts registered stock models (and the base model of a peft model) in place, and refuses anything else,
naming the class and listing what is supported.
"""

from .registry import (
    FAMILIES,
    MODEL_TYPES,
    ModelType,
    prepare_ep_model,
    register_adapter_family,
    register_model_type,
    supported_classes,
    supported_models,
)
from . import decoder, encoder, vision  # noqa: E402,F401  (each registers its family)
from .heads import Head

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "Head",
    "ModelType",
    "prepare_ep_model",
    "register_adapter_family",
    "register_model_type",
    "supported_classes",
    "supported_models",
]
