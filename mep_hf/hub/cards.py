"""Model cards that say how a model was trained by EP: the Trainer's own card (:class:`EPModelCardMixin`) and the zoo
cards (:func:`zoo_card`), both built with huggingface_hub's ``ModelCard`` / ``ModelCardData``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

EP_TAGS = ["mep-hf", "equilibrium-propagation"]
EP_PREFIXES = ("ep_", "mep_")
# TrainingArguments fields a card states beside the EP ones (the optimisation that EP's gradient feeds).
OPTIMIZATION_KEYS = (
    "optim", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "seed",
)
EP_SECTION = "### Equilibrium Propagation"


def _as_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, Mapping):
        return dict(args)
    return args.to_dict()


def ep_settings(args: Any) -> dict[str, Any]:
    """The EP knobs of ``args`` (``EPTrainingArguments`` or its ``to_dict()``): every ``ep_*`` / ``mep_*`` field,
    so a knob added to the arguments appears on the cards without touching this code."""
    return {k: v for k, v in _as_dict(args).items() if k.startswith(EP_PREFIXES)}


def optimization_settings(args: Any) -> dict[str, Any]:
    d = _as_dict(args)
    out = {k: d[k] for k in OPTIMIZATION_KEYS if k in d}
    if d.get("max_steps", -1) > 0:
        out.pop("num_train_epochs", None)  # max_steps wins
    else:
        out.pop("max_steps", None)
    if d.get("mep_optimizer"):
        out.pop("optim", None)  # the MEP preset replaces the Trainer's optimizer
    return out


def _value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def settings_table(settings: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| `{k}` | {_value(v)} |" for k, v in settings.items())
    return f"| setting | value |\n|---|---|\n{rows}\n"


def ep_section(args: Any) -> str:
    """Markdown stating that and how the model was trained by EP, from the training arguments."""
    return (
        f"{EP_SECTION}\n\n"
        "Parameter gradients came from Equilibrium Propagation (mep-hf `EPTrainer`: a free phase, nudged phase(s), a "
        "layer-local contrast), not from backpropagation. EP settings (`EPTrainingArguments`):\n\n"
        + settings_table(ep_settings(args))
    )


class EPModelCardMixin:
    """``Trainer.create_model_card`` (also run by ``push_to_hub``) for a model trained by EP: transformers'
    ``TrainingSummary`` card (hyperparameters, evaluation results, framework versions) with the ``mep-hf`` and
    ``equilibrium-propagation`` tags and a section listing every EP setting of ``self.args``.

    It also fixes two defaults of the stock card for models built from a config on in-memory data: an empty
    ``_name_or_path`` made it "a fine-tuned version of []", a dataset without a builder name "the None dataset";
    such a model is "trained from scratch on an unknown dataset" (pass ``finetuned_from`` / ``dataset`` to say more).

    Mix it in before ``Trainer``: ``class EPTrainer(EPModelCardMixin, ..., Trainer)``.
    """

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        from transformers.modelcard import TrainingSummary

        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / "README.md"
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        existing = ModelCard.load(path).data if path.is_file() else None
        for tag in [*EP_TAGS, *((existing.tags or []) if existing is not None else [])]:
            if tag not in tags:
                tags.append(tag)
        summary = TrainingSummary.from_trainer(
            self, language=language, license=license, tags=tags, model_name=model_name,
            finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags, dataset=dataset,
            dataset_args=dataset_args,
        )
        if not summary.finetuned_from:  # "" from a model built from a config
            summary.finetuned_from = None
        if dataset is None and dataset_tags is None and not any(summary.dataset_tags or []):
            summary.dataset = summary.dataset_tags = summary.dataset_args = summary.dataset_metadata = None
        path.write_text(add_ep_section(summary.to_model_card(), self.args), encoding="utf-8")


def add_ep_section(text: str, args: Any) -> str:
    """``text`` (a Trainer card's body) with the EP section after the training hyperparameters (replacing an older
    one) and its opening line saying the model was trained by EP."""
    text = re.sub(rf"\n{re.escape(EP_SECTION)}\n.*?(?=\n#|\Z)", "", text, flags=re.S)
    text = text.replace("was trained from scratch on", "was trained from scratch by Equilibrium Propagation on", 1)
    section = "\n" + ep_section(args)
    for anchor in ("\n### Training results", "\n### Framework versions"):
        if anchor in text:
            return text.replace(anchor, section + anchor, 1)
    return text.rstrip("\n") + "\n" + section


# --------------------------------------------------------------------------- zoo cards
ZOO_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

{% if status %}**Status: {{ status }}**

{% endif %}{% if results_table %}## Results

{{ results_table }}

{{ results_note }}

{% endif %}## Use it

```python
{{ usage }}
```

{{ usage_note }}

## Model

{{ model_description }}

## Training

{{ training }}
{% if ep_table %}
{{ ep_section }}

### Optimisation

{{ optimization_table }}
{% endif %}{% if curve %}
### Training curve

![training curve]({{ curve }})

{{ curve_note }}
{% endif %}{% if baseline %}
## Compared with backprop

{{ baseline }}
{% endif %}{% if samples %}
## Samples

Generated by this checkpoint at the end of training (`samples.txt` of the run):

```text
{{ samples }}
```
{% endif %}
## Limitations

{{ limitations }}
"""


def zoo_card(
    *,
    card_data: ModelCardData,
    title: str,
    summary: str,
    usage: str,
    usage_note: str,
    model_description: str,
    training: str,
    limitations: str,
    results_table: str = "",
    results_note: str = "",
    args: Any = None,
    curve: str | None = None,
    curve_note: str = "",
    baseline: str = "",
    samples: str | None = None,
    status: str = "",
) -> ModelCard:
    """A zoo model card (YAML metadata + the sections above), rendered by ``ModelCard.from_template``."""
    return ModelCard.from_template(
        card_data,
        template_str=ZOO_CARD_TEMPLATE,
        title=title,
        summary=summary,
        status=status,
        results_table=results_table,
        results_note=results_note,
        usage=usage,
        usage_note=usage_note,
        model_description=model_description,
        training=training,
        ep_table=args is not None,
        ep_section=ep_section(args) if args is not None else "",
        optimization_table=settings_table(optimization_settings(args)) if args is not None else "",
        curve=curve,
        curve_note=curve_note,
        baseline=baseline,
        samples=samples.strip() if samples else None,
        limitations=limitations,
    )


def eval_result(task: str, dataset_id: str, dataset_name: str, split: str, metric: str, value: float) -> EvalResult:
    return EvalResult(
        task_type=task,
        dataset_type=dataset_id,
        dataset_name=dataset_name,
        dataset_split=split,
        metric_type=metric,
        metric_name=f"{split} {metric.replace('_', ' ')}",
        metric_value=value,
    )
