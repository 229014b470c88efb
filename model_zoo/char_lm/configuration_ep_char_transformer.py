"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.models.char_transformer.configuration_ep_char_transformer`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN


@strict
class EPCharTransformerConfig(PreTrainedConfig):
    """A small pre-LN decoder-only transformer over characters; see :class:`EPCharTransformerForCausalLM`.

    EP blocks: embedding (token + position) → ``num_hidden_layers`` transformer blocks → head (final LayerNorm +
    LM head, whose state is the logits). There is no dropout: EP compares energies of several phases, and each must
    evaluate the same deterministic function (see the model's docstring).

    Args:
        vocab_size: number of tokens (characters + special tokens) of the tokenizer.
        max_position_embeddings: longest sequence (context) the model reads.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: attention heads per block (must divide ``hidden_size``).
        intermediate_size: MLP width; ``None`` = 4 × ``hidden_size``.
        activation: MLP activation, any name in ``transformers.activations.ACT2FN``.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: std of the normal initialisation of Linear weights.
        embedding_init_std: std of the token / position embeddings. 1.0 (not GPT-2's 0.02) keeps the residual
            stream O(1): EP displaces states by absolute amounts, and LayerNorm over a stream of scale σ turns a
            displacement e into a relative one of order e/σ² (its Jacobian is ~1/σ, its curvature ~1/σ²). Measured on
            this model after 250 backprop steps (float32, positive nudging, β=0.01, one sweep): min per-tensor
            cosine to backprop 0.85 with std 0.02, 0.998 with std 1.0.
    """

    model_type = "ep_char_transformer"

    vocab_size: int = 96
    max_position_embeddings: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    embedding_init_std: float = 1.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = False
    tie_word_embeddings: bool = False

    def describe_architecture(self) -> str:
        """One line for model cards (``mep-hf-zoo package``)."""
        return (f"pre-LN decoder-only transformer over characters: {self.num_hidden_layers} blocks, width "
                f"{self.hidden_size}, {self.num_attention_heads} heads, context {self.max_position_embeddings}, "
                f"vocabulary {self.vocab_size}; EP blocks: embedding, each transformer block, head")

    def validate_architecture(self):
        sizes = dict(
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
        )
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"sizes must be positive, got {bad}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be positive or None, got {self.intermediate_size}")
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; pick one of transformers' ACT2FN")
        if self.use_cache:
            raise ValueError("EPCharTransformer has no key/value cache; use_cache must be False")
