"""Nothing lost, nothing silent: each attack of issue 12 ends in a clear error naming the problem, or in an exact
resume. (docs/reliability.md lists them with their outcomes.)"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from mep_hf import (
    CheckpointIntegrityError,
    EPCharTransformerConfig,
    EPCharTransformerForCausalLM,
    EPMLPForImageClassification,
    EPTrainer,
    TrainingDivergedError,
)
from mep_hf.checkpointing import (
    MANIFEST_NAME,
    WEIGHTS_LOSS,
    healthiest_checkpoint,
    mark_diverged,
    record_weights_loss,
    rotate_checkpoints,
    verify_checkpoint,
    write_manifest,
)
from mep_hf.equilibrium import SettlingDivergedError
from mep_hf.guard import LossGuard
from mep_hf.run_lock import LOCK_NAME, OutputDirLockedError
from tests.conftest import toy_args, toy_images, toy_model

STEPS = dict(max_steps=6, save_strategy="steps", save_steps=3)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One EP run with checkpoints at steps 3 and 6, and its final parameters: the reference for exact resumes."""
    root = tmp_path_factory.mktemp("run")
    trainer = EPTrainer(model=toy_model(), args=toy_args(root, **STEPS), train_dataset=toy_images())
    trainer.train()
    return root / "out", params(trainer.model)


@pytest.fixture
def checkpoint(run, tmp_path):
    """A private copy of the run's checkpoint-3, to damage."""
    out, _ = run
    copy = tmp_path / "out" / "checkpoint-3"
    shutil.copytree(out / "checkpoint-3", copy)
    return copy


def resume(tmp_path, checkpoint, model=None, **overrides):
    trainer = EPTrainer(model=model or toy_model(seed=7), args=toy_args(tmp_path, **{**STEPS, **overrides}),
                        train_dataset=toy_images())
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer


def test_every_checkpoint_ends_with_a_manifest_of_its_files(run):
    out, _ = run
    for name in ("checkpoint-3", "checkpoint-6"):
        manifest = verify_checkpoint(str(out / name))
        files = {p.name for p in (out / name).iterdir()} - {MANIFEST_NAME}
        assert set(manifest["files"]) == files
        assert manifest["global_step"] == int(name.split("-")[1]) and manifest["train_loss"] > 0


def test_intact_checkpoint_resumes_exactly(run, tmp_path, checkpoint):
    _, final = run
    resumed = resume(tmp_path, checkpoint)
    for k, v in final.items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt"])
def test_missing_optimizer_state_is_refused_unless_opted_out(tmp_path, checkpoint, name):
    (checkpoint / name).unlink()
    with pytest.raises(CheckpointIntegrityError, match=rf"{name} is missing.*ep_resume_without_optimizer_state"):
        resume(tmp_path, checkpoint)
    trainer = resume(tmp_path, checkpoint, ep_resume_without_optimizer_state=True)
    assert trainer.state.global_step == 6


def test_damaged_files_are_refused_naming_the_file(tmp_path, checkpoint):
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match=r"model\.safetensors changed since it was saved"):
        resume(tmp_path, checkpoint)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointIntegrityError, match=r"model\.safetensors has \d+ bytes, \d+ were saved"):
        resume(tmp_path, checkpoint)
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))  # intact again
    (checkpoint / "trainer_state.json").unlink()
    with pytest.raises(CheckpointIntegrityError, match=r"trainer_state\.json is missing"):
        resume(tmp_path, checkpoint)


def test_files_the_manifest_does_not_list_are_refused(tmp_path, checkpoint):
    """A manifest that omits model.safetensors (its entry removed, the weights swapped) or a file added after the
    save: the checkpoint cannot be verified, and resume refuses it naming the file."""
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    del manifest["files"]["model.safetensors"]
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointIntegrityError, match=r"holds model\.safetensors, which its manifest does not list"):
        resume(tmp_path, checkpoint)
    write_manifest(str(checkpoint), global_step=3, train_loss=1.0)
    (checkpoint / "extra.bin").write_bytes(b"payload")
    with pytest.raises(CheckpointIntegrityError, match=r"holds extra\.bin, which its manifest does not list"):
        verify_checkpoint(str(checkpoint))


