"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.block_stack`, `mep_hf.modeling_utils`, `mep_hf.models.convnet.modeling_ep_convnet`.

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
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ImageClassifierOutput
from typing import Any

from .configuration_ep_convnet import EPConvNetConfig, TASK_LOSSES


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


def classification_loss(kind: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Batch-mean loss of class ``labels`` given output ``logits``; ``mse`` compares with one-hot targets."""
    num_labels = logits.shape[-1]
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the batch needs {tuple(logits.shape[:-1])}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"labels must lie in [0, {num_labels - 1}], got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    labels = labels.long()  # cross_entropy / one_hot index with int64 only; narrower integer dtypes are fine inputs
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision upcast, float64 kept
    if kind == "cross_entropy":
        return F.cross_entropy(logits, labels)
    if kind == "mse":
        target = F.one_hot(labels, num_labels).to(logits.dtype)
        return 0.5 * (logits - target).pow(2).sum(-1).mean()
    raise ValueError(f"unknown loss {kind!r}; expected one of {TASK_LOSSES}")


def require_labels(labels: Tensor | None) -> Tensor:
    """EP nudges the output towards the labels, so a training batch without them is an error."""
    if labels is None:
        raise ValueError("EP training needs `labels` in every batch: the nudged phase pulls the output towards them "
                         "(a data collator drops label columns it cannot make a tensor of, such as strings)")
    if not isinstance(labels, Tensor):
        raise TypeError(f"`labels` must be a tensor of integer class ids, got {type(labels).__name__}")
    return labels


def check_finite(name: str, tensor: Tensor) -> Tensor:
    if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or inf")
    return tensor


def check_features(name: str, tensor, features: int, dtype: torch.dtype) -> Tensor:
    """A real-valued batch ``(batch, ...)`` with ``features`` values per example, as a ``(batch, features)`` tensor
    of ``dtype``. Refuses non-tensors, complex values, empty batches, NaN/inf and values that overflow ``dtype``."""
    if tensor is None:
        raise ValueError(f"`{name}` is required")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__} (convert it with torch.as_tensor)")
    if tensor.dtype.is_complex:
        raise TypeError(f"`{name}` must be real-valued, got dtype {tensor.dtype}")
    if tensor.dim() < 2 or tensor.shape[1:].numel() != features:
        raise ValueError(
            f"`{name}` of shape {tuple(tensor.shape)} do not give {features} features per example; "
            "expected (batch, ...) with that many values per example"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (0 examples); EP needs at least one example per step")
    flat = tensor.reshape(tensor.shape[0], -1).to(dtype)
    # Hot path: one reduction (NaN/inf propagate into the sum); the full element-wise check only if it is not finite.
    if dtype.is_floating_point and not torch.isfinite(flat.sum()) and not torch.isfinite(flat).all():
        check_finite(name, tensor)
        raise ValueError(f"`{name}` has values too large for the model dtype {dtype} (they overflow to inf)")
    return flat


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


class ImageBlockChainMixin:
    """``ep_stack`` and ``forward`` of a classifier that is a plain chain of ``self.blocks`` (MLP, conv net).

    The model supplies ``_pixels(pixel_values) -> Tensor`` (validated, shaped for its first block) and
    ``config.loss``; the output block's state holds the logits.
    """

    # The loss is a per-batch mean that ignores ``num_items_in_batch``: the Trainer then divides it by the
    # gradient-accumulation steps itself, for backprop and EP alike.
    accepts_loss_kwargs = False

    def ep_stack(self, pixel_values: Tensor | None = None, labels: Tensor | None = None, **_) -> BlockStack:
        return BlockStack.with_output(self._pixels(pixel_values), list(self.blocks), self.ep_output,
                                      require_labels(labels))

    def ep_output(self, logits: Tensor, labels: Tensor | None = None, **_) -> ImageClassifierOutput:
        """The model output at the output state (``forward``'s tail; EP's loss comes from here)."""
        loss = None if labels is None else classification_loss(self.config.loss, logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)

    @routes_ep_contrast
    def forward(self, pixel_values: Tensor | None = None, labels: Tensor | None = None, **kwargs):
        """The free phase: an ordinary forward pass."""
        s = self._pixels(pixel_values)
        for block in self.blocks:
            s = block(s)
        return self.ep_output(s, labels)


class EPConvBlock(nn.Module):
    """``pool(activation(conv(s)))``: one EP block."""

    def __init__(self, in_channels: int, out_channels: int, config: EPConvNetConfig):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, config.kernel_size, padding=config.kernel_size // 2)
        self.act = ACT2FN[config.activation]
        self.pool = nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2)

    def forward(self, s: Tensor) -> Tensor:
        return self.pool(self.act(self.conv(s)))


class EPReadout(nn.Module):
    """Flatten + linear: the output block, whose state holds the logits."""

    def __init__(self, in_features: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_labels)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(s.flatten(1))


class EPConvNetPreTrainedModel(EPPreTrainedModel):
    config_class = EPConvNetConfig
    base_model_prefix = "convnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)


class EPConvNetForImageClassification(ImageBlockChainMixin, EPConvNetPreTrainedModel):
    """Conv classifier: ``forward`` is the free phase; ``ep_stack`` hands its blocks to the EP engine."""

    def __init__(self, config: EPConvNetConfig):
        super().__init__(config)
        widths = [config.num_channels, *config.channels]
        side = config.image_size // 2 ** len(config.channels)
        self.blocks = nn.ModuleList(
            [EPConvBlock(i, o, config) for i, o in zip(widths[:-1], widths[1:])]
            + [EPReadout(widths[-1] * side * side, config.num_labels)]
        )
        self.post_init()

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        """Images ``(num_channels, image_size, image_size)``, or flat rows of that many values."""
        c, n = self.config.num_channels, self.config.image_size
        return check_features("pixel_values", pixel_values, c * n * n, self.dtype).reshape(-1, c, n, n)
