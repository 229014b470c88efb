"""The online CIFAR-10 path maps a Hub copy to EP image columns (load_dataset is replaced: tests run offline)."""

import datasets
import numpy as np
import pytest

from mep_hf.data import load_cifar10


def test_cifar10_hub_mapping(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"img": datasets.Array3D((32, 32, 3), "uint8"), "label": datasets.ClassLabel(num_classes=10)}
    )
    raw = {s: {"img": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": np.arange(n) % 10}
           for s, n in (("train", 30), ("test", 10))}
    fake = datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in raw.items()})
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, *a, **k: fake)
    dd = load_cifar10(cache_dir=tmp_path, validation_size=10)
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 20, "validation": 10, "test": 10}
    x = dd["test"][:]["pixel_values"]
    assert x.shape == (10, 3072)
    expected = raw["test"]["img"][4].transpose(2, 0, 1).reshape(-1) / 255.0
    np.testing.assert_allclose(x[4].numpy(), expected, rtol=0, atol=1e-7)
    assert dd["validation"][:]["labels"].tolist() == list(range(10))


def test_cifar10_offline_error_says_why(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="No offline copy of CIFAR-10"):
        load_cifar10(cache_dir=tmp_path)


def test_cifar10_from_the_hub_format_with_pil_images(monkeypatch, tmp_path):
    """The real Hub copy (uoft-cs/cifar10) holds PIL images in an ``img`` column (``datasets.Image``) and a
    ``label`` ClassLabel; the loader turns them into exactly what the zoo's image processor makes of the same
    images (``uint8 / 255`` in float32, channel-major), so a CIFAR-10 checkpoint sees the same pixels either way."""
    from PIL import Image

    from mep_hf.data.cifar10 import CIFAR10_LABELS
    from mep_hf.models.image_processing_ep import EPImageProcessor

    rng = np.random.default_rng(1)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_LABELS)})
    raw = {s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in (("train", 30), ("test", 10))}
    fake = datasets.DatasetDict({
        s: datasets.Dataset.from_dict(
            {"img": [Image.fromarray(a, "RGB") for a in arrays], "label": [i % 10 for i in range(len(arrays))]},
            features=features)
        for s, arrays in raw.items()
    })
    assert isinstance(fake["test"][0]["img"], Image.Image)
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, *a, **k: fake)
    dd = load_cifar10(cache_dir=tmp_path, validation_size=10)
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 20, "validation": 10, "test": 10}
    x = dd["test"][:]["pixel_values"].numpy()
    expected = raw["test"].transpose(0, 3, 1, 2).reshape(10, -1).astype(np.float32) / 255
    assert np.array_equal(x, expected)
    assert dd["test"][:]["labels"].tolist() == [i % 10 for i in range(10)]
    assert dd["test"].features["labels"].names == CIFAR10_LABELS
    processor = EPImageProcessor(num_channels=3, size={"height": 32, "width": 32})
    processed = processor([fake["test"][i]["img"] for i in range(10)], return_tensors="np")["pixel_values"]
    assert np.array_equal(processed.reshape(10, -1), x)
