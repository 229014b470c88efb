"""Atomic Trainer checkpoints: a ``checkpoint-N`` folder exists only once every file in it has been written.

The stock ``Trainer._save_checkpoint`` (transformers 5.24) writes straight into ``output_dir/checkpoint-N``: the
weights first, then optimizer, scheduler, scaler, RNG states and last ``trainer_state.json``. A process killed in
between (SIGKILL, OOM killer, pre-emption) leaves a half-written ``checkpoint-N`` that ``get_last_checkpoint`` and
``train(resume_from_checkpoint=True)`` pick as the newest: resuming then either fails (no ``trainer_state.json``)
or, worse, silently resumes with a fresh optimizer (``_load_optimizer_and_scheduler`` skips a missing
``optimizer.pt`` without a word).

:class:`AtomicCheckpointMixin` lets the stock method write everything into a staging folder
``output_dir/.tmp-checkpoint-N/checkpoint-N`` (every rank writes its files there, as it would into the final
folder), fsyncs it, and only then ``os.replace`` s it to ``output_dir/checkpoint-N`` (one atomic rename on POSIX).
The staging name matches neither ``get_last_checkpoint``'s ``^checkpoint-(\\d+)$`` nor ``rotate_checkpoints``'
``checkpoint-*`` glob, so an interrupted save is invisible to resume and rotation; it is cleared on the next save
of the same step and by :func:`remove_stale_staging`.

Every checkpoint ends with ``ep_manifest.json`` (each file's size and SHA-256, the step, the training loss at the
save), written last and atomically inside the staging folder; once the next step has measured the training loss of
the checkpoint's own parameters, that loss (``weights_loss``) joins it. Resume verifies it before anything is loaded
and refuses, naming the file, a checkpoint with a file missing, truncated, changed or not listed, without optimizer
state (unless ``ep_resume_without_optimizer_state``), or whose weights or model type do not fit the model. Rotation
keeps the ``save_total_limit`` newest checkpoints, the best one, and the one whose own parameters had the lowest
loss: a run that drifts upwards never deletes its last healthy state, and a checkpoint whose health is not known yet
is never preferred to one known healthy.

Callbacks with state of their own (e.g. :class:`~mep_hf.callbacks.EWCCallback`'s Fisher and anchors) join the
checkpoint through a two-method protocol, :class:`CheckpointStateCallback`: ``save_checkpoint_state(folder)`` writes
their files into the staged folder before the manifest (so they are hashed and verified like the rest), and
``load_checkpoint_state(folder, model)`` reads them back after verification.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .run_lock import OutputDirLock, OutputDirLockedError

STAGING_PREFIX = ".tmp-"
TRAINER_STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "ep_manifest.json"
OPTIMIZER_STATE_FILES = ("optimizer.pt", "scheduler.pt")
# The settings a resumed run shares with its checkpoint (recorded in the manifest): they decide EP's gradient or the
# optimizer's step, so a resume that changes one continues another run. ``ep_resume_allow_changes`` names those a
# user changes on purpose. The saved optimizer and scheduler state hold the optimizer's type and hyperparameters: a
# change of those needs a fresh optimizer (OPTIMIZER_STATE); a new learning rate rescales the saved one.
RESUME_SETTINGS = (
    "ep_energy", "ep_beta", "ep_nudge_displacement", "ep_nudging", "ep_free_steps", "ep_nudged_steps",
    "ep_settle_mode", "ep_settle_steps", "ep_settle_lr", "ep_settle_tol",
    "optim", "optim_args", "mep_optimizer", "mep_optimizer_options", "learning_rate", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "gradient_accumulation_steps", "per_device_train_batch_size",
)
OPTIMIZER_STATE = (
    "optim", "optim_args", "mep_optimizer", "mep_optimizer_options", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
)
# manifest key: the training loss of the checkpoint's own parameters, recorded when the next step measures it
WEIGHTS_LOSS = "weights_loss"


class CheckpointIntegrityError(ValueError):
    """A checkpoint cannot be resumed from as it is: a file is missing, damaged or does not fit the model."""


@runtime_checkable
class CheckpointStateCallback(Protocol):
    """A ``TrainerCallback`` whose state is part of the Trainer's checkpoints (see the module docstring)."""

    def save_checkpoint_state(self, folder: str) -> None: ...

    def load_checkpoint_state(self, folder: str, model: nn.Module | None = None) -> None: ...


