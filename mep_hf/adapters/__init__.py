"""Turn stock Hugging Face models into EP block stacks, so ``EPTrainer(model=<stock model>)`` just works.

``prepare_ep_model`` returns EP-native models unchanged, adapts the stock architectures registered in
``ADAPTERS`` (keyed by ``config.model_type``), and refuses anything else with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ADAPTERS: dict[str, Callable[[nn.Module], nn.Module]] = {}


def prepare_ep_model(model: nn.Module) -> nn.Module:
    if callable(getattr(model, "ep_stack", None)):
        return model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type](model)
    supported = ", ".join(sorted(ADAPTERS)) or "none yet"
    raise TypeError(
        f"{type(model).__name__} cannot be split into EP blocks: it has no `ep_stack(**inputs)` method and no "
        f"adapter is registered for model_type={model_type!r} (adapters exist for: {supported}). "
        "Use an EP model from mep_hf.models, or register an adapter in mep_hf.adapters.ADAPTERS."
    )


from .bert import adapt_bert  # noqa: E402
from .gpt2 import adapt_gpt2  # noqa: E402

ADAPTERS.update({"gpt2": adapt_gpt2, "bert": adapt_bert})
