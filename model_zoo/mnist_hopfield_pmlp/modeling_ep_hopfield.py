"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.block_stack`, `mep_hf.energies.hopfield`, `mep_hf.hub.remote_standins`, `mep_hf.kernels.linear_maps`, `mep_hf.modeling_utils`, `mep_hf.models.hopfield.modeling_ep_hopfield`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed. Its
blocks' closed forms (`ep_linearize`) stay: `forward` settles through them. Install mep_hf (`pip install mep-hf`) to
train it by EP.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import torch
import torch.nn.functional as F
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import PreTrainedModel, initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from typing import Any, Protocol

from .configuration_ep_hopfield import EPHopfieldMLPConfig, TASK_LOSSES


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


class LinearMapLinearization:
    """``W·flatten(s) + b`` at the state ``s`` (any shape ``(batch, ...)``; the VJP comes back in that shape)."""

    def __init__(self, linear: nn.Linear, state: Tensor):
        self.linear, self.input = linear, state
        self.output = F.linear(state.flatten(1), linear.weight, linear.bias)

    def vjp(self, e: Tensor) -> Tensor:
        return (e @ self.linear.weight).view(self.input.shape)

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        weight, bias, pairs = self.linear.weight, self.linear.bias, []
        if weight.requires_grad:
            pairs.append((weight, (e.t() @ self.input.flatten(1)).mul_(scale)))
        if bias is not None and bias.requires_grad:
            pairs.append((bias, e.sum(0).mul_(scale)))
        return pairs


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


class BlockLinearization(Protocol):
    """One block run at one input state: ``output = f(s)`` and the state VJP ``vjp(e) = J_f(s)ᵀ e``."""

    output: Tensor

    def vjp(self, e: Tensor) -> Tensor: ...


def linearize_block(block, state: Tensor, feed_dtype: torch.dtype | None, input_grad: bool,
                    **_) -> BlockLinearization:
    """The block's closed form at ``state`` (``block.ep_linearize``): how a flat settling model runs its blocks."""
    analytic = getattr(block, "ep_linearize", None)
    lin = analytic(state) if analytic is not None and feed_dtype in (None, state.dtype) else None
    if lin is None:
        raise NotImplementedError(
            f"{type(block).__name__} has no closed form at this state; this model's remote code settles only "
            "blocks that have one. Install mep-hf (`pip install mep-hf`) and `import mep_hf` to run it."
        )
    return lin


def hard_sigmoid(u: Tensor) -> Tensor:
    """``ρ(u) = clamp(u, 0, 1)``: the projection onto the box the states live in."""
    return torch.clamp(u, 0.0, 1.0)


@dataclass
class HopfieldStack(BlockStack):
    """A :class:`~mep_hf.equilibrium.BlockStack` whose blocks couple settling states (``f_l(s_l)`` drives
    ``s_{l+1}``), with the model's own settling schedule: T_free, T_nudged and the residual tolerance. ``output``
    maps the last state ``s_N`` to the model output (identity for an MSE model, a read-out for cross-entropy)."""

    free_steps: int = 20
    nudged_steps: int = 10
    settle_tol: float = 0.0


@dataclass
class HopfieldPhase:
    """A settled phase: its β, states ``s_1..s_N``, steps taken, final relative residual, the task loss at
    ``s_N`` and (filled in by the contrast) its energy F and the free state's energy at the same β."""

    beta: float
    states: list[Tensor]
    steps: int
    residual: float
    loss: float = math.nan
    start_energy: float = math.nan
    energy: float = math.nan
    first_block: BlockLinearization | None = None  # block 1 at the clamped input (free phase only)


def _first_block(stack: BlockStack) -> BlockLinearization:
    """Block 1 linearized at the clamped input: its output ``f_1(x)`` drives ``s_1`` in every step of every phase."""
    return linearize_block(stack.blocks[0], stack.inputs, None, input_grad=False)


def initial_states(stack: BlockStack, first: BlockLinearization) -> list[Tensor]:
    """``s = 0`` in every layer (the shapes from one pass of the blocks at zero states)."""
    states = [torch.zeros_like(first.output)]
    with torch.no_grad():
        for block in stack.blocks[1:]:
            states.append(torch.zeros_like(block(states[-1])))
    return states


