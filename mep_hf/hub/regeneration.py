"""``mep-hf-zoo regenerate``: a packaged folder's flat remote code (and its record of file digests), rewritten
from the installed mep_hf."""

from __future__ import annotations

import json
from pathlib import Path

from .specs import ZooError
from .transfer import FILES_RECORD, files_record


def remote_code_classes(zoo_dir: str | Path) -> list[type]:
    """The mep_hf classes a packaged folder's remote code is generated from, read from the ``auto_map`` of its
    ``config.json`` and ``preprocessor_config.json``, in ``package``'s order: config, model, image processor."""
    from .. import models

    zoo_dir = Path(zoo_dir)
    entries = []
    for file in ("config.json", "preprocessor_config.json"):
        if (zoo_dir / file).is_file():
            entries += json.loads((zoo_dir / file).read_text(encoding="utf-8")).get("auto_map", {}).values()
    if not entries:
        raise ZooError(f"{zoo_dir}: no auto_map in config.json: not a packaged zoo folder")
    classes = []
    for entry in entries:
        stem, _, name = entry.rpartition(".")
        cls = getattr(models, name, None)
        if cls is None or cls.__module__.rpartition(".")[2] != stem:
            raise ZooError(f"{zoo_dir}: auto_map names {entry}, which is no class of mep_hf.models")
        classes.append(cls)
    return sorted(dict.fromkeys(classes), key=lambda c: not c.__name__.endswith("Config"))


def regenerate(zoo_dir: str | Path, check: bool = False, version: str | None = None) -> list[str]:
    """Rewrite the flat remote code of a packaged folder from the installed mep_hf (weights, configs and card
    untouched), and its record of file digests (``zoo_manifest.json``) to match. Returns the files that were out
    of date (with ``check``: left as they are)."""
    from .remote_code import flatten_sources

    zoo_dir = Path(zoo_dir)
    sources = flatten_sources(remote_code_classes(zoo_dir), version)
    stale = sorted(name for name, text in sources.items()
                   if not (zoo_dir / name).is_file() or (zoo_dir / name).read_text(encoding="utf-8") != text)
    leftovers = sorted(p.name for p in zoo_dir.glob("*.py") if p.name not in sources)  # from another model
    stale += leftovers
    record = files_record(zoo_dir, {name: text.encode("utf-8") for name, text in sources.items()}, leftovers)
    record_path = zoo_dir / FILES_RECORD
    if not record_path.is_file() or record_path.read_text(encoding="utf-8") != record:
        stale.append(FILES_RECORD)
    if not check:
        for name in stale:
            if name in sources:
                (zoo_dir / name).write_text(sources[name], encoding="utf-8")
            elif name in leftovers:
                (zoo_dir / name).unlink()
        record_path.write_text(record, encoding="utf-8")
    return stale


def packaged_folders(zoo_root: str | Path = "model_zoo") -> list[Path]:
    """The folders of ``zoo_root`` that hold a packaged model (a ``config.json``), by name."""
    return sorted(p.parent for p in Path(zoo_root).glob("*/config.json"))
