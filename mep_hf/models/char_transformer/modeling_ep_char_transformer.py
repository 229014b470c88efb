"""EP character-level transformer language model (pre-LN, causal self-attention), trainable by EP or backprop.

EP sees the model as three kinds of blocks, ``s_0 = input_ids`` → ``s_1`` (embeddings) → ``s_2..s_{N+1}``
(transformer blocks, states of shape ``(batch, tokens, hidden)``) → ``s_{N+2}`` (logits). The ordinary
``forward`` runs the same blocks in the same order, so the free phase *is* the forward pass.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput

from ...block_stack import BlockStack, routes_ep_contrast
from ...modeling_utils import EPPreTrainedModel, require_labels
from .configuration_ep_char_transformer import EPCharTransformerConfig



def attention_bias(attention_mask: Tensor | None, length: int, device) -> Tensor | None:
    """Boolean ``(batch, 1, T, T)`` mask (True = may attend): causal and, with padding, only to real tokens.

    Each position may always attend to itself, so no softmax row is empty (an all-padding prefix of a left-padded
    row would otherwise give NaN). ``None`` without padding: attention then runs with ``is_causal=True``.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    if attention_mask.shape[-1] != length:
        raise ValueError(f"attention_mask has {attention_mask.shape[-1]} positions, input_ids have {length}")
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    keys = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    return (causal & keys) | torch.eye(length, dtype=torch.bool, device=device)


class EPCharEmbedding(nn.Module):
    """Block 1: ``input_ids → token embedding + position embedding``. Its input ``s_0`` is integer and clamped."""

    def __init__(self, config: EPCharTransformerConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[-1]
        if length > self.wpe.num_embeddings:
            raise ValueError(
                f"sequence of {length} tokens is longer than max_position_embeddings={self.wpe.num_embeddings}"
            )
        positions = torch.arange(length, device=input_ids.device)
        return self.wte(input_ids) + self.wpe(positions)


class EPCharSelfAttention(nn.Module):
    def __init__(self, config: EPCharTransformerConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class EPCharTransformerBlock(GradientCheckpointingLayer):
    """One pre-LN block, ``s + attn(LN(s))`` then ``+ mlp(LN(·))``: one EP block (its state is the residual stream).

    A ``GradientCheckpointingLayer``, so backprop (``Trainer(gradient_checkpointing=True)``) can checkpoint it: the
    baseline that EP's low-memory mode is measured against."""

    def __init__(self, config: EPCharTransformerConfig):
        super().__init__()
        inner = config.intermediate_size or 4 * config.hidden_size
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = EPCharSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, inner), ACT2FN[config.activation], nn.Linear(inner, config.hidden_size)
        )

    def forward(self, s: Tensor, mask: Tensor | None = None) -> Tensor:
        s = s + self.attn(self.ln_1(s), mask)
        return s + self.mlp(self.ln_2(s))


class EPCharLMHead(nn.Module):
    """Last block: final LayerNorm + LM head; its state ``s_L`` is the logits the loss is nudged on."""

    def __init__(self, config: EPCharTransformerConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, s: Tensor) -> Tensor:
        return self.lm_head(self.ln_f(s))


class EPCharTransformerPreTrainedModel(EPPreTrainedModel):
    config_class = EPCharTransformerConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    _no_split_modules = ["EPCharTransformerBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        """N(0, initializer_range) Linear weights, zero biases, LayerNorm (1, 0); embeddings N(0, embedding_init_std)
        so the residual stream is O(1) (see the config)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.embedding_init_std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class EPCharTransformerForCausalLM(EPCharTransformerPreTrainedModel, GenerationMixin):
    """Character-level causal LM. ``forward`` is the free phase; ``ep_stack`` hands its blocks to the EP engine.

    No dropout, by design: EP's gradient is a difference of energies of the free and nudged phases, divided by a
    small β. Each phase, and the contrast that re-evaluates them, must therefore evaluate the *same deterministic*
    energy ``F(s; θ)``: with dropout every block call would draw a new mask, the feed-forward state would no longer
    be the free equilibrium, and the contrast would be dominated by mask noise of order (dropout rate)/β instead of
    the O(β) signal. Regularise by other means (weight decay, data) when training by EP.
    """

    def __init__(self, config: EPCharTransformerConfig):
        super().__init__(config)
        self.embed = EPCharEmbedding(config)
        self.layers = nn.ModuleList(EPCharTransformerBlock(config) for _ in range(config.num_hidden_layers))
        self.head = EPCharLMHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed.wte

    def set_input_embeddings(self, value):
        self.embed.wte = value

    def get_output_embeddings(self):
        return self.head.lm_head

    def set_output_embeddings(self, value):
        self.head.lm_head = value

    def _check_ids(self, input_ids: Tensor | None) -> Tensor:
        if input_ids is None:
            raise ValueError("`input_ids` is required")
        if input_ids.dtype.is_floating_point or input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be integer token ids of shape (batch, tokens), got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        return input_ids

    def blocks_for(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> list:
        """The EP blocks of one batch, the attention mask bound into the transformer blocks."""
        mask = attention_bias(attention_mask, input_ids.shape[-1], input_ids.device)
        layers = [layer if mask is None else functools.partial(layer, mask=mask) for layer in self.layers]
        return [self.embed, *layers, self.head]

    def ep_stack(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **_,
    ) -> BlockStack:
        input_ids, labels = self._check_ids(input_ids), require_labels(labels)
        return BlockStack.with_output(input_ids, self.blocks_for(input_ids, attention_mask), self.ep_output, labels)

    def ep_output(self, logits: Tensor, labels: Tensor | None = None, **loss_kwargs) -> CausalLMOutput:
        """``forward``'s tail at the output state: transformers' causal-LM loss (next-token cross-entropy, -100
        ignored, summed over tokens and divided by ``num_items_in_batch`` when the Trainer passes it)."""
        if labels is None:
            return CausalLMOutput(logits=logits)
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"labels have shape {tuple(labels.shape)} but the logits need {tuple(logits.shape[:-1])}")
        return CausalLMOutput(
            loss=self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **loss_kwargs), logits=logits
        )

    @routes_ep_contrast
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        s = self._check_ids(input_ids)
        for block in self.blocks_for(input_ids, attention_mask):
            s = block(s)
        return self.ep_output(s, labels, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs):
        """No key/value cache: every step re-reads the last ``max_position_embeddings − 1`` tokens. Not the full
        window: training never gives the last position a next token, so its prediction is untrained."""
        window = self.config.max_position_embeddings - 1
        if attention_mask is not None:
            attention_mask = attention_mask[:, -window:]
        return {"input_ids": input_ids[:, -window:], "attention_mask": attention_mask}
