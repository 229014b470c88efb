"""examples/train_image_classification.py writes what a Hugging Face example run writes, and resumes."""

import json
import sys

import pytest

from mep_hf.data import FASHION_MNIST_INSTALL_HINT
from mep_hf.data import fashion_mnist as fm
from test_readme import demo_outputs


@pytest.fixture
def example(load_example):
    return load_example("train_image_classification")


@pytest.mark.skipif(fm.find_fashion_mnist_dir() is None, reason=f"needs {FASHION_MNIST_INSTALL_HINT}")
def test_run_dir_outputs_and_resume(example, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = [
        "--dataset", "fashion_mnist", "--model", "convnet", "--channels", "4", "8",
        "--max_train_samples", "512", "--per_device_train_batch_size", "32", "--num_train_epochs", "2",
        "--learning_rate", "1e-2", "--save_strategy", "epoch", "--num_threads", "1", "--use_cpu", "--output_dir",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", ["examples/train_image_classification.py", *argv])
    metrics = example.main(argv)
    for name in ("config.json", "model.safetensors", "trainer_state.json", "train_results.json",
                 "eval_results.json", "test_results.json", "all_results.json", "run_info.json"):
        assert (out / name).is_file(), name
    missing = [name for name in demo_outputs() if not (out / name).exists()]
    assert not missing, f"the README says the main job writes {missing}"
    assert (out / "training_curve.png").stat().st_size > 1000
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard events"
    test = json.loads((out / "test_results.json").read_text())
    # 32 steps on 512 images reach 59% of the 10,000 test images (measured); chance is 10% (an untrained model's
    # accuracy varies by ~0.3% on 10,000 images); no training (--learning_rate 0) gives 4.6%. 35% is far above
    # chance and leaves room for another CPU's rounding or another seed's order.
    assert test["test_accuracy"] == metrics["test_accuracy"] and test["test_accuracy"] > 0.35
    assert "test_accuracy" in json.loads((out / "all_results.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["epoch"] for h in history if "eval_accuracy" in h] == [1.0, 2.0]  # validation every epoch
    info = json.loads((out / "run_info.json").read_text())
    assert info["command"].endswith("python examples/train_image_classification.py " + " ".join(argv))
    assert info["machine"]["threads"] == 1 and info["train_seconds"] > 0 and info["resumed_from"] is None
    assert info["training_args"]["num_train_epochs"] == 2 and info["training_args"]["ep_beta"] is None  # the library's scale-free default
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["9"] == "Ankle boot" and config["activation"] == "gelu"
    processor = json.loads((out / "preprocessor_config.json").read_text())  # pipeline-ready: Fashion-MNIST's pixels
    assert (processor["rescale_factor"], processor["num_channels"], processor["size"]) == (
        1 / 255, 1, {"height": 28, "width": 28})

    # The same command again, one more epoch: picks up the last checkpoint instead of starting over.
    argv[argv.index("--num_train_epochs") + 1] = "3"
    example.main(argv)
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"] is not None and info["resumed_from"].endswith("checkpoint-32")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["epoch"] for h in history if "eval_accuracy" in h] == [1.0, 2.0, 3.0]


def test_random_shift_flip_moves_pixels_only_on_the_training_set(example):
    import datasets
    import torch

    x = torch.rand(6, 28 * 28)
    ds = datasets.Dataset.from_dict({"pixel_values": x.numpy(), "labels": list(range(6))}).with_format("torch")
    torch.manual_seed(0)
    aug = example.RandomShiftFlip(ds, shift=2, hflip=True, shape=(1, 28))
    assert len(aug) == 6 and aug[3]["labels"] == 3
    items = aug.__getitems__([0, 1, 2, 3, 4, 5])
    moved = 0
    for i, item in enumerate(items):
        got = item["pixel_values"].reshape(28, 28)
        candidates = []
        for image in (x[i].reshape(28, 28), x[i].reshape(28, 28).flip(-1)):
            padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
            candidates += [padded[y : y + 28, c : c + 28] for y in range(5) for c in range(5)]
        assert any(torch.equal(got, c) for c in candidates), i  # a flip and a shift of image i, zero-filled
        moved += not torch.equal(got, x[i].reshape(28, 28))
        assert item["labels"] == i
    assert moved >= 4


def test_random_shift_flip_moves_the_channels_of_a_colour_image_together(example):
    import datasets
    import torch

    x = torch.rand(4, 3, 32, 32)
    ds = datasets.Dataset.from_dict({"pixel_values": x.reshape(4, -1).numpy(), "labels": [0, 1, 2, 3]})
    torch.manual_seed(0)
    items = example.RandomShiftFlip(ds.with_format("torch"), shift=3, hflip=True, shape=(3, 32)).__getitems__([0, 1, 2, 3])
    for i, item in enumerate(items):
        got = item["pixel_values"].reshape(3, 32, 32)
        candidates = [torch.nn.functional.pad(image, (3, 3, 3, 3))[:, y : y + 32, c : c + 32]
                      for image in (x[i], x[i].flip(-1)) for y in range(7) for c in range(7)]
        assert any(torch.equal(got, c) for c in candidates), i  # one shift and flip for all three channels


def test_cifar10_run_builds_a_colour_model(example, tmp_path, monkeypatch):
    """--dataset cifar10 (the zoo card's command) on a stand-in for the Hub copy: no offline CIFAR-10 exists."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Array3D((32, 32, 3), "uint8"),
                                  "label": datasets.ClassLabel(num_classes=10)})

    def colour_images(n: int) -> datasets.Dataset:
        """Noise images whose label (0, 1, 2) is their brighter channel (red, green or blue)."""
        labels = np.arange(n) % 3
        images = rng.integers(0, 156, (n, 32, 32, 3), dtype=np.uint8)
        images[np.arange(n), :, :, labels] += 100
        return datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)

    fake = datasets.DatasetDict({s: colour_images(n) for s, n in (("train", 5256), ("test", 300))})
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, *a, **k: fake)
    monkeypatch.setenv("MEP_HF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["--dataset", "cifar10", "--model", "convnet", "--channels", "4", "--augment_shift", "2",
            "--augment_hflip", "--max_train_samples", "256", "--per_device_train_batch_size", "32",
            "--num_train_epochs", "1", "--learning_rate", "1e-2", "--num_threads", "1", "--use_cpu", "--report_to",
            "none", "--output_dir", str(out)]
    metrics = example.main(argv)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_channels"], config["image_size"]) == (3, 32)
    # Eight steps learn the colour: 100% of the 300 test images (measured). Chance is 1/3 (±2.7% on 300 images);
    # no training (--learning_rate 0) stays at or under it. 60% is ten standard deviations above chance.
    assert metrics["test_accuracy"] > 0.6
