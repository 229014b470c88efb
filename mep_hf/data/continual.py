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

* :func:`split_fashion_mnist` -- the same five two-class split on Fashion-MNIST (classes 0/1, ..., 8/9).
* :func:`rotated_mnist` -- gradual domain shift: every task is all of MNIST rotated by an angle that grows task by
  task (``linspace(0, max_angle, num_tasks)`` degrees, bilinear, applied lazily like the permutations).
* :class:`ReplayBuffer` -- experience replay as dataset mixing: a few stored rows of every finished task join the
  next task's training set, so the stock ``Trainer`` (and ``EPTrainer``) sample them in one shuffled stream.

Splits are :func:`~mep_hf.data.load_mnist`'s / :func:`~mep_hf.data.load_fashion_mnist`'s
(train 50000 / validation 10000 / test 10000).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import datasets

from .fashion_mnist import load_fashion_mnist
from .mnist import IMAGE_SIZE, load_mnist

__all__ = ["TaskSequence", "ReplayBuffer", "permuted_mnist", "rotated_mnist", "split_mnist", "split_fashion_mnist",
           "SPLIT_MNIST_CLASSES", "SCENARIOS"]

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


def _pixel_transform(change):
    """A ``with_transform`` function that applies ``change`` to a batch's (n, 784) float32 pixels."""

    def transform(batch: dict) -> dict:
        pixels = torch.as_tensor(np.asarray(batch["pixel_values"], dtype=np.float32))
        return {"pixel_values": change(pixels), "labels": torch.as_tensor(batch["labels"])}

    return transform


def _permute(permutation: np.ndarray):
    index = torch.from_numpy(permutation)
    return _pixel_transform(lambda pixels: pixels[:, index])


def rotate_images(pixels: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate flat 28x28 images counter-clockwise about their centre (bilinear, zero background)."""
    if degrees == 0:
        return pixels
    side = int(IMAGE_SIZE ** 0.5)
    angle = torch.tensor(np.deg2rad(degrees), dtype=pixels.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(())]), torch.stack([sin, cos, torch.zeros(())])])
    images = pixels.reshape(-1, 1, side, side)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False).reshape(-1, IMAGE_SIZE)


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


def rotated_mnist(num_tasks: int = 5, max_angle: float = 90.0, source=None, cache_dir=None) -> TaskSequence:
    """``num_tasks`` MNIST tasks rotated by ``linspace(0, max_angle, num_tasks)`` degrees: a gradual shift."""
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    mnist = load_mnist(source, cache_dir=cache_dir)
    angles = np.linspace(0.0, max_angle, num_tasks)
    tasks = [mnist.with_transform(_pixel_transform(lambda p, a=float(a): rotate_images(p, a))) for a in angles]
    return TaskSequence(f"rotated_mnist_{num_tasks}x{max_angle:g}", tasks)


def _split(name: str, dataset: datasets.DatasetDict, scenario: str) -> TaskSequence:
    tasks = [
        dataset.filter(lambda labels, keep=classes: np.isin(labels, keep), input_columns="labels", batched=True)
        for classes in SPLIT_MNIST_CLASSES
    ]
    return TaskSequence(f"{name}_{scenario}", tasks, SPLIT_MNIST_CLASSES if scenario == "task" else None)


def split_mnist(scenario: str = "class", source=None, cache_dir=None) -> TaskSequence:
    """Five two-class MNIST tasks (digits 0/1, 2/3, ..., 8/9), class- or task-incremental."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    return _split("split_mnist", load_mnist(source, cache_dir=cache_dir), scenario)


def split_fashion_mnist(scenario: str = "class", source=None, cache_dir=None) -> TaskSequence:
    """Five two-class Fashion-MNIST tasks (classes 0/1, ..., 8/9), class- or task-incremental."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    return _split("split_fashion_mnist", load_fashion_mnist(source, cache_dir=cache_dir), scenario)


class ReplayBuffer:
    """Experience replay for the stock Trainer, as dataset mixing: :meth:`add` keeps ``per_task`` random rows of a
    finished task; :meth:`mix` returns the next task's training set with every stored row appended (a
    ``torch.utils.data.ConcatDataset``, which Trainer's shuffling sampler draws from like any dataset)."""

    def __init__(self, per_task: int, seed: int = 0):
        self.per_task, self.seed, self.stored = per_task, seed, []

    def add(self, dataset) -> None:
        n = min(self.per_task, len(dataset))
        if n > 0:
            self.stored.append(dataset.shuffle(seed=self.seed + len(self.stored)).select(range(n)))

    def mix(self, dataset):
        return torch.utils.data.ConcatDataset([dataset, *self.stored]) if self.stored else dataset
