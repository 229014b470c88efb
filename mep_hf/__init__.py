"""mep-hf: Equilibrium Propagation as a drop-in for backprop in the Hugging Face Trainer."""

from .checkpointing import CheckpointIntegrityError
from .equilibrium import BlockStack, Contrast, SettleConfig, SettlingDivergedError, free_phase, nudged_phases, settle
from .guard import TrainingDivergedError
from . import metrics
from .models import (
    EPConvNetConfig,
    EPConvNetForImageClassification,
    EPHopfieldConvNetConfig,
    EPHopfieldConvNetForImageClassification,
    EPHopfieldMLPConfig,
    EPHopfieldMLPForImageClassification,
    EPMLPConfig,
    EPMLPForImageClassification,
)
from .trainer import EPTrainer
from .training_args import EPTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "BlockStack",
    "CheckpointIntegrityError",
    "Contrast",
    "EPConvNetConfig",
    "EPConvNetForImageClassification",
    "EPHopfieldConvNetConfig",
    "EPHopfieldConvNetForImageClassification",
    "EPHopfieldMLPConfig",
    "EPHopfieldMLPForImageClassification",
    "EPMLPConfig",
    "EPMLPForImageClassification",
    "EPTrainer",
    "EPTrainingArguments",
    "SettleConfig",
    "SettlingDivergedError",
    "TrainingDivergedError",
    "free_phase",
    "metrics",
    "nudged_phases",
    "settle",
]
