"""EP multilayer perceptron for image classification (MNIST-sized inputs)."""

from __future__ import annotations

from torch import Tensor, nn
from transformers import initialization as init
from transformers.activations import ACT2FN

from ...kernels import DenseLinearization
from ...modeling_utils import EPPreTrainedModel, ImageBlockChainMixin, check_features
from .configuration_ep_mlp import EPMLPConfig


class EPDenseBlock(nn.Module):
    """``activation(W s + b)``: one EP block; the output block has no activation (its state holds the logits)."""

    def __init__(self, in_features: int, out_features: int, activation: str | None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.activation = activation
        self.act = ACT2FN[activation] if activation else nn.Identity()

    def forward(self, s: Tensor) -> Tensor:
        return self.act(self.linear(s))

    def ep_linearize(self, s: Tensor) -> DenseLinearization | None:
        """Closed-form state VJP and parameter gradient for the EP engine (autograd where it does not apply)."""
        return DenseLinearization.maybe(self.linear, self.activation, s)


class EPMLPPreTrainedModel(EPPreTrainedModel):
    config_class = EPMLPConfig
    base_model_prefix = "mlp"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module):
        """Glorot-uniform weights and zero biases keep tanh/sigmoid states in their sensitive range at any width."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)


class EPMLPForImageClassification(ImageBlockChainMixin, EPMLPPreTrainedModel):
    """MLP classifier: ``forward`` is the free phase; ``ep_stack`` hands its blocks to the EP engine."""

    def __init__(self, config: EPMLPConfig):
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes, config.num_labels]
        last = len(sizes) - 2
        self.blocks = nn.ModuleList(
            EPDenseBlock(i, o, None if n == last else config.activation)
            for n, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
        )
        self.post_init()

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        return check_features("pixel_values", pixel_values, self.config.input_size, self.dtype)
