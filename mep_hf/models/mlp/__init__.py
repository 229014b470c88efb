from .configuration_ep_mlp import EPMLPConfig
from .modeling_ep_mlp import EPMLPForImageClassification

__all__ = ["EPMLPConfig", "EPMLPForImageClassification"]
