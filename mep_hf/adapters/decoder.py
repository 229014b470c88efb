"""Decoder-only language models (Llama, Qwen2/3, Mistral, Gemma, Phi-3, OLMo, GPT-NeoX, GPT-2, ...) as EP stacks.

Blocks: ``s_0 = input_ids`` → ``s_1`` = the token embedding (+ learned positions / token types where the model has
them, + its embedding dropout) → ``s_{l+1} = layer_l(s_l)`` with the attention mask, position ids and rotary
``(cos, sin)`` bound in the closure → ``s_L = head(norm(s))``, the logits the task model's forward returns.

Nothing of a model's forward is copied: the masks come from transformers' own ``create_causal_mask`` /
``create_sliding_window_causal_mask`` (so the model's attention implementation, padding and sliding window are
honoured), the rotary embeddings from the model's own ``rotary_emb`` module, and each layer is the model's own
module called with the keywords its base model passes. What differs between models is a row of
:class:`DecoderLayout` in ``registry.MODEL_TYPES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dropout import shared_mask_blocks, step_seeds
from ..block_stack import BlockStack
from .base import bind_inputs, main_input, replaying, resolve, unsupported
from .heads import Head
from .registry import register_adapter_family

MASKS = ("causal", "sliding", "layer_types")


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder keeps its pieces. Paths are relative to ``base``, the backbone attribute of its task models."""

    base: str = "model"
    embed: str = "embed_tokens"
    layers: str = "layers"
    norm: str = "norm"
    rotary: str | None = "rotary_emb"  # the model's rotary module, called as rotary(x, position_ids)
    positions: str | None = None  # learned absolute position embedding (GPT-2: "wpe")
    token_types: str | None = None  # embedding of token_type_ids (GPT-2 embeds them with "wte")
    embed_dropout: str | None = None  # after the embedding: a dropout module, or a float attribute (its p)
    # "causal": create_causal_mask. "sliding": the sliding-window mask when config.sliding_window is set (Mistral).
    # "layer_types": per layer, by config.layer_types ("full_attention" / "sliding_attention"; Qwen2, Gemma-2).
    mask: str = "causal"

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ValueError(f"unknown mask rule {self.mask!r}; expected one of {MASKS}")


class DecoderFamily:
    """Adapter of the decoder-only family: validates a model against its layout and builds its EP stack."""

    name = "decoder"
    Layout = DecoderLayout

    @staticmethod
    def check(model: nn.Module, layout: DecoderLayout, head: Head) -> None:
        config = model.config
        if getattr(config, "add_cross_attention", False) or getattr(config, "is_encoder_decoder", False):
            raise unsupported(model, "cross-attention (config.add_cross_attention / is_encoder_decoder) is not supported")
        base = resolve(model, layout.base)
        for path in (layout.embed, layout.layers, layout.norm, layout.rotary, layout.positions):
            if path is not None:
                resolve(base, path)  # AttributeError names what the layout expected and the model lacks

    @staticmethod
    def ep_stack(model: nn.Module, layout: DecoderLayout, head: Head, args: tuple, kwargs: dict) -> BlockStack:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kw = bind_inputs(model, args, kwargs)
        input_ids, labels = main_input(model, kw, "input_ids")
        if input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must be (batch, length), got shape {tuple(input_ids.shape)}")
        if head.task == "causal-lm" and labels.shape != input_ids.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}")
        base = resolve(model, layout.base)
        config = base.config
        attention_mask, position_ids, token_type_ids = kw.get("attention_mask"), kw.get("position_ids"), kw.get("token_type_ids")
        batch, length = input_ids.shape
        embed = resolve(base, layout.embed)
        max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if layout.positions is not None and max_positions is not None and length > max_positions:
            raise ValueError(f"sequence of {length} tokens exceeds the model's {max_positions} positions")
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0)
        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(batch, -1)
        # The mask and rotary helpers read only the shape, dtype and device of the embeddings.
        like = torch.empty(1, 1, 1, dtype=embed.weight.dtype, device=input_ids.device).expand(batch, length, config.hidden_size)
        mask_kwargs = dict(config=config, inputs_embeds=like, attention_mask=attention_mask, cache=None, position_ids=position_ids)
        layers = list(resolve(base, layout.layers))[: config.num_hidden_layers]
        masks = _layer_masks(layout, config, len(layers), lambda: create_causal_mask(**mask_kwargs),
                             lambda: create_sliding_window_causal_mask(**mask_kwargs))
        layer_kwargs = dict(position_ids=position_ids, use_cache=False)
        if layout.rotary is not None:
            layer_kwargs["position_embeddings"] = resolve(base, layout.rotary)(like, position_ids)

        def embedding(ids: Tensor) -> Tensor:
            s = embed(ids)
            if layout.positions is not None:
                s = s + resolve(base, layout.positions)(position_ids).to(s.device)
            if token_type_ids is not None and layout.token_types is not None:
                s = s + resolve(base, layout.token_types)(token_type_ids.view(-1, length))
            return _embed_dropout(base, layout, s)

        def layer(module: nn.Module, mask) -> Callable[[Tensor], Tensor]:
            return lambda s: module(s, attention_mask=mask, **layer_kwargs)

        norm, logits = resolve(base, layout.norm), head.block(model, {"input_ids": input_ids})
        blocks = [embedding, *(layer(m, k) for m, k in zip(layers, masks)), lambda s: logits(norm(s))]
        blocks = shared_mask_blocks(blocks, step_seeds(model, len(blocks), replaying(model)), input_ids.device)
        return BlockStack.with_output(input_ids, blocks, head.output(model), labels)


def _layer_masks(layout: DecoderLayout, config, n_layers: int, causal, sliding) -> list:
    """The attention mask of each layer, built by transformers' own helpers, each kind once."""
    if layout.mask == "causal":
        return [causal()] * n_layers
    if layout.mask == "sliding":
        return [causal() if getattr(config, "sliding_window", None) is None else sliding()] * n_layers
    kinds = list(config.layer_types[:n_layers])
    built = {"full_attention": causal} | ({"sliding_attention": sliding} if "sliding_attention" in kinds else {})
    unknown = sorted(set(kinds) - set(built))
    if unknown:
        raise ValueError(f"layer types {unknown} have no mask rule here (known: full_attention, sliding_attention)")
    built = {k: f() for k, f in built.items()}
    return [built[k] for k in kinds]


def _embed_dropout(base: nn.Module, layout: DecoderLayout, s: Tensor) -> Tensor:
    if layout.embed_dropout is None:
        return s
    dropout = resolve(base, layout.embed_dropout)
    if isinstance(dropout, (int, float)):
        return nn.functional.dropout(s, p=float(dropout), training=base.training)
    return dropout(s)


register_adapter_family(DecoderFamily)
