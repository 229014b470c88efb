from .configuration_ep_hopfield import EPHopfieldConvNetConfig, EPHopfieldMLPConfig
from .modeling_ep_hopfield import EPHopfieldConvNetForImageClassification, EPHopfieldMLPForImageClassification

__all__ = [
    "EPHopfieldConvNetConfig",
    "EPHopfieldConvNetForImageClassification",
    "EPHopfieldMLPConfig",
    "EPHopfieldMLPForImageClassification",
]
