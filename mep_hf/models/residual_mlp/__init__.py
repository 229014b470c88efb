from .configuration_ep_residual_mlp import EPResidualMLPConfig
from .modeling_ep_residual_mlp import EPResidualMLPForImageClassification

__all__ = ["EPResidualMLPConfig", "EPResidualMLPForImageClassification"]
