"""EP-native models, registered with the ``transformers`` Auto classes on import."""

from transformers import AutoConfig, AutoModelForImageClassification

from .mlp import EPMLPConfig, EPMLPForImageClassification

AutoConfig.register(EPMLPConfig.model_type, EPMLPConfig, exist_ok=True)
AutoModelForImageClassification.register(EPMLPConfig, EPMLPForImageClassification, exist_ok=True)

__all__ = ["EPMLPConfig", "EPMLPForImageClassification"]