def test_resume_refuses_changed_settings_by_name_unless_allowed(tmp_path, checkpoint):
    """The EP and optimization settings are the checkpoint's or the resume is refused, naming each change (was:
    accepted in silence; another optimizer type crashed with KeyError 'momentum')."""
    changes = dict(ep_beta=0.02, ep_nudging="centered", ep_settle_steps=2, gradient_accumulation_steps=2,
                   learning_rate=2e-2)
    with pytest.raises(CheckpointIntegrityError, match="other settings") as err:
        resume(tmp_path, checkpoint, **changes)
    for name, value in changes.items():
        assert f"{name}: " in str(err.value) and f"{value!r} now" in str(err.value), name
    with pytest.raises(CheckpointIntegrityError, match=r"optim: 'adamw_torch\w*' in the checkpoint, 'sgd' now.*"
                                                        r"ep_resume_without_optimizer_state=True"):
        resume(tmp_path, checkpoint, optim="sgd")
    trainer = resume(tmp_path, checkpoint, learning_rate=2e-2, ep_resume_allow_changes="learning_rate")
    assert trainer.state.global_step == 6 and set(trainer.lr_scheduler.base_lrs) == {2e-2}  # the saved 1e-2, rescaled
    trainer = resume(tmp_path, checkpoint, optim="sgd", ep_resume_allow_changes=["optim"],
                     ep_resume_without_optimizer_state=True)
    assert trainer.state.global_step == 6 and isinstance(trainer.optimizer.optimizer, torch.optim.SGD)


def test_invalid_resume_overrides_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"ep_resume_allow_changes names \['ep_bta'\]"):
        toy_args(tmp_path, ep_resume_allow_changes="learning_rate,ep_bta")
    with pytest.raises(ValueError, match=r"names \['mep_optimizer'\], which the saved optimizer.*"
                                         "ep_resume_without_optimizer_state=True"):
        toy_args(tmp_path, ep_resume_allow_changes=["mep_optimizer"])


