"""Train an MLP on MNIST by EP with PyTorch Lightning: ``EPMixin`` ahead of ``LightningModule`` is the whole change.

    python examples/lightning_mnist.py                            # 10000 images, 2 epochs, one CPU process
    python examples/lightning_mnist.py --devices 2                # DDP over 2 CPU processes that Lightning launches
    python examples/lightning_mnist.py --accumulate_grad_batches 4 --output_dir runs/lightning_mnist

The module below is an ordinary Lightning module that trains by backprop; listing ``EPMixin`` first replaces its
``training_step`` with EP's (``mep_hf.integrations.lightning``). Lightning's loop does the rest as usual: gradient
accumulation, clipping, logging (TensorBoard under ``--output_dir``), checkpoints, multi-process launch.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

import mep_hf
from mep_hf.data import load_mnist
from mep_hf.integrations.lightning import EPMixin


class MNISTClassifier(pl.LightningModule):
    """An MLP classifier trained by backprop, as a Lightning user writes it."""

    def __init__(self, hidden: int = 256, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = mep_hf.EPMLPForImageClassification(mep_hf.EPMLPConfig(hidden_sizes=[hidden], num_labels=10))

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        output = self.model(**batch)
        self.log("val_loss", output.loss, sync_dist=True)
        self.log("val_accuracy", (output.logits.argmax(-1) == batch["labels"]).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class EPMNISTClassifier(EPMixin, MNISTClassifier):
    """The same module trained by EP (the EP settings: ``ep_settings``, the ``EPTrainingArguments`` fields)."""


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train_examples", type=int, default=10000)
    p.add_argument("--val_examples", type=int, default=2000)
    p.add_argument("--max_epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--accumulate_grad_batches", type=int, default=1)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--output_dir", default="runs/lightning_mnist")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    pl.seed_everything(a.seed, verbose=False)
    mnist = load_mnist()
    train = DataLoader(mnist["train"].select(range(a.train_examples)), batch_size=a.batch_size, shuffle=True)
    val = DataLoader(mnist["validation"].select(range(a.val_examples)), batch_size=256)
    trainer = pl.Trainer(accelerator="cpu", devices=a.devices, strategy="ddp" if a.devices > 1 else "auto",
                         max_epochs=a.max_epochs, accumulate_grad_batches=a.accumulate_grad_batches,
                         default_root_dir=a.output_dir, log_every_n_steps=20, enable_progress_bar=False)
    trainer.fit(EPMNISTClassifier(), train, val)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        print(f"validation accuracy: {metrics['val_accuracy']:.3f}; checkpoint: {trainer.checkpoint_callback.best_model_path}")
    return metrics


if __name__ == "__main__":
    main()