def _stateful_callbacks(trainer) -> list[CheckpointStateCallback]:
    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CheckpointStateCallback)]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: str) -> list[str]:
    """Every file under ``folder`` (relative paths) but the manifest itself."""
    found = []
    for root, _dirs, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, n), folder) for n in sorted(names)]
    return [rel for rel in found if rel not in (MANIFEST_NAME, MANIFEST_NAME + ".tmp")]


def write_manifest(folder: str, **metadata) -> None:
    """Record every file of ``folder`` (size, SHA-256) and ``metadata`` in its manifest, atomically, last."""
    files = {}
    for rel in _files(folder):
        path = os.path.join(folder, rel)
        files[rel] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
    write_manifest_data(folder, {"format": 1, **metadata, "files": files})


def write_manifest_data(folder: str, manifest: dict) -> None:
    tmp = os.path.join(folder, MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, MANIFEST_NAME))


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        with open(path) as f:
            manifest = json.load(f)
        manifest["files"].items()
    except FileNotFoundError:
        raise CheckpointIntegrityError(
            f"checkpoint {folder} has no {MANIFEST_NAME}, so its files cannot be verified: it was not written by "
            "EPTrainer (or by an older mep_hf). Resume from a checkpoint EPTrainer wrote, or load its weights with "
            "from_pretrained and start a new run."
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointIntegrityError(f"{path} is damaged ({err})") from None
    return manifest


def mark_diverged(folder: str, reason: str) -> None:
    """Record in the manifest that training diverged on this checkpoint's parameters (resume then refuses it)."""
    manifest = read_manifest(folder)
    write_manifest_data(folder, {**manifest, "diverged": reason})


def verify_checkpoint(folder: str, without_optimizer_state: bool = False) -> dict:
    """Check every file against the manifest; return the manifest. Raises :class:`CheckpointIntegrityError`
    naming the first file that is missing, truncated or changed. ``without_optimizer_state``: the optimizer and
    scheduler files may be missing (they are then not loaded and the optimizer starts afresh)."""
    manifest = read_manifest(folder)
    if manifest.get("diverged"):
        raise CheckpointIntegrityError(
            f"checkpoint {folder} holds the parameters on which training diverged ({manifest['diverged']}); "
            "resume from an earlier checkpoint"
        )
    optional = set(OPTIMIZER_STATE_FILES) if without_optimizer_state else set()
    for name in OPTIMIZER_STATE_FILES:
        if name not in manifest["files"] and name not in optional:
            raise CheckpointIntegrityError(
                f"checkpoint {folder} holds no {name}: resuming would silently restart the optimizer. "
                "Pass ep_resume_without_optimizer_state=True to resume with a fresh optimizer state."
            )
    unlisted = sorted(set(_files(folder)) - set(manifest["files"]))
    if unlisted:
        raise CheckpointIntegrityError(
            f"checkpoint {folder} holds {', '.join(unlisted[:5])}, which its manifest does not list: a file was "
            "added or its entry removed since the save, so it cannot be verified"
        )
    for rel, entry in manifest["files"].items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            if rel in optional:
                continue
            hint = " (or pass ep_resume_without_optimizer_state=True)" if rel in OPTIMIZER_STATE_FILES else ""
            raise CheckpointIntegrityError(f"checkpoint {folder} is incomplete: {rel} is missing{hint}")
        size = os.path.getsize(path)
        if size != entry["size"]:
            raise CheckpointIntegrityError(
                f"checkpoint {folder} is damaged: {rel} has {size} bytes, {entry['size']} were saved (truncated?)"
            )
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointIntegrityError(f"checkpoint {folder} is damaged: {rel} changed since it was saved "
                                           "(its SHA-256 differs from the manifest's)")
    return manifest


def resume_settings(args) -> dict:
    """``args``' values of :data:`RESUME_SETTINGS`, as JSON (enums by their value)."""
    values = {}
    for name in RESUME_SETTINGS:
        if hasattr(args, name):
            value = getattr(args, name)
            values[name] = getattr(value, "value", value)
    return json.loads(json.dumps(values, default=str))


def changed_settings(folder: str, manifest: dict, args) -> list[str]:
    """The settings of :data:`RESUME_SETTINGS` that ``args`` changes from the checkpoint's. Refuses (naming each,
    with both values) a change ``args.ep_resume_allow_changes`` does not allow; returns the allowed ones."""
    saved, now = manifest.get("settings") or {}, resume_settings(args)
    changed = {k: (saved[k], now[k]) for k in saved if k in now and saved[k] != now[k]}
    allowed = set(getattr(args, "ep_resume_allow_changes", None) or ())
    refused = [k for k in changed if k not in allowed]
    if refused:
        listed = "; ".join(f"{k}: {changed[k][0]!r} in the checkpoint, {changed[k][1]!r} now" for k in refused)
        why = (" (the saved optimizer and scheduler state hold the checkpoint's: allowing this change needs "
               "ep_resume_without_optimizer_state=True, and they start afresh)"
               if set(refused) & set(OPTIMIZER_STATE) else "")
        raise CheckpointIntegrityError(
            f"checkpoint {folder} was trained with other settings than this run's: {listed}. Resuming would continue "
            f"another run than the one saved{why}. Set them back, or pass ep_resume_allow_changes="
            f"{refused!r} to change them on purpose."
        )
    return sorted(changed)


def check_weights_fit(model: nn.Module, folder: str) -> None:
    """Refuse a checkpoint whose ``config.json`` names another model type, or whose ``model.safetensors`` has other
    keys or shapes than ``model`` (a tied weight saved once counts as present)."""
    config_path = os.path.join(folder, "config.json")
    expected_type = getattr(getattr(model, "config", None), "model_type", None)
    if os.path.isfile(config_path) and expected_type is not None:
        with open(config_path) as f:
            saved_type = json.load(f).get("model_type")
        if saved_type != expected_type:
            raise CheckpointIntegrityError(
                f"checkpoint {folder} holds a {saved_type!r} model, but the model being trained is {expected_type!r}"
            )
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights):
        return
    try:
        with safe_open(weights, framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as err:
        raise CheckpointIntegrityError(f"{weights} is not a readable safetensors file: {err}") from None
    state = model.state_dict()
    present = {t.data_ptr() for k, t in state.items() if k in saved}
    missing = [k for k, t in state.items() if k not in saved and t.data_ptr() not in present]
    unexpected = sorted(set(saved) - set(state))
    wrong = [f"{k} {saved[k]} vs {tuple(t.shape)}" for k, t in state.items() if k in saved and saved[k] != tuple(t.shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"shapes differ: {wrong[:5]}" if wrong else ""]
        raise CheckpointIntegrityError(
            f"the weights in {weights} do not fit {type(model).__name__}: " + "; ".join(p for p in parts if p)
        )


def _step(path: str) -> int:
    match = re.search(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)$", path)
    return int(match.group(1)) if match else -1


def _checkpoints(run_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of ``run_dir``, oldest step first."""
    names = [n for n in os.listdir(run_dir) if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", n)]
    return sorted((os.path.join(run_dir, n) for n in names if os.path.isdir(os.path.join(run_dir, n))), key=_step)


def record_weights_loss(folder: str, loss: float) -> None:
    """Record the training loss of ``folder``'s own parameters (the first one measured on them) in its manifest."""
    manifest = read_manifest(folder)
    if WEIGHTS_LOSS not in manifest:
        write_manifest_data(folder, {**manifest, WEIGHTS_LOSS: loss})


def healthiest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint whose own parameters had the lowest training loss (``weights_loss``), diverged ones excluded;
    ``None`` while no checkpoint's health is known. ``train_loss`` (the loss at the save) is not used: it was
    measured on the parameters before the checkpoint's own update, which may be the one that diverged."""
    best, best_loss = None, math.inf
    for path in _checkpoints(run_dir):
        try:
            manifest = read_manifest(path)
        except CheckpointIntegrityError:
            continue
        loss = manifest.get(WEIGHTS_LOSS)
        if not manifest.get("diverged") and isinstance(loss, (int, float)) and math.isfinite(loss) and loss < best_loss:
            best, best_loss = path, loss
    return best


def rotate_checkpoints(run_dir: str, save_total_limit: int | None, keep: list[str | None]) -> None:
    """Delete all but the ``save_total_limit`` newest checkpoints and those in ``keep`` (the trainer keeps the best
    one and the healthiest, so the last checkpoint known healthy is never deleted)."""
    if not save_total_limit:
        return
    checkpoints = _checkpoints(run_dir)
    kept = {os.path.abspath(p) for p in checkpoints[-save_total_limit:]} | {os.path.abspath(k) for k in keep if k}
    for path in checkpoints:
        if os.path.abspath(path) not in kept:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(path: str) -> None:
    """Flush every file and folder under ``path`` to disk, so the rename never publishes unwritten data."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(staged: str, final: str) -> None:
    """Move the complete folder ``staged`` to ``final`` atomically (replacing an older ``final``, if any)."""
    _fsync_tree(staged)
    parent = os.path.dirname(final)
    if os.path.isdir(final):  # re-saving a step: rename() cannot replace a non-empty folder in one go
        old = os.path.join(parent, f"{STAGING_PREFIX}old-{os.path.basename(final)}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync_dir(parent)


def remove_stale_staging(run_dir: str) -> None:
    """Delete staging folders left by a save that was interrupted (they are never resumed from)."""
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name.startswith(STAGING_PREFIX + PREFIX_CHECKPOINT_DIR) or name.startswith(STAGING_PREFIX + "old-"):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


class AtomicCheckpointMixin:
    """Mix into a ``Trainer`` subclass (before ``Trainer``) to make ``_save_checkpoint`` atomic and verified.

    Everything the stock method does still happens (model, optimizer, scheduler, scaler, RNG states, trainer
    state, best-checkpoint bookkeeping, Hub push), in a staging folder; the manifest is written last; then the
    folder is renamed into place by the process(es) that save (``args.should_save``), between two barriers so that
    every rank's files (``rng_state_{rank}.pth``) are in before the manifest and nobody reads the checkpoint before
    the rename. Resume (``_load_from_checkpoint``) verifies the manifest and the weights' fit first. When training
    diverges on checkpointed parameters, that checkpoint's manifest says so and resume refuses it.
    """

    def train(self, *args, **kwargs):
        """``Trainer.train`` holding ``output_dir``'s lock (:mod:`mep_hf.run_lock`): a second run on the same folder
        is refused naming this one. Under DDP the process that saves holds it, and every rank learns of a refusal."""
        lock, error = OutputDirLock(self.args.output_dir), None
        if self.args.should_save:
            try:
                lock.acquire()
            except OutputDirLockedError as err:
                error = err
        if self.args.world_size > 1:
            flag = torch.tensor([float(error is not None)], device=self.args.device)
            if float(self.accelerator.reduce(flag, "sum")) > 0 and error is None:
                error = OutputDirLockedError(f"output_dir {self.args.output_dir} is in use by another training run "
                                             "(the process of this run that saves found it locked)")
        if error is not None:
            lock.release()
            raise error
        try:
            return super().train(*args, **kwargs)
        finally:
            lock.release()

    def _checkpoint_train_loss(self) -> float | None:
        """The recent training loss recorded in the manifest (the rotation keeps the lowest); subclasses supply it."""
        return None

    def _checkpoint_of_current_parameters(self) -> str | None:
        """The checkpoint holding the parameters being trained now, if this process writes it and it exists."""
        folder = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        return folder if self.args.should_save and os.path.isfile(os.path.join(folder, MANIFEST_NAME)) else None

    def _record_checkpoint_health(self, loss: float) -> None:
        """A training loss measured on the current parameters is the health of their checkpoint (the first one
        measured is recorded; rotation keeps the healthiest checkpoint)."""
        folder = self._checkpoint_of_current_parameters()
        if folder is not None:
            record_weights_loss(folder, loss)

    def _healthiest_checkpoint_hint(self) -> str:
        """Where to resume from after a divergence: the checkpoint whose own weights had the lowest loss."""
        folder = healthiest_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if folder is None:
            return ""
        loss = read_manifest(folder)[WEIGHTS_LOSS]
        return f". The healthiest checkpoint is {folder} (the training loss of its weights: {loss:.4g})"

    def _mark_checkpoint_diverged(self, reason: str) -> None:
        """Training diverged on the current parameters: if they are checkpointed, mark that checkpoint."""
        folder = self._checkpoint_of_current_parameters()
        if folder is not None:
            mark_diverged(folder, reason)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        manifest = verify_checkpoint(resume_from_checkpoint,
                                     getattr(self.args, "ep_resume_without_optimizer_state", False))
        changed = changed_settings(resume_from_checkpoint, manifest, self.args)
        self._ep_new_optimizer = bool(set(changed) & set(OPTIMIZER_STATE))
        saved_lr = manifest["settings"]["learning_rate"] if "learning_rate" in changed else None
        self._ep_lr_ratio = self.args.learning_rate / saved_lr if saved_lr else None
        model = model if model is not None else self.model
        check_weights_fit(model, resume_from_checkpoint)
        for callback in _stateful_callbacks(self):
            callback.load_checkpoint_state(resume_from_checkpoint, model)
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """The stock loading, with the changes ``ep_resume_allow_changes`` allows: another optimizer type or
        hyperparameter starts optimizer and scheduler afresh (the saved state holds the old ones); a new
        learning rate rescales the saved one (the moments are kept)."""
        fresh = getattr(self, "_ep_new_optimizer", False)
        super()._load_optimizer_and_scheduler(None if fresh else checkpoint)
        ratio = getattr(self, "_ep_lr_ratio", None)
        if checkpoint is None or fresh or ratio is None:
            return
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        scheduler = getattr(self.lr_scheduler, "base_lrs", None) is not None and self.lr_scheduler
        if scheduler:
            scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
            scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, name)
        staging_root = os.path.join(run_dir, STAGING_PREFIX + name)
        staged = os.path.join(staging_root, name)
        if self.args.should_save:
            if not getattr(self, "_ep_staging_cleared", False):  # leftovers of interrupted saves, once per run
                remove_stale_staging(run_dir)
                self._ep_staging_cleared = True
            shutil.rmtree(staging_root, ignore_errors=True)
            os.makedirs(staging_root, exist_ok=True)
        self.accelerator.wait_for_everyone()

        # Shadow two methods on the instance for the duration of the stock save: it writes under the staging
        # root, and the Hub push waits until the checkpoint is in its final place.
        self._get_output_dir = lambda trial=None: staging_root
        self._push_from_checkpoint = lambda folder: None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir, self._push_from_checkpoint

        # The stock method points best_model_checkpoint at the staging path when this step is the best one (it
        # cannot see older checkpoints under the staging root, so otherwise it leaves the value alone).
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))

        self.accelerator.wait_for_everyone()  # every rank's files are in the staging folder
        if self.args.should_save:
            for callback in _stateful_callbacks(self):
                callback.save_checkpoint_state(staged)
            write_manifest(staged, global_step=self.state.global_step, train_loss=self._checkpoint_train_loss(),
                           settings=resume_settings(self.args))
            publish(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            keep = [self.state.best_model_checkpoint, healthiest_checkpoint(run_dir)]
            rotate_checkpoints(run_dir, self.args.save_total_limit, keep)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
