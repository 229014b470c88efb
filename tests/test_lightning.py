"""``mep_hf.integrations.lightning.EPMixin``: PyTorch Lightning trains by EP with its own loop. In float64 (Lightning's
``precision="64-true"``) EP's update is Lightning's own backprop update for the same module and batches (gradient
accumulation included); 2 CPU processes that Lightning launches (DDP, gloo) equal one process on the doubled batch;
a Lightning checkpoint resumes exactly. Negative controls: a large one-sided β misses backprop's update, one process
on the undoubled batch differs from the 2-process run, and a resume without the optimizer state differs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from mep_hf.adapters.check import mismatches
from mep_hf.guard import TrainingDivergedError
from tests.scripts.lightning_ddp import Classifier, EPClassifier, ToyData, train, trainer
from tests.test_distributed import _env

ROOT = Path(__file__).resolve().parents[1]


class BiasedEPClassifier(EPClassifier):
    ep_settings = dict(ep_beta=0.5, ep_nudging="positive", ep_settle_steps=3)


def sgd_update(module, **fit) -> list[torch.Tensor]:
    """One SGD step (2 accumulated micro-batches of 8) by Lightning; the parameter update."""
    module.optimizer = "sgd"
    before = [p.detach().clone().double() for p in module.model.parameters()]
    trainer(max_steps=1, accumulate_grad_batches=2).fit(module, datamodule=ToyData(32, 8))
    return [b - p.detach() for b, p in zip(before, module.model.parameters())]


def test_ep_update_equals_lightnings_backprop_update_in_float64():
    backprop = sgd_update(Classifier())
    model = Classifier().model.double()
    assert mismatches(model, sgd_update(EPClassifier()), backprop) == []
    assert mismatches(model, sgd_update(BiasedEPClassifier()), backprop), "a large one-sided β should miss it"


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_gloo_processes_equal_one_process_on_the_doubled_batch(tmp_path):
    cmd = [sys.executable, str(ROOT / "tests" / "scripts" / "lightning_ddp.py"), "--devices", "2", "--batch", "4",
           "--steps", "3", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [load_file(tmp_path / f"params_rank{r}.safetensors") for r in (0, 1)]
    doubled, undoubled = params(train(1, 8, 3)[0]), params(train(1, 4, 3)[0])
    assert max_diff(ranks[0], ranks[1]) == 0.0, "DDP replicas drifted apart"
    diff = max_diff(ranks[0], doubled)
    print(f"Lightning DDP on 2 ranks (batch 4 each) vs one process on batch 8: max abs diff {diff:.3g}")
    assert diff <= 1e-12
    assert max_diff(ranks[0], undoubled) > 1e-3, "the undoubled batch should train differently"


# The resumed run writes its checkpoints into the folder it resumes from, on purpose (Lightning says it is not empty).
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_checkpoint_resumes_exactly(tmp_path):
    """4 steps straight, against 2 steps, a Lightning checkpoint, and 2 more from it in a new Trainer and module
    (made in float64 by ``Trainer.init_module``, so the checkpoint's weights load without a float32 round trip);
    Adam's state must come back with it (without it, the run differs)."""
    data = ToyData(8, 4)  # 2 steps an epoch
    saving = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    straight = EPClassifier()
    trainer(max_steps=4, enable_checkpointing=True, callbacks=[saving]).fit(straight, datamodule=data)
    checkpoint = tmp_path / "epoch=0-step=2.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name, "epoch=1-step=4.ckpt"]
    # The resuming run has the callback that wrote the checkpoint, as Lightning asks (its state is in it).
    again = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    resuming = trainer(max_steps=4, enable_checkpointing=True, callbacks=[again])
    weights_only = trainer(max_steps=2)
    with resuming.init_module():
        resumed = EPClassifier()
    resuming.fit(resumed, datamodule=data, ckpt_path=checkpoint)
    diff = max_diff(params(resumed), params(straight))
    print(f"resumed vs straight: max abs diff {diff:.3g}")
    assert diff <= 1e-12
    with weights_only.init_module():
        fresh_adam = EPClassifier()
    fresh_adam.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    weights_only.fit(fresh_adam, datamodule=data)
    assert max_diff(params(fresh_adam), params(straight)) > 1e-6, "a fresh Adam state should train differently"


def test_a_diverged_loss_stops_training():
    """The divergence guard: a non-finite loss at the free state ends ``fit`` with the reason."""
    module = EPClassifier()
    with torch.no_grad():
        next(module.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="before any settling"):
        trainer(max_steps=1).fit(module, datamodule=ToyData(8, 4))
