"""EP convolutional network for image classification (CIFAR-10 / MNIST-sized inputs)."""

from __future__ import annotations

from torch import Tensor, nn
from transformers.activations import ACT2FN

from ...modeling_utils import EPPreTrainedModel, ImageBlockChainMixin, check_features
from .configuration_ep_convnet import EPConvNetConfig


class EPConvBlock(nn.Module):
    """``pool(activation(conv(s)))``: one EP block."""

    def __init__(self, in_channels: int, out_channels: int, config: EPConvNetConfig):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, config.kernel_size, padding=config.kernel_size // 2)
        self.act = ACT2FN[config.activation]
        self.pool = nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2)

    def forward(self, s: Tensor) -> Tensor:
        return self.pool(self.act(self.conv(s)))


class EPReadout(nn.Module):
    """Flatten + linear: the output block, whose state holds the logits."""

    def __init__(self, in_features: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_labels)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(s.flatten(1))


class EPConvNetPreTrainedModel(EPPreTrainedModel):
    config_class = EPConvNetConfig
    base_model_prefix = "convnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)


class EPConvNetForImageClassification(ImageBlockChainMixin, EPConvNetPreTrainedModel):
    """Conv classifier: ``forward`` is the free phase; ``ep_stack`` hands its blocks to the EP engine."""

    def __init__(self, config: EPConvNetConfig):
        super().__init__(config)
        widths = [config.num_channels, *config.channels]
        side = config.image_size // 2 ** len(config.channels)
        self.blocks = nn.ModuleList(
            [EPConvBlock(i, o, config) for i, o in zip(widths[:-1], widths[1:])]
            + [EPReadout(widths[-1] * side * side, config.num_labels)]
        )
        self.post_init()

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        """Images ``(num_channels, image_size, image_size)``, or flat rows of that many values."""
        c, n = self.config.num_channels, self.config.image_size
        return check_features("pixel_values", pixel_values, c * n * n, self.dtype).reshape(-1, c, n, n)
