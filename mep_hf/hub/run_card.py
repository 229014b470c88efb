"""The model card of a packaged run: every number read from the run's own files (metrics, ``run_info.json``,
``trainer_state.json``), none typed by hand."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..tasks import Task
from ..version import __version__
from .cards import EP_TAGS, eval_result, zoo_card
from .runs import Run, RunDirError
from .specs import LICENSE, DatasetSpec, format_metric, metric_name


def _machine(machine: Any) -> str:
    """``run_info.json``'s machine (a dict from ``write_run_info``, or a string) in words."""
    if not isinstance(machine, Mapping):
        return str(machine)
    name = machine.get("cuda") or machine.get("cpu") or "unknown machine"
    details = [f"{machine['cores']} cores"] if machine.get("cores") and not machine.get("cuda") else []
    if machine.get("threads"):
        details.append(f"{machine['threads']} torch thread{'s' if machine['threads'] != 1 else ''}")
    return name + (f" ({', '.join(details)})" if details else "")


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _results(run: Run, task: Task, spec: DatasetSpec | None, dataset: str | None):
    dataset_id = (spec.hub_id if spec else None) or dataset or "unknown"
    dataset_name = spec.name if spec else (dataset or "unknown")
    rows, results = [], []
    for split, metric, value in run.results(task.zoo_metrics):
        where = f" ({spec.splits[split]})" if spec and split in spec.splits else ""
        rows.append(f"| {split}{where} | {metric_name(metric)} | {format_metric(metric, value)} |")
        results.append(eval_result(task.pipeline_tag, dataset_id, dataset_name, split, metric, value))
    table = "| split | metric | value |\n|---|---|---|\n" + "\n".join(rows) if rows else ""
    files = [f for f in ("test_results.json", "eval_results.json", "all_results.json") if (run.path / f).is_file()]
    note = f"Read from the run's {', '.join(f'`{f}`' for f in files)} by `mep-hf-zoo package`; none typed by hand."
    return table, note, results


def _describe_model(model, config) -> str:
    """The config's own one-line description (``describe_architecture``), else its model type."""
    describe = getattr(config, "describe_architecture", None)
    shape = describe() if describe is not None else config.model_type
    return f"`{type(model).__name__}` (mep-hf): {shape}. {model.num_parameters():,} parameters, float32 safetensors."


PROMPT = "ROMEO.\n"  # the text-generation example's prompt


def card_usage(task: str, repo_id: str, config, tokenizer=None) -> str:
    """The card's example: ``pipeline`` on ``repo_id`` with the remote code, printing what it returns. A text
    model generates no more tokens than its context holds after the prompt (``max_position_embeddings``)."""
    head = "from transformers import pipeline\n\n"
    if task == "image-classification":
        return head + (
            f'classify = pipeline("image-classification", model="{repo_id}", trust_remote_code=True)\n'
            'print(classify("image.png"))  # a path, URL or PIL image: the top labels with their scores\n'
            "# a list of images: classify(images, batch_size=64) runs them in batches, far faster than one by one"
        )
    context = config.max_position_embeddings
    prompt = len(tokenizer(PROMPT)["input_ids"]) if tokenizer is not None else len(PROMPT)
    return head + (
        f'generate = pipeline("text-generation", model="{repo_id}", trust_remote_code=True)\n'
        f"# {context - prompt} new tokens after the {prompt}-token prompt fill the model's context ({context} tokens)\n"
        f'print(generate({json.dumps(PROMPT)}, max_new_tokens={context - prompt}, do_sample=True, top_k=20)'
        '[0]["generated_text"])'
    )


