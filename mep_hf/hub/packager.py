"""``mep-hf-zoo package``: a training run becomes a complete Hub repo folder.

A zoo folder holds ``model.safetensors``, ``config.json`` with ``auto_map``, the flat remote code
(:mod:`mep_hf.hub.remote_code`), the image processor (``preprocessor_config.json``) or fast tokenizer
(``tokenizer.json``), ``training_curve.png`` and ``README.md``, a model card whose numbers are read from the run's
own files (:mod:`mep_hf.hub.run_card`). It loads with ``from_pretrained(folder_or_id)``: with ``import mep_hf``
through the registered classes, without mep_hf through ``trust_remote_code=True``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from .curve import CURVE_FILE, plot_curve
from .run_card import run_card
from .runs import Run
from .transfer import write_files_record
from .specs import ZOO_DATASETS, ZOO_ORG, DatasetSpec, ZooError, task_of


def package(
    run_dir: str | Path,
    zoo_dir: str | Path,
    *,
    repo_id: str | None = None,
    dataset: str | None = None,
    baseline: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn the training run in ``run_dir`` into the Hub repo folder ``zoo_dir`` (see the module docstring).

    ``repo_id`` is the id the card's usage lines name (default ``mep-hf/<folder name>``); ``dataset`` a key of
    :data:`ZOO_DATASETS` (default: ``run_info.json``'s ``"dataset"``); ``baseline`` the run directory of the same
    model trained by backprop on the same budget, compared in the card.
    """
    import transformers

    from .. import models  # noqa: F401  (registers the EP classes with the Auto classes)
    from .remote_code import flat_classes

    run = Run.read(run_dir)
    if run.run_info.get("method", "ep") != "ep":
        raise ZooError(f"{run.path} was trained by {run.run_info['method']}, not EP: zoo checkpoints are EP-trained "
                       "(pass it as --baseline of the EP run instead)")
    zoo_dir = Path(zoo_dir)
    repo_id = repo_id or f"{ZOO_ORG}/{zoo_dir.resolve().name}"
    dataset = dataset or run.run_info.get("dataset")
    spec = ZOO_DATASETS.get(dataset) if dataset else None

    config = transformers.AutoConfig.from_pretrained(run.path)
    architecture = (config.architectures or [None])[0]
    if architecture is None:
        raise ZooError(f"{run.path / 'config.json'} names no architecture")
    task = task_of(architecture)
    auto = getattr(transformers, task.auto_class)
    model = auto.from_pretrained(run.path).eval()

    processor = tokenizer = None
    if task.pipeline_tag == "image-classification":
        processor = _image_processor(run, spec, dataset)
    else:
        tokenizer = _fast_tokenizer(run)

    with tempfile.TemporaryDirectory(prefix="mep_hf_flat_") as tmp:
        objects = [type(config), type(model)] + ([type(processor)] if processor is not None else [])
        flat = flat_classes(objects, tmp)
        flat[type(config)].register_for_auto_class()
        flat[type(model)].register_for_auto_class(task.auto_class)
        flat_model = flat[type(model)].from_pretrained(run.path).eval()
        _check_same_outputs(model, flat_model, processor)
        if zoo_dir.exists() and any(zoo_dir.iterdir()):
            if not overwrite:
                raise ZooError(f"{zoo_dir} is not empty; pass overwrite=True (--overwrite) to replace it")
            shutil.rmtree(zoo_dir)
        zoo_dir.mkdir(parents=True, exist_ok=True)
        flat_model.save_pretrained(zoo_dir)
        if processor is not None:
            flat_processor = flat[type(processor)]
            flat_processor.register_for_auto_class("AutoImageProcessor")
            flat_processor(**_processor_kwargs(processor)).save_pretrained(zoo_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(zoo_dir)

    baseline_run = Run.read(baseline) if baseline is not None else None
    curve = CURVE_FILE if plot_curve(run, task, zoo_dir / CURVE_FILE, baseline_run) else None
    card = run_card(run, zoo_dir.name, repo_id, task, spec, dataset, model, curve, baseline_run, tokenizer)
    card.save(zoo_dir / "README.md")
    write_files_record(zoo_dir)
    return zoo_dir


def _image_processor(run: Run, spec: DatasetSpec | None, dataset: str | None):
    """The run's own image processor (``preprocessor_config.json``, saved by a Trainer given
    ``processing_class``), else one built from the dataset's pixel convention."""
    from ..models.image_processing_ep import EPImageProcessor

    if (run.path / "preprocessor_config.json").is_file():
        processor = EPImageProcessor.from_pretrained(run.path)
        if spec is not None and spec.rescale_factor is not None and processor.rescale_factor != spec.rescale_factor:
            raise ZooError(f"{run.path}: the saved image processor rescales by {processor.rescale_factor}, but "
                           f"{spec.name} pixels are uint8 * {spec.rescale_factor} ({spec.loader})")
        return processor
    if spec is None or spec.rescale_factor is None:
        raise ZooError(
            f"{run.path} has no preprocessor_config.json and its dataset {dataset!r} is not one of "
            f"{sorted(k for k, s in ZOO_DATASETS.items() if s.rescale_factor)}: pass --dataset, or save an "
            "EPImageProcessor with the model (Trainer(processing_class=...))"
        )
    size = {"height": spec.image_size, "width": spec.image_size}
    return EPImageProcessor(rescale_factor=spec.rescale_factor, size=size, num_channels=spec.num_channels)


def _processor_kwargs(processor) -> dict[str, Any]:
    d = processor.to_dict()
    return {k: d[k] for k in processor.valid_kwargs.__annotations__ if k in d}


def _fast_tokenizer(run: Run):
    from transformers import AutoTokenizer

    from ..models.char_transformer.tokenization_ep_char_fast import char_tokenizer_fast_from

    tokenizer = AutoTokenizer.from_pretrained(run.path)
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    return char_tokenizer_fast_from(tokenizer)


def _check_same_outputs(model, flat_model, processor) -> None:
    """The flat remote-code model must compute what the mep_hf model computes, bit for bit, on a probe batch."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    if processor is not None:
        from PIL import Image

        side, mode = processor.size["height"], {1: "L", 3: "RGB"}[processor.num_channels]
        shape = (side, side) if processor.num_channels == 1 else (side, side, 3)
        images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8), mode)
                  for i in range(2)]
        inputs = dict(processor(images, return_tensors="pt"))
    else:
        length = min(8, model.config.max_position_embeddings)
        inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (2, length), generator=g)}
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, flat_model(**inputs).logits
    if not torch.equal(ours, theirs):
        raise ZooError(f"the flat remote code computes different logits (max diff {(ours - theirs).abs().max():.3g})")