def test_a_second_run_on_the_same_output_dir_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, dataset):
    """Another process holds output_dir's lock (as a run does for the whole of train()): this run is refused naming
    its pid and host, before any step. Once that process is killed, its lock file is left behind, and is taken over."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / LOCK_NAME)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, max_steps=2), train_dataset=dataset)
        with pytest.raises(OutputDirLockedError, match=rf"in use by another training run \(pid {holder.pid} on host "
                                                        rf"{socket.gethostname()}"):
            trainer.train()
        assert trainer.state.global_step == 0
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).is_file()  # the dead run's lock file, left behind
    trainer.train()
    assert trainer.state.global_step == 2 and not (out / LOCK_NAME).exists()


HOLD_LOCK = """
import fcntl, json, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}).encode())
print("held", flush=True)
sys.stdin.read()
"""


def test_checkpoint_without_manifest_is_refused(tmp_path, dataset):
    stock = Trainer(model=toy_model(), train_dataset=dataset, args=TrainingArguments(
        output_dir=str(tmp_path / "stock"), max_steps=2, save_strategy="steps", save_steps=2, report_to="none",
        use_cpu=True))
    stock.train()
    with pytest.raises(CheckpointIntegrityError, match=f"has no {MANIFEST_NAME}"):
        resume(tmp_path, tmp_path / "stock" / "checkpoint-2")


def test_weights_of_another_architecture_are_refused_not_loaded_with_a_warning(tmp_path, checkpoint):
    with pytest.raises(CheckpointIntegrityError, match=r"do not fit EPMLPForImageClassification: missing"):
        resume(tmp_path, checkpoint, model=toy_model(hidden_sizes=[32, 32, 32]))
    with pytest.raises(CheckpointIntegrityError, match=r"shapes differ"):
        resume(tmp_path, checkpoint, model=toy_model(hidden_sizes=[32, 16]))
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "ep_convnet"}))
    write_manifest(str(checkpoint), global_step=3, train_loss=1.0)  # a consistent checkpoint of another model type
    with pytest.raises(CheckpointIntegrityError, match=r"holds a 'ep_convnet' model.*'ep_mlp'"):
        resume(tmp_path, checkpoint)


def test_exploding_loss_stops_training_and_the_kept_checkpoints_health_is_their_own(tmp_path):
    """learning_rate=3 with Adam (8 warm-up steps), a save every step, save_total_limit=2: the loss climbs from
    1.36 to 17 within five steps. The guard stops the run in the step that sees it explode, blaming the update; the
    checkpoint holding the exploded parameters is marked so and refused on resume. Each kept checkpoint's health is
    the loss of its own parameters (measured here on all 512 examples; the manifest's is the next step's batch of
    16, so within a factor 2): the loss at the save, a median of losses before the checkpoint's own update, said
    1.41 for checkpoint-3, whose weights have a loss of 6.4. Rotation kept the healthiest beyond the limit."""
    args = toy_args(tmp_path, learning_rate=3.0, warmup_steps=8, max_steps=200, save_strategy="steps", save_steps=1,
                    save_total_limit=2, logging_steps=1)
    trainer = EPTrainer(model=toy_model(), args=args, train_dataset=toy_images(512))
    with pytest.raises(TrainingDivergedError, match="learning_rate") as err:
        trainer.train()
    assert "ep_beta" not in str(err.value)
    out, step = tmp_path / "out", trainer.state.global_step
    with pytest.raises(CheckpointIntegrityError, match="training diverged"):
        verify_checkpoint(str(out / f"checkpoint-{step}"))
    checkpoints = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))
    batch = toy_images(512)[:]
    with torch.no_grad():
        own = {name: float(EPMLPForImageClassification.from_pretrained(out / name)(**batch).loss) for name in checkpoints}
    for name in checkpoints:
        recorded = json.loads((out / name / MANIFEST_NAME).read_text()).get(WEIGHTS_LOSS)
        assert recorded is not None and own[name] / 2 < recorded < 2 * own[name], (name, recorded, own)
    healthiest = healthiest_checkpoint(str(out))
    assert len(checkpoints) == 3 and healthiest == str(out / checkpoints[0]), own  # kept beyond the limit of 2
    assert f"The healthiest checkpoint is {healthiest}" in str(err.value)
    verify_checkpoint(healthiest)
    assert own[checkpoints[0]] < 1.5 < 4 < own[checkpoints[1]] < own[checkpoints[2]]


def test_a_loss_converged_near_zero_may_fluctuate():
    guard = LossGuard(factor=10, window=20)
    for step, loss in enumerate([1.4, 0.5, 1e-3, 1e-5, 3e-6, 3e-6, 3e-6]):
        assert guard.check(loss, step) is None
    assert guard.check(5e-2, 7) is None  # 18000 times the lowest median, but below 10 × 10% of the first loss
    assert "exploded" in guard.check(2.0, 8)


def test_rotation_keeps_the_checkpoint_whose_own_weights_were_healthiest(tmp_path):
    """Six checkpoints whose own weights' loss fell, then climbed (the newest not measured yet, the one of lowest
    loss at its save diverged): with save_total_limit=2 the two newest stay, and so does the healthiest (step 2),
    which the stock rotation would delete; a checkpoint of unknown health or a diverged one is never preferred."""
    at_save = [0.9, 0.3, 0.1, 2.0, 5.0, 0.05]
    own = [0.8, 0.3, 50.0, 4.0, 9.0, None]
    for step, (loss, weights) in enumerate(zip(at_save, own), start=1):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        write_manifest(str(folder), global_step=step, train_loss=loss)
        if weights is not None:
            record_weights_loss(str(folder), weights)
    mark_diverged(str(tmp_path / "checkpoint-3"), "exploded")
    rotate_checkpoints(str(tmp_path), 2, [None, healthiest_checkpoint(str(tmp_path))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-5", "checkpoint-6"]


def test_huge_learning_rate_blames_the_update_not_beta(tmp_path, dataset):
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, learning_rate=1e6, max_steps=20), train_dataset=dataset)
    with pytest.raises(TrainingDivergedError, match="learning_rate") as err:
        trainer.train()
    assert "ep_beta" not in str(err.value)


def test_diverging_settling_blames_beta_not_the_update(tmp_path, dataset):
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, ep_beta=1e6, max_steps=3), train_dataset=dataset)
    with pytest.raises(SettlingDivergedError, match="ep_beta") as err:
        trainer.train()
    assert "learning_rate" not in str(err.value)


def test_invalid_guard_settings_are_refused(tmp_path):
    for field, value in [("ep_loss_guard_factor", 0.5), ("ep_loss_guard_factor", float("nan")), ("ep_loss_guard_window", 2)]:
        with pytest.raises(ValueError, match=field):
            toy_args(tmp_path, **{field: value})


def test_string_or_missing_labels_and_empty_datasets_are_refused_clearly(tmp_path, dataset):
    rows = dataset.with_format(None).to_dict()
    text_labels = Dataset.from_dict({**rows, "labels": [str(v) for v in rows["labels"]]}).with_format("torch")
    with pytest.raises(ValueError, match=r"column 'labels' holds strings.*class_encode_column"):
        EPTrainer(model=toy_model(), args=toy_args(tmp_path), train_dataset=text_labels)
    with pytest.raises(ValueError, match=r"EP training needs `labels` in every batch"):
        EPTrainer(model=toy_model(), args=toy_args(tmp_path, max_steps=1), train_dataset=dataset.remove_columns("labels")).train()
    with pytest.raises(ValueError, match="train_dataset is empty"):
        EPTrainer(model=toy_model(), args=toy_args(tmp_path), train_dataset=dataset.select([]))


def char_lm_batch(tmp_path, input_ids, labels, **args):
    model = EPCharTransformerForCausalLM(EPCharTransformerConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1,
                                                                 num_attention_heads=2, max_position_embeddings=8))
    data = Dataset.from_dict({"input_ids": input_ids, "labels": labels}).with_format("torch")
    EPTrainer(model=model, args=toy_args(tmp_path, max_steps=1, per_device_train_batch_size=2, ep_beta=None,
                                         ep_nudging=None, **args), train_dataset=data).train()


@pytest.mark.parametrize("where,value", [("input_ids", 12), ("input_ids", -1), ("labels", 12), ("labels", -5)])
def test_token_ids_and_labels_out_of_range_are_refused_naming_the_range(tmp_path, where, value):
    ids = [[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]]
    bad = [[1, 2, value, 4, 5, 6], [6, 5, 4, 3, 2, 1]]
    inputs = {"input_ids": bad, "labels": ids} if where == "input_ids" else {"input_ids": ids, "labels": bad}
    what = "vocabulary of 12 ids" if where == "input_ids" else "12 classes"
    with pytest.raises(ValueError, match=rf"{where} hold {value}, outside the model's {what} \(0..11"):
        char_lm_batch(tmp_path, **inputs)


def test_a_batch_of_ignored_labels_is_refused_not_blamed_on_the_learning_rate(tmp_path):
    with pytest.raises(ValueError, match=r"every label in this batch is -100 \(ignored\): there is nothing to learn"):
        char_lm_batch(tmp_path, [[1, 2, 3, 4]] * 2, [[-100] * 4] * 2)


def test_a_dataset_smaller_than_one_batch_with_drop_last_is_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match=r"train_dataset has 10 examples, fewer than one batch \(16 per device x 1 "
                                         r"processes\).*training would run 0 steps"):
        EPTrainer(model=toy_model(), args=toy_args(tmp_path, dataloader_drop_last=True),
                  train_dataset=dataset.select(range(10)))
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, max_steps=1), train_dataset=dataset.select(range(10)))
    trainer.train()
    assert trainer.state.global_step == 1  # without drop_last the incomplete batch trains


def test_forcing_triton_on_the_cpu_is_refused_clearly(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("MEP_HF_TRITON", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, max_steps=1), train_dataset=dataset)
    with pytest.raises(RuntimeError, match=r"MEP_HF_TRITON=1.*(CUDA|not installed)"):
        trainer.train()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_mode_after_train_is_what_trainer_leaves(tmp_path, dataset, mode):
    modes = {}
    for name, trainer_cls, args in [
        ("trainer", Trainer, TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=2, report_to="none",
                                               use_cpu=True)),
        ("ep", EPTrainer, toy_args(tmp_path, max_steps=2)),
    ]:
        model = toy_model()
        getattr(model, mode)()
        trainer_cls(model=model, args=args, train_dataset=dataset).train()
        modes[name] = model.training
    assert modes["ep"] == modes["trainer"]


def test_truncated_safetensors_error_names_the_checkpoint(tmp_path):
    toy_model().save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(OSError, match=r"safetensors weights of '.*model' are damaged or truncated"):
        EPMLPForImageClassification.from_pretrained(tmp_path / "model")