def run_card(run, name, repo_id, task, spec, dataset, model, curve, baseline_run, tokenizer=None) -> ModelCard:
    """The card of the packaged run (``package`` writes it as ``README.md``)."""
    info, config = run.run_info, model.config
    table, note, results = _results(run, task, spec, dataset)
    if not results:
        raise RunDirError(f"{run.path}: no {'/'.join(task.zoo_metrics)} metric saved for the card")
    dataset_name = spec.name if spec else (dataset or "unknown data")
    card_data = ModelCardData(
        model_name=name,
        license=LICENSE,
        library_name="transformers",
        pipeline_tag=task.pipeline_tag,
        tags=[*EP_TAGS, task.pipeline_tag, config.model_type],
        datasets=[spec.hub_id] if spec and spec.hub_id else None,
        metrics=list(dict.fromkeys(m for _, m, _ in run.results(task.zoo_metrics))),
        eval_results=results,
        mep_hf={"command": info["command"], "train_seconds": info["train_seconds"], "date": info["date"],
                "dataset": dataset, "repo_id": repo_id, "status": "trained"},
    )
    usage = card_usage(task.pipeline_tag, repo_id, config, tokenizer)
    usage_note = (
        "`trust_remote_code=True` runs the self-contained model code shipped in this repo (generated from mep-hf by "
        "`mep-hf-zoo package`; it imports no mep_hf module). With mep-hf installed, `import mep_hf` registers the "
        f"classes and no remote code is needed: `{task.auto_class}.from_pretrained(\"{repo_id}\")`. "
        f"Download the folder with `mep-hf-zoo pull {repo_id}`."
    )
    machine = _machine(info["machine"])
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "transformers", "python") if info.get(k))
    training = (
        f"- Method: Equilibrium Propagation with mep-hf's `EPTrainer` (no backpropagation).\n"
        f"- Data: {dataset_name}" + (f" (`{spec.loader}`, Hub dataset `{spec.hub_id}`)" if spec and spec.hub_id
                                     else f" (`{spec.loader}`)" if spec else "") + ".\n"
        f"- Command (from the repository root):\n\n  ```bash\n  {info['command']}\n  ```\n\n"
        f"- Training time: {_duration(info['train_seconds'])} wall ({float(info['train_seconds']):.1f} s) on {machine}"
        + (f"; {versions}" if versions else "") + f"; finished {info['date']}.\n"
        + (f"- Resumed from `{info['resumed_from']}`.\n" if info.get("resumed_from") else "")
        + f"- Packaged with mep-hf {__version__} from the run directory `{run.path.name}`."
    )
    baseline = _baseline_section(run, baseline_run, task) if baseline_run is not None else ""
    curve_note = ("Training loss (logged every `logging_steps`) and the validation metric (each evaluation), from "
                  "the run's `trainer_state.json` `log_history`.")
    limitations = (
        "Trained and evaluated only on the data named above; the numbers are the run's own evaluation, reproduced "
        "by its command on the stated machine (wall time varies with load). EP-trained weights are ordinary weights: "
        "inference is a plain forward pass."
    )
    title = f"{name}: {type(model).__name__} trained by Equilibrium Propagation on {dataset_name}"
    best = results[0]
    summary = (f"`{type(model).__name__}` trained by Equilibrium Propagation (mep-hf's `EPTrainer`, no "
               f"backpropagation) on {dataset_name}. {best.dataset_split.capitalize()} "
               f"{metric_name(best.metric_type)}: **{format_metric(best.metric_type, best.metric_value)}**.")
    return zoo_card(
        card_data=card_data, title=title, summary=summary, usage=usage, usage_note=usage_note,
        model_description=_describe_model(model, config), training=training, limitations=limitations,
        results_table=table, results_note=note, args=run.training_args, curve=curve, curve_note=curve_note,
        baseline=baseline, samples=run.samples,
    )


def _baseline_section(run: Run, baseline: Run, task: Task) -> str:
    rows = []
    for (split, metric, ep), (_, _, bp) in _paired(run.results(task.zoo_metrics), baseline.results(task.zoo_metrics)):
        rel = (ep - bp) / abs(bp) if bp else math.nan
        rows.append(f"| {split} {metric_name(metric)} | {ep:.4f} | {bp:.4f} | {100 * rel:+.2f}% |")
    return (
        "The same model, data and budget trained by backprop (`transformers.Trainer`), command:\n\n"
        f"```bash\n{baseline.run_info['command']}\n```\n\n"
        f"({_duration(baseline.run_info['train_seconds'])} on {_machine(baseline.run_info['machine'])}.)\n\n"
        "| metric | EP (this model) | backprop | EP vs backprop |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def _paired(ours, theirs):
    index = {(s, m): (s, m, v) for s, m, v in theirs}
    return [(o, index[(o[0], o[1])]) for o in ours if (o[0], o[1]) in index]
