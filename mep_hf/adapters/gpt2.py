"""EP adapter for stock ``GPT2LMHeadModel``: embeddings → each ``GPT2Block`` → ``ln_f`` + tied ``lm_head``.

``adapt_gpt2(model)`` (also reached through ``mep_hf.adapters.prepare_ep_model`` / ``EPTrainer``) attaches two
things to the *instance*, leaving its class alone so ``save_pretrained`` and ``GPT2LMHeadModel.from_pretrained`` /
``AutoModelForCausalLM`` keep working:

* ``model.ep_stack(**batch) -> BlockStack``;
* ``model.forward``: with ``ep_contrast=c`` returns ``c(model.ep_stack(...))`` (so the contrast runs inside DDP's
  forward); without it, the class's own forward, unchanged. ``inspect.signature(model.forward)`` still shows the
  original parameters (the Trainer reads it to drop unused dataset columns).

Blocks: ``s_0 = input_ids`` → ``s_1 = wte(ids) + wpe(positions)`` (+ token-type embeddings) → ``s_{l+1} =
block_l(s_l)`` with the causal/padding mask and position ids bound in the closure → ``s_L = lm_head(ln_f(s))``.
The LM head shares its weight with ``wte`` (tied embeddings): one ``Parameter`` used by the first and the last
block, so its EP gradient is the sum of both blocks' local contrasts, as backprop's is.

Dropout is switched off (``model.eval()``) whenever an EP stack is built: the EP gradient is a difference of
energies of several phases divided by β, and every phase (and the contrast that re-evaluates them) must evaluate
the same deterministic energy; a fresh dropout mask per block call would replace the O(β) signal by O(p/β) noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..equilibrium import BlockStack
from .base import attach_ep, token_inputs, unsupported

def _gpt2_ep_stack(self, *args, **kwargs) -> BlockStack:
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

    kw, input_ids, labels = token_inputs(self, args, kwargs)
    attention_mask, position_ids, token_type_ids = kw.get("attention_mask"), kw.get("position_ids"), kw.get("token_type_ids")
    if kw.get("encoder_hidden_states") is not None or self.config.add_cross_attention:
        raise unsupported(self, "cross-attention (add_cross_attention / encoder_hidden_states) is not supported")
    if kw.get("cache") is not None or kw.get("past_key_values") is not None or kw.get("use_cache"):
        raise unsupported(self, "a key/value cache (past_key_values / use_cache=True) has no place in EP training")
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}")
    self.eval()  # dropout off: every phase must evaluate the same deterministic energy (module docstring)

    tf = self.transformer
    batch, length = input_ids.shape
    if length > self.config.n_positions:
        raise ValueError(f"sequence of {length} tokens exceeds n_positions={self.config.n_positions}")
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0)
    if attention_mask is not None and attention_mask.ndim < 4:
        attention_mask = attention_mask.view(batch, -1)
    shape_only = torch.empty(batch, length, self.config.n_embd, dtype=tf.wte.weight.dtype, device=input_ids.device)
    mask = create_causal_mask(
        config=self.config, inputs_embeds=shape_only, attention_mask=attention_mask, cache=None, position_ids=position_ids
    )

    def embed(ids: Tensor) -> Tensor:
        s = tf.wte(ids) + tf.wpe(position_ids)
        if token_type_ids is not None:
            s = s + tf.wte(token_type_ids.view(-1, length))
        return tf.drop(s)

    def layer(block: nn.Module) -> Callable[[Tensor], Tensor]:
        return lambda s: block(s, None, mask, None, use_cache=False, position_ids=position_ids)

    def head(s: Tensor) -> Tensor:
        return self.lm_head(tf.ln_f(s))

    def output(logits: Tensor, labels: Tensor | None = None, **loss_kwargs) -> CausalLMOutputWithCrossAttentions:
        if labels is None:
            return CausalLMOutputWithCrossAttentions(logits=logits)
        loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits)

    return BlockStack.with_output(input_ids, [embed, *(layer(b) for b in tf.h), head], output, labels)


def adapt_gpt2(model: nn.Module) -> nn.Module:
    """Make a ``GPT2LMHeadModel`` trainable by ``EPTrainer`` (in place; idempotent). Other GPT-2 heads are refused."""
    from transformers import GPT2LMHeadModel

    if getattr(model, "_ep_adapted", False):
        return model
    if not isinstance(model, GPT2LMHeadModel):
        raise unsupported(model, "only GPT2LMHeadModel has a GPT-2 EP adapter (embeddings → blocks → ln_f + lm_head)")
    if model.config.add_cross_attention:
        raise unsupported(model, "cross-attention (config.add_cross_attention=True) is not supported")
    if getattr(model, "is_activation_checkpointing", False):
        raise unsupported(model, "gradient checkpointing is pointless under EP (no backprop graph); disable it")
    return attach_ep(model, _gpt2_ep_stack)
