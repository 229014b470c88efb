"""Hopfield-energy (classic EP) classifiers: the P-MLP and the P-CNN (Laborieux et al. 2021).

``forward`` is the free phase: it settles the states from zero for ``config.free_steps`` steps
(:func:`mep_hf.energies.hopfield.free_phase`) and reads the output off the last state. With autograd on (a plain
``Trainer``), it is differentiable: backprop through the unrolled settling (BPTT). ``ep_stack`` hands the blocks and
the settling schedule to the EP engine (``EPTrainer``, energy family ``hopfield``).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from ...block_stack import routes_ep_contrast
from ...energies.hopfield import HopfieldStack, free_phase
from ...kernels.linear_maps import ConvPoolLinearization, LinearMapLinearization
from ...modeling_utils import EPPreTrainedModel, check_features, classification_loss, require_labels
from .configuration_ep_hopfield import EPHopfieldConvNetConfig, EPHopfieldMLPConfig


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


class HopfieldConvPool(nn.Module):
    """Block ``f(s) = pool(conv(s) + b)`` (stride-1 convolution, non-overlapping pooling)."""

    def __init__(self, in_channels: int, out_channels: int, config: EPHopfieldConvNetConfig):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, config.kernel_size, padding=config.padding)
        self.pool, self.pool_size = config.pool, config.pool_size

    def forward(self, s: Tensor) -> Tensor:
        """The block itself, without the kernels (``ep_linearize`` computes the same output on its fast path)."""
        z = self.conv(s)
        if self.pool == "none":
            return z
        return (F.max_pool2d if self.pool == "max" else F.avg_pool2d)(z, self.pool_size, self.pool_size)

    def ep_linearize(self, s: Tensor) -> ConvPoolLinearization:
        return ConvPoolLinearization(self.conv, self.pool, self.pool_size, s)


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


class EPHopfieldConvNetForImageClassification(EPHopfieldPreTrainedModel):
    """P-CNN classifier (Laborieux et al. 2021): conv state layers, dense state layers, output."""

    config_class = EPHopfieldConvNetConfig
    base_model_prefix = "hopfield_convnet"

    def __init__(self, config: EPHopfieldConvNetConfig):
        super().__init__(config)
        widths = [config.num_channels, *config.channels]
        blocks = [HopfieldConvPool(i, o, config) for i, o in zip(widths[:-1], widths[1:])]
        sizes = [widths[-1] * config.conv_sides()[-1] ** 2, *config.hidden_sizes]
        if config.loss == "mse":
            sizes.append(config.num_labels)
        blocks += [HopfieldDense(i, o) for i, o in zip(sizes[:-1], sizes[1:])]
        self.blocks = nn.ModuleList(blocks)
        self.readout = _readout(config, sizes[-1])
        self.post_init()

    def _pixels(self, pixel_values: Tensor | None) -> Tensor:
        c, n = self.config.num_channels, self.config.image_size
        return check_features("pixel_values", pixel_values, c * n * n, self.dtype).reshape(-1, c, n, n)
