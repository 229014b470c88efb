"""The one task table: for each task a model can be trained on, the names transformers, ``pipeline()`` and the zoo
know it by.

A task is found from a model class by transformers' naming (``<Model>For<Task>``). The adapters read which stock
class a model type has for the task and the output class its head returns; generated remote code reads the Auto
class that loads it; the zoo reads the pipeline tag and the metrics its cards report.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import modeling_outputs as mo
from transformers.models.auto import modeling_auto


@dataclass(frozen=True)
class Task:
    name: str  # the adapters' name for it (a Head's task)
    class_suffix: str  # transformers' <Model>For<Task>
    auto_class: str  # the Auto class that loads such a model
    pipeline_tag: str  # pipeline() task and Hub tag
    class_names: dict  # model type -> class name(s), transformers' Auto mapping
    output: type  # the ModelOutput a head of this task returns
    zoo_metrics: tuple[str, ...] = ()  # the saved metrics a zoo card reports, in order (empty: not in the zoo)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("causal-lm", "ForCausalLM", "AutoModelForCausalLM", "text-generation",
         modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, mo.CausalLMOutputWithPast, ("bits_per_char", "loss")),
    Task("sequence-classification", "ForSequenceClassification", "AutoModelForSequenceClassification",
         "text-classification", modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
         mo.SequenceClassifierOutput),
    Task("token-classification", "ForTokenClassification", "AutoModelForTokenClassification", "token-classification",
         modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, mo.TokenClassifierOutput),
    Task("masked-lm", "ForMaskedLM", "AutoModelForMaskedLM", "fill-mask",
         modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, mo.MaskedLMOutput),
    Task("image-classification", "ForImageClassification", "AutoModelForImageClassification",
         "image-classification", modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, mo.ImageClassifierOutput,
         ("accuracy",)),
)}


def task_of_class(class_name: str) -> Task | None:
    """The task of a model class, by transformers' naming (``LlamaForCausalLM`` -> causal-lm); ``None`` if none."""
    return next((t for t in TASKS.values() if class_name.endswith(t.class_suffix)), None)
