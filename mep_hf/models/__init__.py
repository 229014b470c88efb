"""EP-native models, registered with the ``transformers`` Auto classes on import."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoTokenizer,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # the class itself, torchvision or not

from .char_transformer import EPCharTokenizer, EPCharTransformerConfig, EPCharTransformerForCausalLM
from .convnet import EPConvNetConfig, EPConvNetForImageClassification
from .image_processing_ep import EPImageProcessor
from .hopfield import (
    EPHopfieldConvNetConfig,
    EPHopfieldConvNetForImageClassification,
    EPHopfieldMLPConfig,
    EPHopfieldMLPForImageClassification,
)
from .mlp import EPMLPConfig, EPMLPForImageClassification
from .residual_mlp import EPResidualMLPConfig, EPResidualMLPForImageClassification

AutoConfig.register(EPMLPConfig.model_type, EPMLPConfig, exist_ok=True)
AutoModelForImageClassification.register(EPMLPConfig, EPMLPForImageClassification, exist_ok=True)
AutoConfig.register(EPResidualMLPConfig.model_type, EPResidualMLPConfig, exist_ok=True)
AutoModelForImageClassification.register(
    EPResidualMLPConfig, EPResidualMLPForImageClassification, exist_ok=True
)
AutoConfig.register(EPConvNetConfig.model_type, EPConvNetConfig, exist_ok=True)
AutoModelForImageClassification.register(EPConvNetConfig, EPConvNetForImageClassification, exist_ok=True)
AutoConfig.register(EPHopfieldMLPConfig.model_type, EPHopfieldMLPConfig, exist_ok=True)
AutoModelForImageClassification.register(EPHopfieldMLPConfig, EPHopfieldMLPForImageClassification, exist_ok=True)
AutoConfig.register(EPHopfieldConvNetConfig.model_type, EPHopfieldConvNetConfig, exist_ok=True)
AutoModelForImageClassification.register(
    EPHopfieldConvNetConfig, EPHopfieldConvNetForImageClassification, exist_ok=True
)
AutoConfig.register(EPCharTransformerConfig.model_type, EPCharTransformerConfig, exist_ok=True)
AutoModelForCausalLM.register(EPCharTransformerConfig, EPCharTransformerForCausalLM, exist_ok=True)
AutoTokenizer.register(EPCharTransformerConfig, slow_tokenizer_class=EPCharTokenizer, exist_ok=True)
for _config in (EPMLPConfig, EPResidualMLPConfig, EPConvNetConfig, EPHopfieldMLPConfig, EPHopfieldConvNetConfig):
    AutoImageProcessor.register(_config, image_processor_classes={"pil": EPImageProcessor}, exist_ok=True)
    # No video processor, said out loud: pipeline() probes for one, and without this entry it derives
    # "EPVideoProcessor" from the image processor's auto_map and asks whether to run remote code for it.
    AutoVideoProcessor.register(_config, video_processor_classes={}, exist_ok=True)

__all__ = [
    "EPConvNetConfig",
    "EPConvNetForImageClassification",
    "EPImageProcessor",
    "EPHopfieldConvNetConfig",
    "EPHopfieldConvNetForImageClassification",
    "EPHopfieldMLPConfig",
    "EPHopfieldMLPForImageClassification",
    "EPCharTokenizer",
    "EPCharTransformerConfig",
    "EPCharTransformerForCausalLM",
    "EPMLPConfig",
    "EPMLPForImageClassification",
    "EPResidualMLPConfig",
    "EPResidualMLPForImageClassification",
]
