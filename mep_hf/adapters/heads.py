"""Heads: the small piece on top of a family's final hidden state, as data.

A :class:`Head` is the task (which Auto class the model belongs to), the ``path`` of steps that turn the final
(normed) hidden state into the model's logits, and how the model's ``forward`` computes its loss from them. Steps
are attribute paths of modules on the task model (``"classifier"``, ``"bert.pooler"``, ``"lm_head"``) or one of the
operations in :data:`OPS` (``":first_token"``, ``":last_token"``, ...). The family puts the head, after its final
norm, in the stack's last block, so the output state ``s_L`` is the logits the model's forward returns, and
:meth:`Head.output` is the tail of that forward at ``s_L``: logits in, ``ModelOutput`` (loss given labels) out.

Loss kinds (:data:`LOSSES`) mirror the installed transformers forwards; which one a class uses is the model-type
table's business (``registry.MODEL_TYPES``), and ``tests/test_adapters.py`` checks every row against the stock
forward, logits and loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import modeling_outputs as mo

from ..tasks import TASKS
from .base import resolve


def task_class_name(task: str, model_type: str) -> str | None:
    """The transformers class name of ``model_type`` for ``task`` (``"llama", "causal-lm"`` -> ``LlamaForCausalLM``)."""
    name = TASKS[task].class_names.get(model_type)
    return name[0] if isinstance(name, tuple) else name  # a tuple lists variants first-class-first (DeiT)


# ------------------------------------------------------------------------------------------------ operations
def _first_token(model: nn.Module, batch: dict) -> Callable[[Tensor], Tensor]:
    return lambda s: s[:, 0]


def _last_token(model: nn.Module, batch: dict) -> Callable[[Tensor], Tensor]:
    """Decoder sequence classification: the logits of each row's last non-padding token (left or right padding),
    found from ``input_ids`` and ``pad_token_id`` as ``GenericForSequenceClassification.forward`` finds them."""
    input_ids = batch["input_ids"]
    pad = model.config.get_text_config().pad_token_id
    batch_size = input_ids.shape[0]
    if pad is None and batch_size != 1:
        raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
    if pad is None:
        last = torch.full((batch_size,), -1, device=input_ids.device, dtype=torch.long)
    else:
        non_pad = (input_ids != pad).to(torch.int32)
        last = (torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32) * non_pad).argmax(-1)
    rows = torch.arange(batch_size, device=input_ids.device)
    return lambda logits: logits[rows, last.to(logits.device)]


def _relu(model: nn.Module, batch: dict) -> Callable[[Tensor], Tensor]:
    return nn.functional.relu


def _softcap(model: nn.Module, batch: dict) -> Callable[[Tensor], Tensor]:
    """Gemma-2 style final logit soft-capping (``config.final_logit_softcapping``; off when ``None``)."""
    cap = model.config.final_logit_softcapping
    return (lambda s: s) if cap is None else (lambda s: torch.tanh(s / cap) * cap)


def _cls_and_mean_patch(model: nn.Module, batch: dict) -> Callable[[Tensor], Tensor]:
    """DINOv2 image classification: the class token beside the mean of the patch tokens."""
    return lambda s: torch.cat([s[:, 0], s[:, 1:].mean(dim=1)], dim=1)


OPS: dict[str, Callable[[nn.Module, dict], Callable[[Tensor], Tensor]]] = {
    ":first_token": _first_token,
    ":last_token": _last_token,
    ":relu": _relu,
    ":softcap": _softcap,
    ":cls_and_mean_patch": _cls_and_mean_patch,
}


# ------------------------------------------------------------------------------------------------ losses
def _lm_loss(model, logits, labels, **loss_kwargs):
    """``*ForCausalLM``: the model's ``loss_function`` (shifted tokens, ``num_items_in_batch`` honoured)."""
    return model.loss_function(logits=logits, labels=labels, vocab_size=model.config.vocab_size, **loss_kwargs)


