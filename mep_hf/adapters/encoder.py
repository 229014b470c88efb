"""BERT-style text encoders (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA, ...) as EP stacks.

Blocks: ``s_0 = input_ids`` → ``s_1`` = the model's own embeddings module (word + position + token-type embeddings,
LayerNorm, dropout; RoBERTa's padding-aware positions included) and, where the model has one, its embedding
projection (ELECTRA) → ``s_{l+1} = layer_l(s_l)`` with the padding mask from transformers' own
``create_bidirectional_mask`` bound in → ``s_L = head(s)`` (pooler + classifier, LM head, ...), the logits.
What differs between models is a row of :class:`EncoderLayout` in ``registry.MODEL_TYPES`` and its heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dropout import shared_mask_blocks, step_seeds
from ..block_stack import BlockStack
from .base import bind_inputs, call_with_accepted, has_path, main_input, replaying, resolve, unsupported
from .heads import Head
from .registry import register_adapter_family


@dataclass(frozen=True)
class EncoderLayout:
    """Where an encoder keeps its pieces. Paths are relative to ``base``, the backbone attribute of its task models."""

    base: str = "bert"
    embed: str = "embeddings"  # called as embed(input_ids=, token_type_ids=, position_ids=) (the names it accepts)
    embed_project: str | None = None  # applied after the embeddings when the model has it (ELECTRA)
    layers: str = "encoder.layer"
    norm: str | None = None  # a final norm of the backbone, if any


class EncoderFamily:
    name = "encoder"
    Layout = EncoderLayout

    @staticmethod
    def check(model: nn.Module, layout: EncoderLayout, head: Head) -> None:
        config = model.config
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise unsupported(model, "decoder / cross-attention configurations of an encoder are not supported")
        base = resolve(model, layout.base)
        for path in (layout.embed, layout.layers, layout.norm):
            if path is not None:
                resolve(base, path)

    @staticmethod
    def ep_stack(model: nn.Module, layout: EncoderLayout, head: Head, args: tuple, kwargs: dict) -> BlockStack:
        from transformers.masking_utils import create_bidirectional_mask

        kw = bind_inputs(model, args, kwargs)
        input_ids, labels = main_input(model, kw, "input_ids")
        if input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must be (batch, length), got shape {tuple(input_ids.shape)}")
        base = resolve(model, layout.base)
        config = base.config
        embeddings = resolve(base, layout.embed)
        project = resolve(base, layout.embed_project) if layout.embed_project and has_path(base, layout.embed_project) else None
        batch, length = input_ids.shape
        width = project.out_features if project is not None else config.hidden_size
        dtype = next(embeddings.parameters()).dtype
        like = torch.empty(1, 1, 1, dtype=dtype, device=input_ids.device).expand(batch, length, width)
        mask = create_bidirectional_mask(config=config, inputs_embeds=like, attention_mask=kw.get("attention_mask"))
        token_type_ids, position_ids = kw.get("token_type_ids"), kw.get("position_ids")

        def embed(ids: Tensor) -> Tensor:
            s = call_with_accepted(embeddings, input_ids=ids, token_type_ids=token_type_ids, position_ids=position_ids)
            return s if project is None else project(s)

        def layer(module: nn.Module):
            return lambda s: module(s, mask)

        norm = resolve(base, layout.norm) if layout.norm else None
        logits = head.block(model, {"input_ids": input_ids})
        last = (lambda s: logits(norm(s))) if norm is not None else logits
        blocks = [embed, *(layer(m) for m in resolve(base, layout.layers)), last]
        blocks = shared_mask_blocks(blocks, step_seeds(model, len(blocks), replaying(model)), input_ids.device)
        return BlockStack.with_output(input_ids, blocks, head.output(model), labels)


register_adapter_family(EncoderFamily)
