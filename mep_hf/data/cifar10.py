"""CIFAR-10 as a ``datasets.DatasetDict`` for online users (no offline copy exists on the package registries).

The Hub copy (``uoft-cs/cifar10``: ``img`` PIL images, ``label``) is mapped to the columns every EP image model
takes: ``pixel_values`` (flat ``float32`` rows of ``3*32*32`` values in ``[0, 1]``, channel-major) and ``labels``.
The last 5000 training images become ``validation``. Built once, cached with ``save_to_disk``.
"""

from __future__ import annotations

import os

import datasets
import numpy as np
import pyarrow as pa

from ._cache import load_or_build, resolve_cache_dir

CIFAR10_HUB_ID = "uoft-cs/cifar10"
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_VALUES = 3 * 32 * 32
CIFAR10_FEATURES = datasets.Features(
    {
        "pixel_values": datasets.List(datasets.Value("float32"), length=IMAGE_VALUES),
        "labels": datasets.ClassLabel(names=CIFAR10_LABELS),
    }
)


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """``images``: uint8 ``(n, 32, 32, 3)`` → flat channel-major float32 rows (Arrow view, no per-row Python)."""
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32).reshape(-1) / 255.0
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(x), IMAGE_VALUES)
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": labels}, features=CIFAR10_FEATURES)


def _build(hub_id: str, validation_size: int) -> datasets.DatasetDict:
    try:
        hub = datasets.load_dataset(hub_id)
    except Exception as err:  # offline or unknown id: say what is needed
        raise FileNotFoundError(
            f"could not load CIFAR-10 from the Hugging Face Hub dataset {hub_id!r} ({type(err).__name__}: {err}). "
            "No offline copy of CIFAR-10 ships on the package registries; this loader needs the network once "
            "(it is cached afterwards)."
        ) from err

    def arrays(split: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
        image_column = "img" if "img" in split.column_names else "image"
        split = split.with_format("numpy")
        return np.stack(list(split[image_column])).astype(np.uint8), np.asarray(split["label"], dtype=np.int64)

    train_x, train_y = arrays(hub["train"])
    test_x, test_y = arrays(hub["test"])
    n = len(train_x) - validation_size
    return datasets.DatasetDict(
        train=_to_dataset(train_x[:n], train_y[:n]),
        validation=_to_dataset(train_x[n:], train_y[n:]),
        test=_to_dataset(test_x, test_y),
    )


def load_cifar10(
    hub_id: str | None = None, cache_dir: str | os.PathLike | None = None, validation_size: int = 5000
) -> datasets.DatasetDict:
    """CIFAR-10 train / validation / test, torch-formatted, for ``EPConvNetForImageClassification``; from the Hub
    dataset ``hub_id`` (default ``uoft-cs/cifar10``)."""
    hub_id = hub_id or CIFAR10_HUB_ID
    target = resolve_cache_dir(cache_dir) / ("cifar10-" + hub_id.replace("/", "--"))
    return load_or_build(target, lambda: _build(hub_id, validation_size)).with_format("torch")