def _pooled_loss(model, logits, labels, **loss_kwargs):
    """``GenericForSequenceClassification``: the model's ``loss_function`` on the pooled logits."""
    return model.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=model.config)


def _token_loss(model, logits, labels, **loss_kwargs):
    """``GenericForTokenClassification``: the model's ``loss_function``."""
    return model.loss_function(logits, labels, model.config)


def _image_loss(model, logits, labels, **loss_kwargs):
    """``ViTForImageClassification`` and its kin: the model's ``loss_function`` with the forward's kwargs."""
    return model.loss_function(labels, logits, model.config, **loss_kwargs)


def _problem_type_loss(model, logits, labels, **loss_kwargs):
    """The inline loss of BERT-style ``*ForSequenceClassification.forward`` (and GPT-2's): regression, single- or
    multi-label by ``config.problem_type``, which it sets on first use as the forward does."""
    config, num_labels = model.config, model.num_labels
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        mse = nn.MSELoss()
        return mse(logits.squeeze(), labels.squeeze()) if num_labels == 1 else mse(logits, labels)
    if config.problem_type == "single_label_classification":
        return nn.CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        return nn.BCEWithLogitsLoss()(logits, labels)
    return None


def _cross_entropy_loss(model, logits, labels, **loss_kwargs):
    """The inline loss of BERT-style masked-LM and token-classification forwards: mean cross-entropy over every
    position, ``-100`` ignored (``num_items_in_batch`` is not used by those forwards)."""
    return nn.CrossEntropyLoss()(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1))


LOSSES: dict[str, Callable[..., Tensor]] = {
    "lm": _lm_loss,
    "pooled": _pooled_loss,
    "token": _token_loss,
    "image": _image_loss,
    "problem_type": _problem_type_loss,
    "cross_entropy": _cross_entropy_loss,
}


@dataclass(frozen=True)
class Head:
    """A task head: ``path`` from the final hidden state to the logits, and the loss the model's forward computes."""

    task: str
    path: tuple[str, ...]
    loss: str

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(TASKS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {sorted(LOSSES)}")
        for step in self.path:
            if step.startswith(":") and step not in OPS:
                raise ValueError(f"unknown head operation {step!r}; expected one of {sorted(OPS)}")

    def missing(self, model: nn.Module) -> list[str]:
        """Module steps of ``path`` that ``model`` lacks (or holds as ``None``)."""
        out = []
        for step in self.path:
            if step.startswith(":"):
                continue
            try:
                if resolve(model, step) is None:
                    out.append(step)
            except AttributeError:
                out.append(step)
        return out

    def block(self, model: nn.Module, batch: dict) -> Callable[[Tensor], Tensor]:
        """Final hidden state -> logits, as the model's forward computes them."""
        steps = [OPS[s](model, batch) if s.startswith(":") else resolve(model, s) for s in self.path]

        def head(s: Tensor) -> Tensor:
            for step in steps:
                s = step(s)
            return s

        return head

    def output(self, model: nn.Module) -> Callable[..., mo.ModelOutput]:
        """``output(logits, labels=None, **loss_kwargs)``: the model's output at the output state."""
        loss_fn, output_cls = LOSSES[self.loss], TASKS[self.task].output

        def output(logits: Tensor, labels: Tensor | None = None, **loss_kwargs) -> mo.ModelOutput:
            loss = None if labels is None else loss_fn(model, logits, labels, **loss_kwargs)
            return output_cls(loss=loss, logits=logits)

        return output


# Heads most rows share.
CAUSAL_LM = Head("causal-lm", ("lm_head",), "lm")
LAST_TOKEN_CLASSIFICATION = Head("sequence-classification", ("score", ":last_token"), "pooled")
TOKEN_CLASSIFICATION_SCORE = Head("token-classification", ("dropout", "score"), "token")
TOKEN_CLASSIFICATION = Head("token-classification", ("dropout", "classifier"), "cross_entropy")
FIRST_TOKEN_IMAGE_CLASSIFICATION = Head("image-classification", (":first_token", "classifier"), "image")
