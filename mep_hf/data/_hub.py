"""Hub image-classification datasets (MNIST-like: PIL images and a class label per row) as numpy arrays, shared by
the loaders' online paths."""

from __future__ import annotations

import importlib.util

import datasets
import numpy as np


def hub_image_arrays(split: datasets.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``uint8`` grayscale images ``(N, H, W)`` and ``int64`` labels of one split of the Hub dataset ``name``.

    The image column is the ``Image`` feature (else ``image`` / ``img`` / ``pixel_values``), decoded in mode ``L``;
    the label column is the ``ClassLabel`` feature (else ``label`` / ``labels``)."""
    features = split.features
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in ("image", "img", "pixel_values") if k in features), None)
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((k for k in ("label", "labels") if k in features), None)
    if image is None or label is None:
        raise ValueError(f"{name!r}: cannot find image/label columns in {features}")
    if isinstance(features[image], datasets.Image):
        if importlib.util.find_spec("PIL") is None:
            raise ImportError(f"decoding the images of {name!r} needs Pillow: pip install pillow")
        split = split.cast_column(image, datasets.Image(mode="L"))
    split = split.with_format("numpy")
    images = np.stack(list(split[image])) if split.num_rows else np.zeros((0, 28, 28), np.uint8)
    return images.astype(np.uint8), np.asarray(split[label], dtype=np.int64)


def load_hub_dataset(repo_id: str, name: str, offline_hint: str) -> datasets.DatasetDict:
    """``datasets.load_dataset(repo_id)``; when that fails (offline, unknown id), say how to get ``name`` offline."""
    try:
        return datasets.load_dataset(repo_id)
    except Exception as err:  # noqa: BLE001 - any failure gets the same advice
        raise FileNotFoundError(
            f"could not load {name} from the Hugging Face Hub dataset {repo_id!r} ({type(err).__name__}: {err}). "
            f"For offline use: `{offline_hint}`"
        ) from err
