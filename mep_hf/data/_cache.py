"""Cache helpers shared by the dataset loaders (build once, ``save_to_disk``, then ``load_from_disk``)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import datasets

__all__ = ["resolve_cache_dir", "load_or_build"]

CACHE_ENV = "MEP_HF_CACHE"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$MEP_HF_CACHE``, else ``~/.cache/mep_hf``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "mep_hf")
    return Path(os.path.expanduser(os.fspath(cache_dir)))


def _is_complete(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file()


def load_or_build(path: Path, build: Callable[[], datasets.DatasetDict]) -> datasets.DatasetDict:
    """Return the ``DatasetDict`` saved at ``path``, building and saving it first if needed.

    The build is written into a temporary sibling directory and moved into place
    with ``os.replace``, so an interrupted build never leaves a half-written
    cache behind and concurrent builders cannot corrupt each other (the loser
    discards its copy).  The returned object is always the memory-mapped
    ``load_from_disk`` result, so first and later calls behave identically.
    """
    path = Path(path)
    if not _is_complete(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = build()
        # Not tempfile.mkdtemp: its 0o700 mode would stick to the final cache dir.
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            ds.save_to_disk(str(tmp))
            del ds
            if path.exists() and not _is_complete(path):
                # Leftover from something that is not a finished save: replace it.
                shutil.rmtree(path, ignore_errors=True)
            try:
                os.replace(tmp, path)
            except OSError:
                if not _is_complete(path):  # lost a race only if the winner finished
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))
