"""EP convolutional network for image classification (CIFAR-10 / MNIST-sized inputs)."""

from __future__ import annotations

from torch import Tensor, nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ImageClassifierOutput

from ...equilibrium import BlockStack, Contrast
from ...modeling_utils import EPPreTrainedModel, check_finite, classification_loss, require_labels
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


class EPConvNetForImageClassification(EPConvNetPreTrainedModel):
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

    def _images(self, pixel_values: Tensor | None) -> Tensor:
        c, n = self.config.num_channels, self.config.image_size
        if pixel_values is None:
            raise ValueError("`pixel_values` is required")
        check_finite("pixel_values", pixel_values)
        if pixel_values.dim() < 2 or pixel_values[0].numel() != c * n * n:
            raise ValueError(
                f"`pixel_values` of shape {tuple(pixel_values.shape)} are not images of shape ({c}, {n}, {n}) "
                "(or flat rows of that many values)"
            )
        return pixel_values.reshape(-1, c, n, n).to(self.dtype)

    def ep_stack(self, pixel_values: Tensor | None = None, labels: Tensor | None = None, **_) -> BlockStack:
        labels = require_labels(labels)
        return BlockStack(
            inputs=self._images(pixel_values),
            blocks=list(self.blocks),
            loss=lambda logits: classification_loss(self.config.loss, logits, labels),
        )

    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        ep_contrast: Contrast | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | Tensor:
        if ep_contrast is not None:
            return ep_contrast(self.ep_stack(pixel_values, labels))
        s = self._images(pixel_values)
        for block in self.blocks:
            s = block(s)
        loss = None if labels is None else classification_loss(self.config.loss, s, labels)
        return ImageClassifierOutput(loss=loss, logits=s)