def dynamics_step(stack: BlockStack, first: BlockLinearization, states: Sequence[Tensor], beta: float = 0.0,
                  loss_grad: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
    """One synchronous step ``s_l ← ρ(f_{l−1}(s_{l−1}) + J_{f_l}(s_l)ᵀ s_{l+1} [− β·loss_grad(s_N)])``."""
    n = len(states)
    lins = [first] + [linearize_block(b, s, None, input_grad=True) for b, s in zip(stack.blocks[1:], states[:-1])]
    new = []
    for l in range(n):
        u = lins[l].output
        if l + 1 < n:
            u = u + lins[l + 1].vjp(states[l + 1])
        if l == n - 1 and beta != 0:
            u = u - beta * loss_grad(states[l])
        new.append(hard_sigmoid(u))
    return new


def residual(new: Sequence[Tensor], old: Sequence[Tensor]) -> float:
    """``‖s_{t+1} − s_t‖ / ‖s_{t+1}‖`` over all layers and the batch (one read-back)."""
    sq = torch.stack([torch.stack([(a - b).detach().pow(2).sum(), a.detach().pow(2).sum()]) for a, b in zip(new, old)])
    change, size = sq.sum(0).tolist()
    return math.sqrt(change / max(size, 1e-30))


def settle(stack: BlockStack, first: BlockLinearization, states: list[Tensor], steps: int, tol: float = 0.0,
           beta: float = 0.0, loss_grad: Callable[[Tensor], Tensor] | None = None) -> tuple[list[Tensor], int, float]:
    """Iterate :func:`dynamics_step` ``steps`` times, or until the residual is below ``tol`` (checked each step when
    ``tol > 0``). Returns the states, the steps taken and the final residual."""
    res, t = math.nan, 0
    for t in range(1, steps + 1):
        new = dynamics_step(stack, first, states, beta, loss_grad)
        if tol > 0 or t == steps:
            res = residual(new, states)
        states = new
        if tol > 0 and res < tol:
            break
    return states, t, res


def free_phase(stack: BlockStack, steps: int, tol: float = 0.0) -> HopfieldPhase:
    """The β = 0 equilibrium from ``s = 0`` (autograd records it when it is on: the model's ``forward`` under
    backprop). ``loss`` is left unset: the caller evaluates the loss it needs."""
    first = _first_block(stack)
    states, taken, res = settle(stack, first, initial_states(stack, first), steps, tol)
    return HopfieldPhase(beta=0.0, states=states, steps=taken, residual=res, first_block=first)


class HopfieldDense(nn.Module):
    """Block ``f(s) = W·flatten(s) + b``: the drive a state layer receives from the layer below (its transpose,
    ``Wᵀ s_{l+1}``, is the feedback the layer below receives)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(s.flatten(1))

    def ep_linearize(self, s: Tensor) -> LinearMapLinearization:
        return LinearMapLinearization(self.linear, s)


class EPHopfieldPreTrainedModel(EPPreTrainedModel):
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is a per-batch mean that ignores ``num_items_in_batch``: the Trainer divides it by the
    # gradient-accumulation steps itself, for backprop and EP alike.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        """Uniform in ``±gain/√fan_in`` (PyTorch's default for Linear and Conv2d at gain 1), biases too."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = self.config.initializer_gain / math.sqrt(fan_in)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        """The validated input state ``s_0``, shaped for the first block (each model class defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _pixels(pixel_values) -> Tensor")

    def _stack(self, pixel_values: Tensor | None, labels: Tensor | None) -> HopfieldStack:
        c = self.config
        loss = None if labels is None else (lambda s: self.ep_output(s, labels=labels)["loss"])
        return HopfieldStack(self._pixels(pixel_values), list(self.blocks), loss=loss, output=self.ep_output,
                             free_steps=c.free_steps, nudged_steps=c.nudged_steps, settle_tol=c.settle_tol)

    def ep_stack(self, pixel_values: Tensor | None = None, labels: Tensor | None = None, **_) -> HopfieldStack:
        return self._stack(pixel_values, require_labels(labels))

    def ep_output(self, state: Tensor, labels: Tensor | None = None, **_) -> ImageClassifierOutput:
        """The model output at the last state ``s_N`` (``forward``'s tail; EP's loss comes from here): the state
        itself (MSE models) or its linear read-out (cross-entropy models)."""
        logits = state if self.readout is None else self.readout(state.flatten(1))
        loss = None if labels is None else classification_loss(self.config.loss, logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)

    @routes_ep_contrast
    def forward(self, pixel_values: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs):
        """The free phase: settling from zero (differentiable when autograd is on). ``output_hidden_states``: the
        settled states ``s_1..s_N`` as ``hidden_states``."""
        free = free_phase(self._stack(pixel_values, None), self.config.free_steps, self.config.settle_tol)
        out = self.ep_output(free.states[-1], labels)
        if output_hidden_states:
            out.hidden_states = tuple(free.states)
        return out


def _readout(config, width: int) -> nn.Linear | None:
    return nn.Linear(width, config.num_labels) if config.loss == "cross_entropy" else None


class EPHopfieldMLPForImageClassification(EPHopfieldPreTrainedModel):
    """P-MLP classifier (Scellier & Bengio 2017; Laborieux et al. 2021)."""

    config_class = EPHopfieldMLPConfig
    base_model_prefix = "hopfield_mlp"

    def __init__(self, config: EPHopfieldMLPConfig):
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes]
        if config.loss == "mse":
            sizes.append(config.num_labels)
        self.blocks = nn.ModuleList(HopfieldDense(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.readout = _readout(config, sizes[-1])
        self.post_init()

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        return check_features("pixel_values", pixel_values, self.config.input_size, self.dtype)
