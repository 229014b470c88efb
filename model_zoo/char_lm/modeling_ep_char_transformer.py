"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.block_stack`, `mep_hf.modeling_utils`, `mep_hf.models.char_transformer.modeling_ep_char_transformer`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import torch
import torch.nn.functional as F
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel, initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput
from typing import Any

from .configuration_ep_char_transformer import EPCharTransformerConfig


@dataclass
class BlockStack:
    """What a model shows EP: the input state, the blocks ``s_l = f_l(s_{l−1})``, and the task loss of ``s_L``.

    ``loss`` is the scalar EP nudges with, any function of the output state (a batch mean, a sum over tokens
    divided by the accumulation window's token count, ...); EP's gradient tends to ``∇θ loss``. The engine scales
    it by the batch size ``B`` only to keep each sample's error O(β).

    ``output`` (models set it; the bare engine does not need it) is the tail of the model's ``forward`` at an
    output state: ``output(s_L, labels=None, **loss_kwargs)`` gives the model output (``logits``, and ``loss`` when
    ``labels`` are given, computed as ``forward`` computes it, e.g. with ``num_items_in_batch``). ``EPTrainer``
    evaluates ``Trainer.compute_loss`` on it, so EP nudges with exactly the loss Trainer would backpropagate.
    Models validate ``inputs`` (shape, NaN/inf) where they can name the argument.
    """

    inputs: Tensor
    blocks: Sequence[Callable[[Tensor], Tensor]]
    loss: Callable[[Tensor], Tensor]
    output: Callable[..., Any] | None = None

    def __post_init__(self):
        if len(self.blocks) == 0:
            raise ValueError("an EP block stack needs at least one block; the model exposed none")

    @classmethod
    def with_output(cls, inputs: Tensor, blocks: Sequence, output: Callable[..., Any], labels: Tensor) -> BlockStack:
        """A stack whose loss is the one the model's ``output`` reports for ``labels``."""
        return cls(inputs, blocks, loss=lambda s: output(s, labels=labels)["loss"], output=output)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]


def routes_ep_contrast(forward: Callable) -> Callable:
    """Decorate a model's ``forward`` so that ``model(**batch, ep_contrast=c)`` returns ``c(model.ep_stack(**batch))``.

    EP's contrast must run inside the (possibly DDP- or peft-wrapped) model's forward, so that gradient hooks fire
    as for any loss; this is the one place that routes it. Without ``ep_contrast`` the forward runs unchanged, and
    its signature is the undecorated one (the Trainer reads it to drop unused dataset columns). A model whose
    contrast call needs a setting (the stock-model adapters replay the step's dropout masks) offers it as the
    context manager ``ep_contrast_context()``.
    """

    @functools.wraps(forward)
    def routed(self, *args, ep_contrast=None, **kwargs):
        if ep_contrast is None:
            return forward(self, *args, **kwargs)
        context = getattr(self, "ep_contrast_context", contextlib.nullcontext)
        with context():
            stack = self.ep_stack(*args, **kwargs)
        return ep_contrast(stack)

    return routed


def require_labels(labels: Tensor | None) -> Tensor:
    """EP nudges the output towards the labels, so a training batch without them is an error."""
    if labels is None:
        raise ValueError("EP training needs `labels` in every batch: the nudged phase pulls the output towards them "
                         "(a data collator drops label columns it cannot make a tensor of, such as strings)")
    if not isinstance(labels, Tensor):
        raise TypeError(f"`labels` must be a tensor of integer class ids, got {type(labels).__name__}")
    return labels


class UnsafeWeightsError(ValueError):
    """``from_pretrained`` met a pickle weights file (``pytorch_model.bin``, ...) and the caller did not opt in."""


_pickle_guard = threading.local()


def _install_pickle_guard() -> None:
    """Wrap ``transformers.modeling_utils.load_state_dict`` (every weights file ``from_pretrained`` reads goes
    through it) so that, inside :func:`refuse_pickle_weights` in the same thread, non-safetensors files are
    refused before anything is unpickled. Outside that context the wrapper changes nothing."""
    import transformers.modeling_utils as tmu

    if getattr(tmu.load_state_dict, "_ep_pickle_guard", False):
        return
    original = tmu.load_state_dict

    def load_state_dict(checkpoint_file, *args, **kwargs):
        path = os.fspath(checkpoint_file)
        if getattr(_pickle_guard, "active", False) and not path.endswith(".safetensors"):
            raise UnsafeWeightsError(
                f"refusing to load the pickle weights file {path!r}: unpickling a file can run arbitrary code. "
                "Load a safetensors checkpoint (model.safetensors), convert this one, or, only if you trust its "
                "source, pass allow_pickle=True to from_pretrained (transformers then reads it with "
                "torch.load(weights_only=True))."
            )
        return original(checkpoint_file, *args, **kwargs)

    load_state_dict._ep_pickle_guard = True
    tmu.load_state_dict = load_state_dict


@contextmanager
def refuse_pickle_weights():
    """Within this block (this thread only), ``from_pretrained`` refuses every weights file but safetensors."""
    _install_pickle_guard()
    previous = getattr(_pickle_guard, "active", False)
    _pickle_guard.active = True
    try:
        yield
    finally:
        _pickle_guard.active = previous


class EPPreTrainedModel(PreTrainedModel):
    """Base of every EP-native model: ``ep_stack(**inputs)`` gives the EP engine the blocks of a batch, and a
    ``forward`` decorated with :func:`~mep_hf.block_stack.routes_ep_contrast` runs EP's contrast inside (DDP's)
    forward when the trainer passes ``ep_contrast=``."""

    def ep_stack(self, **inputs) -> BlockStack:
        raise NotImplementedError(f"{type(self).__name__} must define ep_stack(**inputs) -> BlockStack")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, allow_pickle: bool = False, **kwargs):
        """``PreTrainedModel.from_pretrained`` that loads safetensors weights only, unless ``allow_pickle=True``.

        A ``pytorch_model.bin`` (or any other non-safetensors weights file, including shards named by an index or
        a ``transformers_weights`` entry in ``config.json``) is a pickle, and unpickling can run code. Without the
        opt-in it is refused with :class:`UnsafeWeightsError` before it is opened; with it, transformers' own
        loader runs (``torch.load(weights_only=True)`` unless you also pass ``weights_only=False``).
        """
        if allow_pickle:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if kwargs.get("use_safetensors") is False:
            raise UnsafeWeightsError("use_safetensors=False asks for pickle weights; pass allow_pickle=True to opt in")
        try:
            with refuse_pickle_weights():
                return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as err:
            raise OSError(f"the safetensors weights of {os.fspath(pretrained_model_name_or_path)!r} are damaged or "
                          f"truncated and cannot be read: {err}") from err


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
