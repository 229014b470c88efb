"""ViT-style image encoders (ViT, DeiT, DINOv2, ...) as EP stacks.

Blocks: ``s_0 = pixel_values`` (clamped: EP never moves the input) → ``s_1`` = the model's own embeddings module
(patch projection, class token, position embeddings, dropout) → ``s_{l+1} = layer_l(s_l)`` (a padding mask from
``create_bidirectional_mask`` when the batch has an ``attention_mask``) → ``s_L = head(layernorm(s))``, the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dropout import shared_mask_blocks, step_seeds
from ..block_stack import BlockStack
from .base import bind_inputs, call_with_accepted, main_input, replaying, resolve
from .heads import Head
from .registry import register_adapter_family


@dataclass(frozen=True)
class VisionLayout:
    """Where a ViT-style encoder keeps its pieces, relative to ``base`` (the backbone attribute of its task models)."""

    base: str = "vit"
    embed: str = "embeddings"  # called as embed(pixel_values, interpolate_pos_encoding=) (if it takes that)
    layers: str = "layers"
    norm: str | None = "layernorm"


class VisionFamily:
    name = "vision"
    Layout = VisionLayout

    @staticmethod
    def check(model: nn.Module, layout: VisionLayout, head: Head) -> None:
        base = resolve(model, layout.base)
        for path in (layout.embed, layout.layers, layout.norm):
            if path is not None:
                resolve(base, path)

    @staticmethod
    def ep_stack(model: nn.Module, layout: VisionLayout, head: Head, args: tuple, kwargs: dict) -> BlockStack:
        from transformers.masking_utils import create_bidirectional_mask

        kw = bind_inputs(model, args, kwargs)
        pixel_values, labels = main_input(model, kw, "pixel_values")
        base = resolve(model, layout.base)
        embeddings = resolve(base, layout.embed)
        dtype = next(embeddings.parameters()).dtype
        attention_mask = kw.get("attention_mask")
        mask = None
        if attention_mask is not None:
            like = torch.empty(1, 1, 1, dtype=dtype, device=pixel_values.device)
            like = like.expand(pixel_values.shape[0], attention_mask.shape[-1], base.config.hidden_size)
            mask = create_bidirectional_mask(config=base.config, inputs_embeds=like, attention_mask=attention_mask)
        interpolate = kw.get("interpolate_pos_encoding")

        def embed(x: Tensor) -> Tensor:
            return call_with_accepted(embeddings, pixel_values=x.to(dtype), interpolate_pos_encoding=interpolate)

        def layer(module: nn.Module):
            return lambda s: module(s, mask)

        norm = resolve(base, layout.norm) if layout.norm else None
        logits = head.block(model, {})
        last = (lambda s: logits(norm(s))) if norm is not None else logits
        blocks = [embed, *(layer(m) for m in resolve(base, layout.layers)), last]
        blocks = shared_mask_blocks(blocks, step_seeds(model, len(blocks), replaying(model)), pixel_values.device)
        return BlockStack.with_output(pixel_values, blocks, head.output(model), labels)


register_adapter_family(VisionFamily)
