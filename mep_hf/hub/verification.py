"""``mep-hf-zoo verify``: an image card's accuracy reproduced by ``pipeline()``, with mep_hf's own classes, or (opted
in with ``--trust-remote-code``) with the folder's code in a process without mep_hf, as a user without it would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from huggingface_hub import ModelCard

from .specs import ZOO_DATASETS, ZooError
from .transfer import check_files

# run by path in a fresh interpreter, where it makes mep_hf unimportable (see its docstring)
WITHOUT_MEP_HF = Path(__file__).with_name("without_mep_hf.py")


def run_without_mep_hf(*args: str, env: dict[str, str] | None = None, timeout: float | None = None) -> list[dict]:
    """Run the jobs of :mod:`mep_hf.hub.without_mep_hf` in a fresh interpreter where mep_hf cannot be imported
    (offline unless ``env`` says otherwise); returns one dict per job."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update({"HF_HUB_OFFLINE": "1"}, **(env or {}))
    proc = subprocess.run([sys.executable, str(WITHOUT_MEP_HF), *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=full_env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise ZooError(f"the run without mep_hf failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return [json.loads(line) for line in lines]


def verify(zoo_dir: str | Path, *, split: str = "test", batch_size: int = 1000, limit: int | None = None,
           trust_remote_code: bool = False, verify_files: bool = True) -> dict:
    """Reproduce an image zoo card's accuracy: the card's dataset split (loaded with mep_hf's loader) is written
    out as PNG files, exactly (each pixel must be ``uint8 · rescale_factor``), and ``pipeline("image-classification")``
    classifies them. Every file is first checked against the folder's ``zoo_manifest.json`` (``verify_files``).

    No code of the folder runs unless ``trust_remote_code``: the pipeline runs here, with mep_hf's own classes (the
    folder's ``auto_map`` names code that is not imported). With it, the pipeline runs the folder's code with
    ``trust_remote_code=True`` in a process where mep_hf cannot be imported, as a user without mep_hf would.
    Returns the card's and the pipeline's accuracy; raises if the pixels or numbers differ."""
    import importlib

    import numpy as np
    from PIL import Image

    zoo_dir = Path(zoo_dir)
    if verify_files:
        check_files(zoo_dir)
    card = ModelCard.load(zoo_dir / "README.md")
    dataset = (card.data.get("mep_hf") or {}).get("dataset")
    if dataset not in ZOO_DATASETS:
        raise ZooError(f"{zoo_dir}: the card names no known dataset ({dataset!r}); known: {sorted(ZOO_DATASETS)}")
    claimed = next((r for r in card.data.eval_results or []
                    if r.dataset_split == split and r.metric_type == "accuracy"), None)
    if claimed is None:
        raise ZooError(f"{zoo_dir}: the card has no {split} accuracy")
    processor = json.loads((zoo_dir / "preprocessor_config.json").read_text())
    factor, channels = processor["rescale_factor"], processor.get("num_channels", 1)
    side = processor["size"]["height"]
    module, _, name = ZOO_DATASETS[dataset].loader.rpartition(".")
    data = getattr(importlib.import_module(module), name)()[split]
    if limit is not None:
        data = data.select(range(limit))
    rows = data.with_format("numpy")[:]
    x = np.asarray(rows["pixel_values"], dtype=np.float32).reshape(len(data), channels, side, side)
    u8 = np.rint(x / np.float32(factor)).astype(np.uint8)
    if not np.array_equal((u8.astype(np.float64) * factor).astype(np.float32), x):
        raise ZooError(f"{dataset} {split} pixels are not uint8 * {factor}: PNG files cannot reproduce them")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mep_hf_verify_") as tmp:
        for i, (image, label) in enumerate(zip(u8, rows["labels"])):
            array = image[0] if channels == 1 else image.transpose(1, 2, 0)
            Image.fromarray(array, "L" if channels == 1 else "RGB").save(f"{tmp}/{i}_{int(label)}.png")
        if trust_remote_code:
            (result,) = run_without_mep_hf("image", str(zoo_dir.resolve()), tmp, str(batch_size),
                                           env={"HF_HOME": str(Path(tmp) / "hf_home")})
        else:
            from .. import models  # noqa: F401  (registers mep_hf's classes with the Auto classes)
            from .without_mep_hf import image

            result = image(str(zoo_dir.resolve()), tmp, str(batch_size), trust_remote_code=False)
            result["mep_hf_imported"] = True
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    out = {"zoo_dir": str(zoo_dir), "dataset": dataset, "split": split, "n": result["n"],
           "card_accuracy": claimed.metric_value, "pipeline_accuracy": result["accuracy"],
           "pixels_identical": result["pixels_sha256"] == digest, "mep_hf_imported": result["mep_hf_imported"],
           "seconds": round(time.perf_counter() - start, 1)}
    if limit is None and (out["pipeline_accuracy"] != out["card_accuracy"] or not out["pixels_identical"]):
        raise ZooError(f"{zoo_dir}: not reproduced: {out}")
    return out
