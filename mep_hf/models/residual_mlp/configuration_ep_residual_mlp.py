"""Configuration of the EP residual MLP (pre-norm residual blocks, one EP state per block)."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from ...modeling_utils import TASK_LOSSES


@strict
class EPResidualMLPConfig(PreTrainedConfig):
    """``input → hidden_size`` block, ``num_blocks`` residual blocks ``s + α·act(W·LayerNorm(s) + b)``, then a
    ``LayerNorm → Linear`` head; each block is one EP state.

    Args:
        input_size: flattened input features (784 for MNIST).
        hidden_size: width of the residual stream.
        num_blocks: residual blocks (depth); any number from 1.
        activation: any name in ``transformers.activations.ACT2FN`` (tanh, sigmoid and relu run in closed form).
        branch_scale: α, the residual branch's multiplier; ``None`` = ``1/√num_blocks``, which keeps the
            residual stream's growth independent of depth (see :class:`EPResidualMLPForImageClassification`).
        layer_norm_eps: the layer norms' epsilon.
        loss: task loss nudged by EP and reported by ``forward``: ``"cross_entropy"`` or ``"mse"``.
    """

    model_type = "ep_residual_mlp"

    input_size: int = 784
    hidden_size: int = 64
    num_blocks: int = 10
    activation: str = "tanh"
    branch_scale: float | None = None
    layer_norm_eps: float = 1e-5
    loss: str = "cross_entropy"

    @property
    def residual_scale(self) -> float:
        """α actually used: ``branch_scale``, or ``1/√num_blocks`` when unset."""
        return 1 / math.sqrt(self.num_blocks) if self.branch_scale is None else self.branch_scale

    def describe_architecture(self) -> str:
        """One line for model cards (``mep-hf-zoo package``)."""
        return (f"residual MLP: input block {self.input_size}->{self.hidden_size}, {self.num_blocks} pre-norm residual "
                f"blocks s + {self.residual_scale:.3g}*{self.activation}(W LayerNorm(s) + b), LayerNorm + linear head; "
                "one EP state per block")

    def validate_architecture(self):
        if self.input_size < 1 or self.hidden_size < 1:
            raise ValueError(f"sizes must be positive, got input_size={self.input_size}, "
                             f"hidden_size={self.hidden_size}")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; pick one of transformers' ACT2FN")
        if self.branch_scale is not None and not (math.isfinite(self.branch_scale) and self.branch_scale > 0):
            raise ValueError(f"branch_scale must be a positive finite number (or None for 1/sqrt(num_blocks)), "
                             f"got {self.branch_scale}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.loss not in TASK_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {TASK_LOSSES}")
