"""EP residual MLP for image classification: deep pre-norm residual stacks, one EP state per block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from ...kernels import ResidualDenseLinearization
from ...modeling_utils import ImageBlockChainMixin, check_features
from ..mlp.modeling_ep_mlp import EPDenseBlock, EPMLPPreTrainedModel
from .configuration_ep_residual_mlp import EPResidualMLPConfig


class EPResidualBlock(nn.Module):
    """``s + α·act(W·LayerNorm(s) + b)``: one EP block.

    One Linear per branch (not Linear→act→Linear): half the matmuls per block, and every branch stays trainable
    from a random init. The layer norm has no affine parameters: its gain and shift would fold into ``W`` and
    ``b``, so they add parameters and work but no functions.
    """

    def __init__(self, hidden_size: int, activation: str, scale: float, eps: float):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        self.activation, self.scale, self.eps = activation, scale, eps
        self.act = ACT2FN[activation]

    def forward(self, s: Tensor) -> Tensor:
        normed = F.layer_norm(s, (s.shape[-1],), eps=self.eps)
        return torch.add(s, self.act(self.linear(normed)), alpha=self.scale)

    def ep_linearize(self, s: Tensor) -> ResidualDenseLinearization | None:
        """Closed-form state VJP and parameter gradient for the EP engine (autograd where it does not apply)."""
        return ResidualDenseLinearization.maybe(self.linear, self.activation, self.scale, self.eps, s)


class EPResidualHead(nn.Module):
    """``W·LayerNorm(s) + b``: the output block, whose state holds the logits."""

    def __init__(self, hidden_size: int, num_labels: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(self.norm(s))


class EPResidualMLPPreTrainedModel(EPMLPPreTrainedModel):
    """The MLP's initialization (Glorot-uniform weights, zero biases). A branch ``act(W·LN(s))`` then has O(1)
    entries whatever the width; scaled by α = 1/√depth, the sum of ``num_blocks`` of them (random-signed at init)
    moves the residual stream by O(1) at any depth, and each block's Jacobian is ``I + O(1/√depth)``, so the product
    of 10,000 of them neither explodes nor vanishes. A zero-initialized branch would be stable too, but every block
    would then see the same state and get the same gradient, and stay identical for ever."""

    config_class = EPResidualMLPConfig
    base_model_prefix = "residual_mlp"


class EPResidualMLPForImageClassification(ImageBlockChainMixin, EPResidualMLPPreTrainedModel):
    """Residual MLP classifier: ``blocks`` = input block, ``num_blocks`` residual blocks, head (the EP chain)."""

    def __init__(self, config: EPResidualMLPConfig):
        super().__init__(config)
        scale, eps = config.residual_scale, config.layer_norm_eps
        self.blocks = nn.ModuleList(
            [
                EPDenseBlock(config.input_size, config.hidden_size, config.activation),
                *(EPResidualBlock(config.hidden_size, config.activation, scale, eps) for _ in range(config.num_blocks)),
                EPResidualHead(config.hidden_size, config.num_labels, eps),
            ]
        )
        self.post_init()

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        return check_features("pixel_values", pixel_values, self.config.input_size, self.dtype)
