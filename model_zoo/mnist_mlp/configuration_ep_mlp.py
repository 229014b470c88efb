"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.modeling_utils`, `mep_hf.models.mlp.configuration_ep_mlp`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

from dataclasses import field
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN


TASK_LOSSES = ("cross_entropy", "mse")


@strict
class EPMLPConfig(PreTrainedConfig):
    """An MLP ``input → hidden_sizes → num_labels``; each Linear(+activation) is one EP block.

    Args:
        input_size: flattened input features (784 for MNIST).
        hidden_sizes: widths of the hidden blocks.
        activation: any name in ``transformers.activations.ACT2FN``.
        loss: task loss nudged by EP and reported by ``forward``: ``"cross_entropy"`` or ``"mse"``.
    """

    model_type = "ep_mlp"

    input_size: int = 784
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 1024])
    activation: str = "tanh"
    loss: str = "cross_entropy"

    def describe_architecture(self) -> str:
        """One line for model cards (``mep-hf-zoo package``)."""
        sizes = [self.input_size, *self.hidden_sizes, self.num_labels]
        return f"MLP {'-'.join(map(str, sizes))}, {self.activation}, each Linear(+activation) one EP block"

    def validate_architecture(self):
        if self.input_size < 1 or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"sizes must be positive, got input_size={self.input_size}, hidden={self.hidden_sizes}")
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; pick one of transformers' ACT2FN")
        if self.loss not in TASK_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {TASK_LOSSES}")
