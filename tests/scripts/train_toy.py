"""Train the toy EP MLP with EPTrainer and save its parameters; the helper of the DDP and SIGKILL tests.

Run it single-process (``python tests/scripts/train_toy.py --out DIR``) or under ``torchrun``/``accelerate launch``
(gloo on CPU). Every rank writes ``DIR/params_rank{R}.safetensors`` after training.

    --batch B            per-device batch size
    --max_steps N        optimizer steps
    --bypass_ddp         compute the contrast on the *unwrapped* model (the DDP trap: no gradient all-reduce)
    --split_batches      accelerate's split_batches (each global batch of B is split across the ranks)
    --save_steps K       save a checkpoint every K steps into DIR/out (default: no checkpoints)
    --resume             resume_from_checkpoint=True (the last complete checkpoint in DIR/out)
    --kill_at_step N     SIGKILL this process at the end of step N, before anything of step N is saved
    --kill_in_save_step N
                         SIGKILL this process half-way through writing checkpoint-N (after the weights and the
                         optimizer, before the RNG state)
    --kill_rank R        with --kill_in_save_step under a launcher: only rank R dies (default: every rank)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from mep_hf import EPTrainer  # noqa: E402
from tests.conftest import toy_args, toy_images, toy_model  # noqa: E402


def die() -> None:
    """SIGKILL: no handler, no cleanup, no flush, exactly like the OOM killer or a pre-empted machine."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # runs before the step's checkpoint is saved
        if state.global_step == self.step:
            die()


class BypassDDPTrainer(EPTrainer):
    """The trap of DESIGN §2: the contrast runs on the unwrapped module, so DDP's reducer never arms."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(self.accelerator.unwrap_model(model), inputs, num_items_in_batch)


class KillInSaveTrainer(EPTrainer):
    kill_step, kill_rank = -1, -1

    def _save_rng_state(self, output_dir):
        if self.state.global_step == self.kill_step and self.kill_rank in (-1, self.args.process_index):
            die()
        return super()._save_rng_state(output_dir)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max_steps", type=int, default=6)
    p.add_argument("--nudging", default="centered")
    p.add_argument("--bypass_ddp", action="store_true")
    p.add_argument("--split_batches", action="store_true")
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill_at_step", type=int, default=-1)
    p.add_argument("--kill_in_save_step", type=int, default=-1)
    p.add_argument("--kill_rank", type=int, default=-1)
    a = p.parse_args()

    torch.set_num_threads(1)
    out = Path(a.out)
    overrides = dict(
        per_device_train_batch_size=a.batch,
        max_steps=a.max_steps,
        logging_steps=1,
        ep_nudging=a.nudging,
        ep_settle_steps=2,
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        overrides["ddp_backend"] = "gloo"  # set only under a launcher: accelerate would otherwise expect a process group
    if a.save_steps:
        overrides.update(save_strategy="steps", save_steps=a.save_steps)
    if a.split_batches:
        overrides["accelerator_config"] = {"split_batches": True}
    args = toy_args(out, **overrides)  # output_dir = out / "out"
    trainer_cls = BypassDDPTrainer if a.bypass_ddp else EPTrainer
    if a.kill_in_save_step >= 0:
        kill = {"kill_step": a.kill_in_save_step, "kill_rank": a.kill_rank}
        trainer_cls = type("KillInSave", (KillInSaveTrainer,), kill)
    callbacks = [KillAtStep(a.kill_at_step)] if a.kill_at_step >= 0 else None
    trainer = trainer_cls(model=toy_model(), args=args, train_dataset=toy_images(128), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    params = {k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()}
    save_file(params, str(out / f"params_rank{args.process_index}.safetensors"))
    print(f"rank {args.process_index}/{args.world_size}: done, global_step={trainer.state.global_step}", flush=True)
    if torch.distributed.is_initialized():
        # Everything is on disk. Tearing down a gloo group (at interpreter exit, or through the DDP reducer's
        # destructor after destroy_process_group) sometimes aborts ("terminate called without an active exception")
        # or blocks joining its threads: leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
