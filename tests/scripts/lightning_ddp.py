"""The toy classifier trained by EP in PyTorch Lightning (float64), on ``--devices`` CPU processes that Lightning
launches itself (DDP over gloo); each rank saves its final parameters. The helper of
``tests/test_lightning.py::test_two_gloo_processes_equal_one_process_on_the_doubled_batch``, and the home of the
modules that test uses.

    python tests/scripts/lightning_ddp.py --devices 2 --batch 4 --steps 3 --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from mep_hf.integrations.lightning import EPMixin  # noqa: E402
from tests.conftest import toy_images, toy_model  # noqa: E402

EXACT = dict(ep_beta=1e-5, ep_nudging="centered", ep_settle_steps=3)


class Classifier(pl.LightningModule):
    """The toy MLP trained by backprop, as a Lightning user writes it."""

    def __init__(self, lr: float = 0.05, optimizer: str = "adam"):
        super().__init__()
        self.model, self.lr, self.optimizer = toy_model(), lr, optimizer

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[self.optimizer](self.parameters(), lr=self.lr)


class EPClassifier(EPMixin, Classifier):
    """The same module trained by EP: the mixin's ``training_step`` replaces backprop's."""

    ep_settings = EXACT


class ToyData(pl.LightningDataModule):
    """``n`` toy images in batches of ``batch`` per process, dealt by one ``DistributedSampler`` (shuffled, seed 0)
    for any world size: rank ``r`` gets rows ``r, r+2, ...`` of the same permutation, so 2 ranks' batches ``k`` are
    together one process's batch ``k`` of twice the size. (Lightning's own sampler, swapped in under DDP only, would
    draw another permutation than the single process's.)"""

    def __init__(self, n: int, batch: int):
        super().__init__()
        self.data, self.batch = toy_images(n), batch

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.data, num_replicas=world, rank=rank, shuffle=True, seed=0)
        return DataLoader(self.data, batch_size=self.batch, sampler=sampler)


def trainer(**overrides) -> pl.Trainer:
    settings = dict(accelerator="cpu", devices=1, precision="64-true", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    return pl.Trainer(**{**settings, **overrides})


def train(devices: int, batch: int, steps: int, **overrides) -> tuple[EPClassifier, pl.Trainer]:
    """EP-train the toy classifier for ``steps`` steps of ``batch`` rows per process on ``devices`` processes."""
    module = EPClassifier()
    run = trainer(devices=devices, max_steps=steps, strategy="ddp" if devices > 1 else "auto", **overrides)
    run.fit(module, datamodule=ToyData(2 * batch * devices * steps, batch))
    return module, run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    module, run = train(a.devices, a.batch, a.steps)
    params = {k: v.detach().contiguous() for k, v in module.model.state_dict().items()}
    save_file(params, str(Path(a.out) / f"params_rank{run.global_rank}.safetensors"))
    if torch.distributed.is_initialized():  # clean teardown: fit released its DDP wrapper; the group goes now
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
