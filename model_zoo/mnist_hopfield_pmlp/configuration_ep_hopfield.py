"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.modeling_utils`, `mep_hf.models.hopfield.configuration_ep_hopfield`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

from dataclasses import field
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


TASK_LOSSES = ("cross_entropy", "mse")


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
class EPHopfieldMLPConfig(PreTrainedConfig):
    """P-MLP: states ``hidden_sizes`` (and, with ``loss="mse"``, ``num_labels`` output units) in ``[0, 1]``, coupled
    to their neighbours by dense maps; the input is clamped. Energy family ``hopfield`` (:mod:`mep_hf.energies`).

    Args:
        input_size: flattened input features (784 for MNIST).
        hidden_sizes: widths of the hidden state layers.
        loss: ``"mse"``: the output layer is a state layer whose value are the logits, loss ``½‖s − onehot‖²``
            (Scellier & Bengio 2017); ``"cross_entropy"``: the last hidden layer is read out by a linear layer,
            softmax cross-entropy (Laborieux et al. 2021).
        free_steps: T_free, settling steps of the free phase (what ``forward`` runs: inference and evaluation).
        nudged_steps: T_nudged, settling steps of each nudged phase in training (``ep_nudged_steps`` overrides).
        settle_tol: stop settling once the relative residual ``‖s_{t+1} − s_t‖/‖s_{t+1}‖`` is below it (0 = off).
        initializer_gain: weights and biases start uniform in ``±gain/√fan_in`` (PyTorch's default at 1).

    With ``loss="mse"``, ``problem_type`` defaults to ``"regression"``: ``pipeline`` then reports the output states
    (in [0, 1]) as the scores, not a softmax of them.
    """

    model_type = "ep_hopfield_mlp"
    ep_energy = "hopfield"

    input_size: int = 784
    hidden_sizes: list[int] = field(default_factory=lambda: [512])
    loss: str = "mse"
    free_steps: int = 30
    nudged_steps: int = 10
    settle_tol: float = 0.0
    initializer_gain: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _states_are_scores(self)

    def describe_architecture(self) -> str:
        """One line for model cards (``mep-hf-zoo package``)."""
        sizes = [self.input_size, *self.hidden_sizes, self.num_labels]
        return (f"Hopfield P-MLP {'-'.join(map(str, sizes))} (classic EP: states in [0, 1] settle to the energy's "
                f"minimum, {self.free_steps} free / {self.nudged_steps} nudged steps), {self.loss} loss")

    def validate_architecture(self):
        if self.input_size < 1 or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"sizes must be positive, got input_size={self.input_size}, hidden={self.hidden_sizes}")
        if self.loss == "cross_entropy" and not self.hidden_sizes:
            raise ValueError("a cross-entropy P-MLP reads out its last hidden layer: hidden_sizes must not be empty")
        _check_dynamics(self)
