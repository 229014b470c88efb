"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.kernels.linear_maps`, `mep_hf.modeling_utils`, `mep_hf.models.hopfield.configuration_ep_hopfield`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

from dataclasses import field
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


TASK_LOSSES = ("cross_entropy", "mse")


POOLS = ("max", "avg", "none")


def _states_are_scores(config) -> None:
    """An MSE model's outputs are its output states, in [0, 1] and trained towards the one-hot target: they are the
    scores themselves. ``problem_type="regression"`` tells ``pipeline("image-classification")`` to report them as
    they are, where its default softmax over values in [0, 1] would cap any score at e/(e + num_labels − 1) (0.23
    for 10 classes, however sure the model is). Cross-entropy models read out logits: softmax stays."""
    if config.loss == "mse" and config.problem_type is None:
        config.problem_type = "regression"


def _check_dynamics(config) -> None:
    for name in ("free_steps", "nudged_steps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not config.settle_tol >= 0:
        raise ValueError(f"settle_tol must be >= 0, got {config.settle_tol!r}")
    if not config.initializer_gain > 0:
        raise ValueError(f"initializer_gain must be > 0, got {config.initializer_gain!r}")
    if config.loss not in TASK_LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; expected one of {TASK_LOSSES}")


@strict
class EPHopfieldConvNetConfig(PreTrainedConfig):
    """P-CNN: convolutional state layers ``pool(conv(s))`` (stride 1, ``padding``, ``pool_size`` pooling), then dense
    state layers ``hidden_sizes``, then (``loss="mse"``) ``num_labels`` output units or (``"cross_entropy"``) a
    linear read-out of the last layer. Energy family ``hopfield``.

    Args:
        num_channels, image_size: inputs are ``(num_channels, image_size, image_size)`` images or flat rows.
        channels: output channels of each conv state layer.
        kernel_size, padding: the convolutions (stride 1).
        pool, pool_size: ``"max"`` (Laborieux et al. 2021), ``"avg"`` or ``"none"``; window = stride = pool_size.
        hidden_sizes: dense state layers after the conv layers.
        loss, free_steps, nudged_steps, settle_tol, initializer_gain: as in :class:`EPHopfieldMLPConfig`.
    """

    model_type = "ep_hopfield_convnet"
    ep_energy = "hopfield"

    num_channels: int = 1
    image_size: int = 28
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 5
    padding: int = 0
    pool: str = "max"
    pool_size: int = 2
    hidden_sizes: list[int] = field(default_factory=list)
    loss: str = "mse"
    free_steps: int = 40
    nudged_steps: int = 12
    settle_tol: float = 0.0
    initializer_gain: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _states_are_scores(self)

    def conv_sides(self) -> list[int]:
        """Side of each conv state layer: ``(side + 2·padding − kernel + 1) // pool_size``."""
        sides, side = [], self.image_size
        for _ in self.channels:
            side = (side + 2 * self.padding - self.kernel_size + 1) // (self.pool_size if self.pool != "none" else 1)
            sides.append(side)
        return sides

    def describe_architecture(self) -> str:
        """One line for model cards (``mep-hf-zoo package``)."""
        layers = [str(self.num_channels), *map(str, self.channels), *map(str, self.hidden_sizes), str(self.num_labels)]
        return (f"Hopfield P-CNN {'-'.join(layers)} (classic EP: conv{self.kernel_size}x{self.kernel_size} + "
                f"{self.pool} pool state layers settle to the energy's minimum, {self.free_steps} free / "
                f"{self.nudged_steps} nudged steps), {self.loss} loss; input "
                f"{self.num_channels}x{self.image_size}x{self.image_size}")

    def validate_architecture(self):
        if self.num_channels < 1 or not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive and non-empty, got {self.num_channels}, {self.channels}")
        if self.kernel_size < 1 or self.padding < 0 or self.pool_size < 1 or any(h < 1 for h in self.hidden_sizes):
            raise ValueError("kernel_size, pool_size and hidden_sizes must be positive and padding >= 0")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; expected one of {POOLS}")
        if min(self.conv_sides()) < 1:
            raise ValueError(f"image_size {self.image_size} shrinks to nothing through the conv layers "
                             f"(sides {self.conv_sides()})")
        _check_dynamics(self)
