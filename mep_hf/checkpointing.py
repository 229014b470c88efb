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
"""

from __future__ import annotations

import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

STAGING_PREFIX = ".tmp-"
TRAINER_STATE_NAME = "trainer_state.json"


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
    """Mix into a ``Trainer`` subclass (before ``Trainer``) to make ``_save_checkpoint`` atomic.

    Everything the stock method does still happens (model, optimizer, scheduler, scaler, RNG states, trainer
    state, best-checkpoint bookkeeping, Hub push, rotation), in a staging folder; then the folder is renamed into
    place by the process(es) that save (``args.should_save``), between two barriers so that every rank's files
    (``rng_state_{rank}.pth``) are in before the rename and nobody reads the checkpoint before it.
    """

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
            publish(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
