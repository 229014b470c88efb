"""Continual-learning task sequences: permuted MNIST (fixed, seeded permutations) and split MNIST (two classes per
task, class- and task-incremental)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mep_hf.data import (
    SPLIT_MNIST_CLASSES,
    ReplayBuffer,
    load_mnist,
    permuted_mnist,
    rotated_mnist,
    split_fashion_mnist,
    split_mnist,
)
from mep_hf.data.continual import TaskLogitMask


def _labels(dataset) -> np.ndarray:
    return dataset.with_format("numpy", columns=["labels"])[:]["labels"]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_permuted_mnist_applies_the_documented_permutations(mnist):
    tasks = permuted_mnist(3, seed=0)
    assert len(tasks) == 3 and tasks.task_classes is None and tasks.trainer_kwargs() == {}
    rng = np.random.default_rng(0)
    permutations = [np.arange(784), rng.permutation(784), rng.permutation(784)]
    original = mnist["validation"][:8]
    for task, perm in zip(tasks, permutations):
        assert {k: len(v) for k, v in task.items()} == {"train": 50000, "validation": 10000, "test": 10000}
        rows = task["validation"][:8]
        assert rows["pixel_values"].shape == (8, 784) and rows["pixel_values"].dtype == torch.float32
        assert torch.equal(rows["pixel_values"], original["pixel_values"][:, torch.from_numpy(perm)])
        assert torch.equal(rows["labels"], original["labels"])
        # select (as the Trainer and the benchmark use it) keeps the permutation
        assert torch.equal(task["validation"].select(range(8))[:]["pixel_values"], rows["pixel_values"])


def test_permuted_mnist_is_deterministic_per_seed():
    a, b, c = permuted_mnist(2, seed=0), permuted_mnist(2, seed=0), permuted_mnist(2, seed=1)
    assert torch.equal(a[1]["test"][:4]["pixel_values"], b[1]["test"][:4]["pixel_values"])
    assert not torch.equal(a[1]["test"][:4]["pixel_values"], c[1]["test"][:4]["pixel_values"])
    with pytest.raises(ValueError, match="num_tasks"):
        permuted_mnist(0)


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_split_mnist_has_two_classes_per_task(mnist, scenario):
    tasks = split_mnist(scenario)
    assert len(tasks) == 5
    for task, classes in zip(tasks, SPLIT_MNIST_CLASSES):
        for split in ("train", "validation", "test"):
            assert np.unique(_labels(task[split])).tolist() == list(classes)
    for split in ("train", "validation", "test"):
        labels = _labels(mnist[split])
        assert sum(len(t[split]) for t in tasks) == len(labels)
        assert len(tasks[3][split]) == int(np.isin(labels, (6, 7)).sum())
    assert (tasks.task_classes is not None) == (scenario == "task")
    assert set(tasks.trainer_kwargs()) == ({"compute_loss_func", "preprocess_logits_for_metrics"}
                                           if scenario == "task" else set())
    with pytest.raises(ValueError, match="scenario"):
        split_mnist("domain")


def test_task_incremental_mask_compares_only_the_task_classes():
    mask = TaskLogitMask(SPLIT_MNIST_CLASSES)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 6, 9, 2])
    masked = mask.logits(logits, labels)
    pairs = torch.tensor([SPLIT_MNIST_CLASSES[y // 2] for y in labels.tolist()])
    pair_logits = logits.gather(1, pairs)
    assert torch.equal(masked.argmax(-1), pairs.gather(1, pair_logits.argmax(-1, keepdim=True)).squeeze(1))
    # the loss is the two-way cross-entropy of the task's classes, with Trainer's num_items_in_batch normalisation
    expected = F.cross_entropy(pair_logits, (labels % 2), reduction="sum") / 4
    loss = mask.loss({"logits": logits}, labels, num_items_in_batch=4)
    assert torch.allclose(loss, expected, rtol=1e-12)
    assert torch.allclose(mask.loss({"logits": logits}, labels), expected * 4 / 6, rtol=1e-12)
    # Negative control: the unmasked 10-way loss is not that.
    assert not torch.allclose(F.cross_entropy(logits, labels, reduction="sum") / 4, expected, rtol=1e-3)


def test_rotated_mnist_rotates_by_growing_angles(mnist):
    tasks = rotated_mnist(3, max_angle=90)
    original = mnist["test"][:4]["pixel_values"]
    assert len(tasks) == 3 and tasks.task_classes is None
    # angle 0 returns the images themselves (no resampling), so the same numbers: exact by construction
    assert torch.equal(tasks[0]["test"][:4]["pixel_values"], original)
    images = original.reshape(-1, 28, 28)
    # 90 degrees is an exact quarter turn (counter-clockwise): the interior matches torch.rot90
    quarter = tasks[2]["test"][:4]["pixel_values"].reshape(-1, 28, 28)
    assert torch.allclose(quarter[:, 1:-1, 1:-1], torch.rot90(images, 1, (1, 2))[:, 1:-1, 1:-1], atol=1e-5)
    half = tasks[1]["test"].select(range(4))[:]["pixel_values"]  # 45 degrees, kept through select
    labels = tasks[1]["test"][:4]["labels"]  # integer class ids, untouched by the rotation
    assert not torch.allclose(half, original, atol=0.1) and torch.equal(labels, mnist["test"][:4]["labels"])


def test_split_fashion_mnist_has_two_classes_per_task():
    tasks = split_fashion_mnist("class")
    assert [np.unique(_labels(t["validation"])).tolist() for t in tasks] == [list(c) for c in SPLIT_MNIST_CLASSES]


def test_replay_buffer_mixes_stored_rows_of_finished_tasks(mnist):
    buffer = ReplayBuffer(per_task=3, seed=0)
    first, second = mnist["validation"].select(range(10)), mnist["validation"].select(range(10, 20))
    assert buffer.mix(first) is first  # nothing stored yet
    buffer.add(first)
    mixed = buffer.mix(second)
    assert len(mixed) == 13
    stored = torch.stack([mixed[i]["pixel_values"] for i in range(10, 13)])
    # replayed rows are copies of stored rows, not recomputed: exact by construction
    assert all(any(torch.equal(row, old) for old in first[:]["pixel_values"]) for row in stored)
