"""Continual-learning task sequences on MNIST, as lists of ``datasets.DatasetDict`` (one per task).

* :func:`permuted_mnist` -- every task is all of MNIST with its pixels shuffled by a fixed permutation; task 0 keeps
  the identity, task ``t > 0`` uses the ``t``-th draw of ``numpy.random.default_rng(seed).permutation(784)``. The
  permutation is applied lazily (``with_transform``), so no task is copied to disk.
* :func:`split_mnist` -- five two-class tasks, digits (0, 1), (2, 3), ..., (8, 9), each MNIST's rows of those digits
  (``filter``). Labels stay the global digits. ``scenario="class"`` (class-incremental): one 10-way head, no task
  identity at test time. ``scenario="task"`` (task-incremental): the task is known, so the loss and the predictions
  only compare the task's two classes: :meth:`TaskSequence.trainer_kwargs` hands ``Trainer`` a
  ``compute_loss_func`` and a ``preprocess_logits_for_metrics`` that mask the other logits. ``EPTrainer`` nudges with
  ``Trainer.compute_loss``, so EP trains on the same masked loss.

Splits are :func:`~mep_hf.data.load_mnist`'s (train 50000 / validation 10000 / test 10000).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import datasets

from .mnist import IMAGE_SIZE, load_mnist

__all__ = ["TaskSequence", "permuted_mnist", "split_mnist", "SPLIT_MNIST_CLASSES", "SCENARIOS"]

SPLIT_MNIST_CLASSES = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
SCENARIOS = ("class", "task")


@dataclass(frozen=True)
class TaskSequence:
    """Tasks in training order, with what a ``Trainer`` needs to train and evaluate them.

    ``task_classes``: in task-incremental sequences, the classes of each task (the other logits are masked); ``None``
    when every task uses the whole head.
    """

    name: str
    tasks: list[datasets.DatasetDict]
    task_classes: tuple[tuple[int, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> datasets.DatasetDict:
        return self.tasks[index]

    def __iter__(self):
        return iter(self.tasks)

    def trainer_kwargs(self) -> dict:
        """``compute_loss_func`` / ``preprocess_logits_for_metrics`` for ``Trainer`` (empty if nothing is masked)."""
        if self.task_classes is None:
            return {}
        mask = TaskLogitMask(self.task_classes)
        return {"compute_loss_func": mask.loss, "preprocess_logits_for_metrics": mask.logits}


class TaskLogitMask:
    """Task-incremental masking: each example's logits outside its task's classes are set to the dtype's minimum.

    The tasks partition the classes, so an example's task is the one that holds its label: the task identity that
    task-incremental evaluation is given. Both hooks are the Trainer's own (``compute_loss_func``,
    ``preprocess_logits_for_metrics``); the loss is cross-entropy normalised by ``num_items_in_batch`` when
    Trainer gives it (its gradient-accumulation contract), else the batch mean.
    """

    def __init__(self, task_classes: tuple[tuple[int, ...], ...]):
        num_classes = 1 + max(c for classes in task_classes for c in classes)
        allowed = torch.zeros(num_classes, num_classes, dtype=torch.bool)  # allowed[label] = its task's classes
        for classes in task_classes:
            for c in classes:
                allowed[c, list(classes)] = True
        self.allowed = allowed

    def logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, tuple):
            logits = logits[0]
        keep = self.allowed.to(logits.device)[labels]
        return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)

    def loss(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = self.logits(outputs["logits"], labels)
        if num_items_in_batch is None:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch


def _permute(permutation: np.ndarray):
    index = torch.from_numpy(permutation)

    def transform(batch: dict) -> dict:
        pixels = torch.as_tensor(np.asarray(batch["pixel_values"], dtype=np.float32))
        return {"pixel_values": pixels[:, index], "labels": torch.as_tensor(batch["labels"])}

    return transform


def permuted_mnist(num_tasks: int = 5, seed: int = 0, source=None, cache_dir=None) -> TaskSequence:
    """``num_tasks`` permuted-MNIST tasks (task 0 unpermuted; see the module docstring for the seeds).

    Rows come back as torch tensors (``with_transform``); ``select``/``shuffle`` keep the transform.
    """
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    mnist = load_mnist(source, cache_dir=cache_dir)
    rng = np.random.default_rng(seed)
    permutations = [np.arange(IMAGE_SIZE)] + [rng.permutation(IMAGE_SIZE) for _ in range(num_tasks - 1)]
    tasks = [mnist.with_transform(_permute(p)) for p in permutations]
    return TaskSequence(f"permuted_mnist_{num_tasks}", tasks)


def split_mnist(scenario: str = "class", source=None, cache_dir=None) -> TaskSequence:
    """Five two-class MNIST tasks (digits 0/1, 2/3, ..., 8/9), class- or task-incremental."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    mnist = load_mnist(source, cache_dir=cache_dir)
    tasks = [
        mnist.filter(lambda labels, keep=classes: np.isin(labels, keep), input_columns="labels", batched=True)
        for classes in SPLIT_MNIST_CLASSES
    ]
    return TaskSequence(f"split_mnist_{scenario}", tasks, SPLIT_MNIST_CLASSES if scenario == "task" else None)
