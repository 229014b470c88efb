"""Two CPU processes (gloo, DDP) train exactly like one process on the doubled batch: EP gradients are all-reduced.

Why the comparison is exact: the Trainer's train sampler is accelerate's ``SeedableRandomSampler`` (same seed →
same permutation whatever the world size), and accelerate's ``BatchSamplerShard`` hands rank ``r`` the batches
``r, r+2, r+4, …`` of size ``b``. So step ``k`` on 2 ranks sees batches ``2k`` and ``2k+1`` of that permutation,
which together are exactly batch ``k`` of size ``2b`` on one rank. Each rank's contrast is a batch mean, DDP
averages the ranks' gradients, so the update is the mean over the same ``2b`` examples. With
``accelerator_config={"split_batches": True}`` the global batch of ``2b`` is split in halves across the ranks
instead: the same examples again. Only the float32 summation order differs (one matmul over 2b rows vs two over
b, then an all-reduce), hence the tolerance ``atol=1e-6`` after 6 Adam steps (measured: ~1.3e-7).

The negative control computes the contrast on the unwrapped module (DESIGN §2's trap): DDP's reducer is armed only
by the wrapper's ``forward``, so no all-reduce happens, each rank follows its own half-batch, and the parameters
differ from the single-process run (measured: ~5e-2) and from each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_toy.py"
BATCH, STEPS, TIMEOUT = 8, 6, 240
ATOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def _run(cmd: list[str], out: Path) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def train(out: Path, nproc: int, batch: int, *flags: str) -> list[dict[str, torch.Tensor]]:
    """Run the toy training with ``nproc`` processes; return every rank's final parameters."""
    script = [str(SCRIPT), "--out", str(out), "--batch", str(batch), "--max_steps", str(STEPS), *flags]
    if nproc == 1:
        cmd = [sys.executable, *script]
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1"]
        cmd = [sys.executable, *launcher, "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *script]
    _run(cmd, out)
    return [load_file(out / f"params_rank{r}.safetensors") for r in range(nproc)]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The reference: one process, batch 2b."""
    (params,) = train(tmp_path_factory.mktemp("single"), 1, 2 * BATCH)
    return params


@pytest.fixture(scope="module")
def initial():
    sys.path.insert(0, str(ROOT))
    from tests.conftest import toy_model

    return {k: v.detach().clone() for k, v in toy_model().state_dict().items()}


@pytest.mark.parametrize(
    "batch, flags",
    [(BATCH, ("--save_steps", "3")), (2 * BATCH, ("--split_batches",))],
    ids=["per_device_b", "split_batches_2b"],
)
def test_two_gloo_processes_equal_one_process_on_the_doubled_batch(tmp_path, single_process, initial, batch, flags):
    ranks = train(tmp_path, 2, batch, *flags)
    assert max_diff(ranks[0], ranks[1]) == 0.0, "DDP replicas drifted apart"
    assert max_diff(ranks[0], initial) > 1e-3, "training did not move the parameters"
    diff = max_diff(ranks[0], single_process)
    how = "split_batches, global batch" if "--split_batches" in flags else "per-device batch"
    print(f"DDP on 2 ranks ({how} {batch}) vs one process on batch {2 * BATCH}: max abs diff {diff:.3g}")
    assert diff <= ATOL, diff
    if "--save_steps" in flags:  # atomic checkpoints under DDP: every rank's RNG state is in, no staging left
        out = tmp_path / "out"
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "checkpoint-6"]
        files = {p.name for p in (out / "checkpoint-6").iterdir()}
        assert {"model.safetensors", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"} <= files, files


def test_contrast_that_bypasses_ddp_forward_is_not_all_reduced(tmp_path, single_process):
    """The negative control: the same run with the contrast on the unwrapped model gives different parameters."""
    ranks = train(tmp_path, 2, BATCH, "--bypass_ddp")
    assert max_diff(ranks[0], ranks[1]) > 1e-3, "replicas stayed equal without all-reduce?"
    assert max_diff(ranks[0], single_process) > 1e-3


def test_a_rank_dying_mid_save_ends_every_rank_and_leaves_the_last_checkpoint_loadable(tmp_path):
    """Rank 1 is SIGKILLed half-way through writing checkpoint-6. The launcher ends rank 0 too (no hang: the run
    is over well within the test's timeout); checkpoint-3 is the last one, verifies, and loads."""
    from mep_hf import EPMLPForImageClassification
    from mep_hf.checkpointing import verify_checkpoint
    from transformers.trainer_utils import get_last_checkpoint

    script = [str(SCRIPT), "--out", str(tmp_path), "--batch", str(BATCH), "--max_steps", "9", "--save_steps", "3",
              "--kill_in_save_step", "6", "--kill_rank", "1"]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1"]
    cmd = [sys.executable, *launcher, "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *script]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0, "the run should have failed"
    out = tmp_path / "out"
    assert not (tmp_path / "params_rank0.safetensors").exists(), "rank 0 finished training alone"
    last = get_last_checkpoint(str(out))
    assert last == str(out / "checkpoint-3"), sorted(p.name for p in out.iterdir())
    verify_checkpoint(last)
    EPMLPForImageClassification.from_pretrained(last)
