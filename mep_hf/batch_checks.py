"""Input checks that turn silent or cryptic failures of a training run into errors that name the problem.

* Token ids or labels out of range: torch raises a bare ``IndexError`` deep in the embedding or the loss (or, on a
  GPU, a device-side assert that poisons the process).
* A batch whose labels are all ignored (-100): its loss is 0/0 = NaN, which the divergence guard would blame on the
  learning rate before any update was made.
* A dataset smaller than one batch with ``dataloader_drop_last=True``: the loop runs 0 steps without a word.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100  # the label the Hugging Face losses skip


def _vocabulary(model: nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "num_embeddings", None)


def _classes(model: nn.Module) -> int | None:
    """How many classes the model's loss takes labels from: the LM head's vocabulary, else ``config.num_labels``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    size = getattr(head, "out_features", None) or getattr(head, "num_embeddings", None)
    if size:
        return size
    config = getattr(model, "config", None)
    if getattr(config, "problem_type", None) in ("regression", "multi_label_classification"):
        return None
    classes = getattr(config, "num_labels", None)
    return classes if classes and classes > 1 else None  # one label: regression, as the Hugging Face heads read it


def check_batch(model: nn.Module, inputs: dict) -> None:
    """Refuse a token task's training batch whose ``input_ids`` or integer ``labels`` are out of the model's range,
    or whose labels are all ``-100``, naming the values and the model's range (one device sync for all checks)."""
    ids, labels = inputs.get("input_ids"), inputs.get("labels")
    if not (torch.is_tensor(ids) and ids.numel()):
        return  # a token task's batch; other models check their inputs in their ep_stack (modeling_utils)
    vocab = _vocabulary(model)
    classes = _classes(model) if torch.is_tensor(labels) and labels.numel() and not labels.is_floating_point() else None
    stats = []
    if vocab is not None:
        stats += [ids.min(), ids.max()]
    if classes is not None:
        kept = labels != IGNORE_INDEX
        stats += [kept.sum(), torch.where(kept, labels, labels.new_tensor(0)).min(),
                  torch.where(kept, labels, labels.new_tensor(0)).max()]
    if not stats:
        return
    values = torch.stack([s.to(torch.int64) for s in stats]).tolist()
    if vocab is not None:
        low, high = values[:2]
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids hold {low if low < 0 else high}, outside the model's vocabulary of {vocab} "
                             f"ids (0..{vocab - 1}): the tokenizer does not match the model (resize the embeddings "
                             "with model.resize_token_embeddings(len(tokenizer)), or use the model's own tokenizer)")
        values = values[2:]
    if classes is not None:
        count, low, high = values
        if count == 0:
            raise ValueError(f"every label in this batch is {IGNORE_INDEX} (ignored): there is nothing to learn from "
                             "and its loss is 0/0. Check the collator's masking and the truncation (a prompt longer "
                             "than max_length leaves no completion token), or drop such examples")
        if low < 0 or high >= classes:
            raise ValueError(f"labels hold {low if low < 0 else high}, outside the model's {classes} classes "
                             f"(0..{classes - 1}; {IGNORE_INDEX} marks a position to ignore): check the label "
                             "encoding, or the model's num_labels / vocabulary")


def check_dataset_fills_a_batch(dataset, args) -> None:
    """With ``dataloader_drop_last=True`` a dataset smaller than one global batch yields no batch at all."""
    if not args.dataloader_drop_last or dataset is None or not hasattr(dataset, "__len__"):
        return
    batch = args.per_device_train_batch_size * max(1, args.world_size)
    if len(dataset) < batch:
        raise ValueError(
            f"train_dataset has {len(dataset)} examples, fewer than one batch ({args.per_device_train_batch_size} per "
            f"device x {max(1, args.world_size)} processes), and dataloader_drop_last=True drops that incomplete "
            "batch: training would run 0 steps. Lower per_device_train_batch_size or set dataloader_drop_last=False"
        )
