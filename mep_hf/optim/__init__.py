"""MEP optimizers: Muon, Dion, spectral constraint, natural gradient, local rules, and presets combining them.

Each is a real ``torch.optim.Optimizer`` (one per model, as the Hugging Face Trainer expects) whose state
round-trips through ``torch.save`` / ``torch.load(weights_only=True)``.
"""

from .dion import Dion
from .feedback import accumulate, subtract_sent
from .local import LocalNormalizedSGD
from .muon import Muon
from .natural import DiagonalNaturalGradient
from .newton_schulz import newton_schulz_orthogonalize
from .presets import PRESETS, build_optimizer, preset_options
from .spectral import constrain_spectral_norm

__all__ = [
    "PRESETS",
    "DiagonalNaturalGradient",
    "Dion",
    "LocalNormalizedSGD",
    "Muon",
    "accumulate",
    "build_optimizer",
    "constrain_spectral_norm",
    "newton_schulz_orthogonalize",
    "preset_options",
    "subtract_sent",
]
