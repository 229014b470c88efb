"""Pieces every EP-native model shares: the base class, the task losses EP can nudge with, and input checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from .equilibrium import BlockStack

TASK_LOSSES = ("cross_entropy", "mse")


def classification_loss(kind: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Batch-mean loss of class ``labels`` given output ``logits``; ``mse`` compares with one-hot targets."""
    num_labels = logits.shape[-1]
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the batch needs {tuple(logits.shape[:-1])}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels - 1}], got values in [{labels.min()}, {labels.max()}]")
    if kind == "cross_entropy":
        return F.cross_entropy(logits.float(), labels)
    if kind == "mse":
        target = F.one_hot(labels, num_labels).to(logits.dtype)
        return 0.5 * (logits.float() - target).pow(2).sum(-1).mean()
    raise ValueError(f"unknown loss {kind!r}; expected one of {TASK_LOSSES}")


def require_labels(labels: Tensor | None) -> Tensor:
    """EP nudges the output towards the labels, so a training batch without them is an error."""
    if labels is None:
        raise ValueError("EP training needs `labels` in every batch: the nudged phase pulls the output towards them")
    return labels


def check_finite(name: str, tensor: Tensor) -> Tensor:
    if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or inf")
    return tensor


class EPPreTrainedModel(PreTrainedModel):
    """Base of every EP-native model: ``ep_stack(**inputs)`` gives the EP engine the blocks of a batch, and
    ``forward(..., ep_contrast=c)`` returns ``c(self.ep_stack(...))`` so the contrast runs inside (DDP's) forward."""

    def ep_stack(self, **inputs) -> BlockStack:
        raise NotImplementedError(f"{type(self).__name__} must define ep_stack(**inputs) -> BlockStack")
