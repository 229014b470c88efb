"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.modeling_utils`, `mep_hf.models.convnet.configuration_ep_convnet`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

from dataclasses import field
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN


TASK_LOSSES = ("cross_entropy", "mse")


POOLS = ("max", "avg")


@strict
class EPConvNetConfig(PreTrainedConfig):
    """Conv blocks ``conv(k×k, same padding) → activation → 2×2 pool``, then a linear read-out; each is one EP block.

    Args:
        num_channels, image_size: input images are ``(num_channels, image_size, image_size)``; flat rows of that
            many values are accepted too (the bundled MNIST is stored flat).
        channels: output channels of each conv block (each halves the spatial size).
        kernel_size: conv kernel size (odd).
        activation: any name in ``transformers.activations.ACT2FN``.
        pool: ``"max"`` (as in the EP conv literature) or ``"avg"``.
        loss: ``"cross_entropy"`` or ``"mse"``.
    """

    model_type = "ep_convnet"

    num_channels: int = 3
    image_size: int = 32
    channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 3
    activation: str = "gelu"
    pool: str = "max"
    loss: str = "cross_entropy"

    def describe_architecture(self) -> str:
        """One line for model cards (``mep-hf-zoo package``)."""
        return (f"conv net: {len(self.channels)} blocks conv{self.kernel_size}x{self.kernel_size} "
                f"({', '.join(map(str, self.channels))} channels) + {self.activation} + {self.pool} pool, "
                f"then a linear read-out; input {self.num_channels}x{self.image_size}x{self.image_size}")

    def validate_architecture(self):
        if self.num_channels < 1 or any(c < 1 for c in self.channels) or not self.channels:
            raise ValueError(f"channels must be positive and non-empty, got {self.num_channels}, {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.channels)} (one pool per block)")
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; pick one of transformers' ACT2FN")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; expected one of {POOLS}")
        if self.loss not in TASK_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {TASK_LOSSES}")
