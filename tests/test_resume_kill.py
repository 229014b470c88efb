"""Exact resume after SIGKILL, and atomic checkpoints.

A training process SIGKILLs itself at a chosen step boundary (between two saves, or half-way through writing a
checkpoint: deterministic, no sleep windows); a new process
resumes with ``resume_from_checkpoint=True`` and must end with parameters *bit-identical* (``atol=0``) to an
uninterrupted run. Trainer's RNG/sampler state in the checkpoint makes the data order the same, and EP settling is
deterministic, so nothing but exact equality is acceptable.

The stock ``Trainer._save_checkpoint`` writes straight into ``checkpoint-N``; a crash in the middle leaves a
half-written folder that ``get_last_checkpoint`` picks. ``EPTrainer`` stages the folder and renames it into place
(:mod:`mep_hf.checkpointing`); the tests show both behaviours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from mep_hf import EPTrainer
from tests.conftest import toy_args, toy_images, toy_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_toy.py"
COMMON = ["--batch", "8", "--max_steps", "12", "--save_steps", "3", "--nudging", "positive"]
TIMEOUT = 180


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def run_script(out: Path, *flags: str) -> dict[str, torch.Tensor]:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), *COMMON, *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return load_file(out / "params_rank0.safetensors")


def run_until_killed(out: Path, *flags: str) -> None:
    """Run training that SIGKILLs itself at a chosen point (``--kill_at_step`` / ``--kill_in_save_step``)."""
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), *COMMON, *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, f"expected death by SIGKILL, got {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert not (out / "params_rank0.safetensors").exists()


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run_script(tmp_path_factory.mktemp("straight"))


def test_resume_after_sigkill_between_saves_is_exact(tmp_path, uninterrupted):
    ckpts = tmp_path / "out"
    run_until_killed(tmp_path, "--kill_at_step", "8")  # checkpoints 3 and 6 are written, step 7 and 8 are lost
    last = get_last_checkpoint(str(ckpts))
    assert last == str(ckpts / "checkpoint-6")
    resumed = run_script(tmp_path, "--resume")
    diff = max_diff(resumed, uninterrupted)
    print(f"resume after SIGKILL (last checkpoint {Path(last).name}): max abs diff {diff}")
    assert diff == 0.0


def test_sigkill_half_way_through_a_checkpoint_is_never_resumed_from(tmp_path, uninterrupted):
    ckpts = tmp_path / "out"
    staged = ckpts / ".tmp-checkpoint-6" / "checkpoint-6"
    run_until_killed(tmp_path, "--kill_in_save_step", "6")
    assert staged.is_dir() and not (staged / "trainer_state.json").exists()  # really half-written
    assert not (ckpts / "checkpoint-6").exists()
    assert get_last_checkpoint(str(ckpts)) == str(ckpts / "checkpoint-3")
    resumed = run_script(tmp_path, "--resume")
    assert max_diff(resumed, uninterrupted) == 0.0
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-12", "checkpoint-3", "checkpoint-6", "checkpoint-9"]


class CrashingSave(Exception):
    pass


def _crash_at(cls, step):
    """``cls`` whose save of ``checkpoint-{step}`` dies after the weights and optimizer, before the RNG state."""

    def _save_rng_state(self, output_dir):
        if self.state.global_step == step:
            raise CrashingSave(output_dir)
        return super(sub, self)._save_rng_state(output_dir)

    sub = type(f"Crashing{cls.__name__}", (cls,), {"_save_rng_state": _save_rng_state})
    return sub


class StockSaveEPTrainer(EPTrainer):
    _save_checkpoint = Trainer._save_checkpoint  # transformers' own, non-atomic


def test_stock_trainer_leaves_a_half_written_checkpoint_that_resume_would_pick(tmp_path, dataset):
    """Why the atomic save exists: with the stock method, get_last_checkpoint returns the broken folder."""
    args = toy_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    trainer = _crash_at(StockSaveEPTrainer, 6)(model=toy_model(), args=args, train_dataset=dataset)
    with pytest.raises(CrashingSave):
        trainer.train()
    last = get_last_checkpoint(args.output_dir)
    assert last.endswith("checkpoint-6") and not os.path.exists(os.path.join(last, "trainer_state.json"))


def test_crash_inside_save_leaves_only_complete_checkpoints(tmp_path, dataset):
    common = dict(max_steps=9, save_strategy="steps", save_steps=3)
    straight = EPTrainer(model=toy_model(), args=toy_args(tmp_path / "a", **common), train_dataset=dataset)
    straight.train()

    args = toy_args(tmp_path / "b", **common)
    crashing = _crash_at(EPTrainer, 6)(model=toy_model(), args=args, train_dataset=dataset)
    with pytest.raises(CrashingSave):
        crashing.train()
    out = Path(args.output_dir)
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert (out / ".tmp-checkpoint-6").is_dir()  # the interrupted save, invisible to resume and rotation

    resumed = EPTrainer(model=toy_model(seed=7), args=args, train_dataset=dataset)
    resumed.train(resume_from_checkpoint=True)
    assert max_diff(resumed.model.state_dict(), straight.model.state_dict()) == 0.0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]  # staging gone


def test_checkpoints_hold_safetensors_weights_only_and_rotation_and_best_still_work(tmp_path, dataset):
    args = toy_args(
        tmp_path,
        max_steps=9,
        save_strategy="steps",
        save_steps=3,
        eval_strategy="steps",
        eval_steps=3,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
    )
    trainer = EPTrainer(model=toy_model(), args=args, train_dataset=dataset, eval_dataset=toy_images(32, seed=1))
    trainer.train()
    out = Path(args.output_dir)
    kept = sorted(p.name for p in out.iterdir())
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == out and best.name in kept and not best.name.startswith(".")
    assert len(kept) <= 2 and all(n.startswith("checkpoint-") for n in kept), kept
    for ckpt in kept:
        files = {p.name for p in (out / ckpt).iterdir()}
        assert "model.safetensors" in files and "trainer_state.json" in files, files
        # weights only as safetensors; the remaining torch pickles (optimizer.pt, rng_state.pth, ...) are loaded
        # by transformers with torch.load(weights_only=True) on resume
        assert not {f for f in files if f.startswith("pytorch_model") or f.endswith((".ckpt", ".pkl"))}, files
        state = (out / ckpt / "trainer_state.json").read_text()
        assert ".tmp-" not in state, "a staging path leaked into trainer_state.json"
