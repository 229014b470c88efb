from .configuration_ep_convnet import EPConvNetConfig
from .modeling_ep_convnet import EPConvNetForImageClassification

__all__ = ["EPConvNetConfig", "EPConvNetForImageClassification"]
