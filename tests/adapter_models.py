"""Tiny stock models of every registered model type and head, and batches for them (shared by the adapter tests
and the stock-example scripts' test). Built from configs: nothing is downloaded."""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig

from mep_hf.adapters import MODEL_TYPES
from mep_hf.adapters.heads import task_class_name

COMMON = dict(
    vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
)
# Per model type: the config names that differ, grouped-query attention where the family has it, and a sliding
# window shorter than the test sequences where the model has one (so the sliding mask is really exercised).
SPECIFIC = {
    "llama": dict(num_key_value_heads=1),
    "gemma": dict(head_dim=8, num_key_value_heads=1),
    "gemma2": dict(head_dim=8, num_key_value_heads=1, sliding_window=4),
    "mistral": dict(num_key_value_heads=1, sliding_window=4),
    "qwen2": dict(num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(num_key_value_heads=1, head_dim=8),
    "smollm3": dict(num_key_value_heads=1),
    "phi3": dict(num_key_value_heads=1),
    "starcoder2": dict(num_key_value_heads=1),
    "gpt2": dict(n_inner=32),
    "distilbert": dict(dim=16, hidden_dim=32, n_layers=2, n_heads=2),
    "electra": dict(embedding_size=8),
    "vit": dict(image_size=8, patch_size=4, num_channels=3),
    "deit": dict(image_size=8, patch_size=4, num_channels=3),
    "dinov2": dict(image_size=8, patch_size=4, num_channels=3, mlp_ratio=2),
}

CASES = [(t, h.task) for t, row in MODEL_TYPES.items() for h in row.heads]


def tiny_model(model_type: str, task: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The stock transformers class of ``model_type`` for ``task``, randomly initialised from a tiny config."""
    config = AutoConfig.for_model(model_type, **{**COMMON, **SPECIFIC.get(model_type, {}), **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, task_class_name(task, model_type))(config)
    if model_type == "deit":
        # DeiT's random init sets the class / distillation tokens and position embeddings to exactly zero, so the
        # class token enters the first LayerNorm as a zero vector, where LayerNorm is singular (Jacobian ~ 1/sqrt(eps)).
        # Any trained DeiT has them non-zero; so do we.
        emb = model.deit.embeddings
        for p in (emb.cls_token, emb.distillation_token, emb.position_embeddings):
            torch.nn.init.normal_(p, std=0.02)
    return model


def tiny_batch(model_type: str, task: str, model, batch: int = 3, length: int = 7, seed: int = 0,
               dtype=torch.float64, left_padding: bool | None = None) -> dict:
    """A batch for ``model``: row 1 right-padded by 3 tokens; row 0 left-padded by 2 (encoders by default).

    Decoders get no left padding by default: in the causal-LM loss the last left pad predicts the first real token,
    and with ``pad_token_id`` as the embedding's ``padding_idx`` that pad enters the first norm as a zero vector,
    where RMSNorm/LayerNorm are singular (see docs/adding_a_family.md). ``tests/test_adapters.py`` tests left
    padding of decoder classifiers on its own.
    """
    g = torch.Generator().manual_seed(seed)
    config = model.config
    if MODEL_TYPES[model_type].family == "vision":
        x = torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=g, dtype=dtype)
        return {"pixel_values": x, "labels": torch.randint(0, config.num_labels, (batch,), generator=g)}
    if left_padding is None:
        left_padding = MODEL_TYPES[model_type].family != "decoder"
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    if left_padding:
        mask[0, :2] = 0
    ids = ids.masked_fill(mask == 0, config.pad_token_id)
    if task == "causal-lm":
        labels = ids.masked_fill(mask == 0, -100)
    elif task == "masked-lm":
        labels = torch.full_like(ids, -100)
        labels[:, 3] = ids[:, 3]
        labels[-1, 5] = ids[-1, 5]
    elif task == "token-classification":
        labels = torch.randint(0, config.num_labels, (batch, length), generator=g).masked_fill(mask == 0, -100)
    else:
        labels = torch.randint(0, config.num_labels, (batch,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
