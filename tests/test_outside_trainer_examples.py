"""``examples/plain_pytorch.py`` and ``examples/lightning_mnist.py`` run, with small settings, and learn: EP in a
plain PyTorch loop and in Lightning's (with gradient accumulation and its checkpointing) classifies MNIST well
above chance (0.1) after 2000 images."""

from __future__ import annotations


def test_plain_pytorch_example_learns(load_example):
    metrics = load_example("plain_pytorch").main(["--train_examples", "2000", "--test_examples", "500", "--epochs", "1"])
    assert metrics["accuracy"] > 0.75 and metrics["loss"] < 1.0, metrics


def test_lightning_example_learns_and_checkpoints(load_example, tmp_path):
    metrics = load_example("lightning_mnist").main(
        ["--train_examples", "2000", "--val_examples", "500", "--max_epochs", "1", "--accumulate_grad_batches", "2",
         "--output_dir", str(tmp_path)])
    assert metrics["val_accuracy"] > 0.75 and metrics["train_loss"] < 1.0, metrics
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == ["epoch=0-step=16.ckpt"]  # 32 batches, 2 per step
