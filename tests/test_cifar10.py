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
