"""EP adapter for stock ``BertForSequenceClassification`` (e.g. all-MiniLM-L6-v2 loaded with
``AutoModelForSequenceClassification``): embeddings → each ``BertLayer`` → pooler + classifier.

Like :mod:`mep_hf.adapters.gpt2` it attaches ``ep_stack`` and an ``ep_contrast``-aware forward to the *instance*,
so ``save_pretrained`` / ``from_pretrained`` with the stock class keep working and ``inspect.signature(forward)``
is unchanged.

Blocks: ``s_0 = input_ids`` → ``s_1 = LayerNorm(word + position + token-type embeddings)`` → ``s_{l+1} =
layer_l(s_l)`` with the padding mask bound in the closure (padded keys are never attended to; padded query rows
are computed but reach nothing, as in the forward pass) → ``s_L = classifier(pooler(s))``, the logits.
Loss: batch-mean cross-entropy (single-label classification, integer labels); regression and multi-label
problem types raise.

Dropout is switched off (``model.eval()``) whenever an EP stack is built: every phase of EP (and the contrast
that re-evaluates them) must evaluate the same deterministic energy; a new dropout mask per block call would
replace the O(β) signal of the energy difference by O(p/β) noise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..equilibrium import BlockStack
from .base import attach_ep, token_inputs, unsupported


def _bert_ep_stack(self, *args, **kwargs) -> BlockStack:
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.modeling_outputs import SequenceClassifierOutput

    kw, input_ids, labels = token_inputs(self, args, kwargs)
    attention_mask, token_type_ids, position_ids = kw.get("attention_mask"), kw.get("token_type_ids"), kw.get("position_ids")
    problem = self.config.problem_type
    if problem not in (None, "single_label_classification") or self.config.num_labels < 2:
        raise unsupported(self, f"only single-label classification is supported (problem_type={problem!r}, "
                                f"num_labels={self.config.num_labels})")
    self.eval()  # dropout off: every phase must evaluate the same deterministic energy (module docstring)

    bert = self.bert
    batch, length = input_ids.shape
    shape_only = torch.empty(batch, length, self.config.hidden_size, dtype=bert.embeddings.word_embeddings.weight.dtype,
                             device=input_ids.device)
    mask = create_bidirectional_mask(config=self.config, inputs_embeds=shape_only, attention_mask=attention_mask)

    def embed(ids: Tensor) -> Tensor:
        return bert.embeddings(input_ids=ids, token_type_ids=token_type_ids, position_ids=position_ids)

    def layer(module: nn.Module):
        return lambda s: module(s, mask)

    def head(s: Tensor) -> Tensor:
        return self.classifier(self.dropout(bert.pooler(s)))

    def output(logits: Tensor, labels: Tensor | None = None, **_) -> SequenceClassifierOutput:
        """As ``BertForSequenceClassification.forward``: a batch-mean loss that ignores ``num_items_in_batch``."""
        loss = None if labels is None else self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    return BlockStack.with_output(input_ids, [embed, *(layer(m) for m in bert.encoder.layer), head], output, labels)


def adapt_bert(model: nn.Module) -> nn.Module:
    """Make a ``BertForSequenceClassification`` trainable by ``EPTrainer`` (in place; idempotent)."""
    from transformers import BertForSequenceClassification

    if getattr(model, "_ep_adapted", False):
        return model
    if not isinstance(model, BertForSequenceClassification):
        raise unsupported(model, "only BertForSequenceClassification has a BERT EP adapter "
                                 "(embeddings → layers → pooler + classifier)")
    if model.config.is_decoder or model.config.add_cross_attention:
        raise unsupported(model, "decoder / cross-attention BERT configurations are not supported")
    if model.bert.pooler is None:
        raise unsupported(model, "the classifier reads the pooler, but this BertModel has none")
    return attach_ep(model, _bert_ep_stack)
