"""mep-hf: Equilibrium Propagation as a drop-in for backprop in the Hugging Face Trainer.

Train: :class:`EPTrainer` + :class:`EPTrainingArguments` (``Seq2SeqTrainer``'s: :class:`EPSeq2SeqTrainer` +
:class:`EPSeq2SeqTrainingArguments`), or in a loop of your own :func:`ep_backward` (EP's ``loss.backward()``;
Lightning: ``mep_hf.integrations.lightning``). Models: the EP-native ones here (Auto-registered) or any stock model
:func:`prepare_ep_model` supports (``mep_hf.adapters``). Data: ``mep_hf.data``. Continual learning:
:class:`EWCCallback` (``mep_hf.callbacks``). Optimizers: ``mep_hf.optim``. Metrics: ``mep_hf.metrics``. Hub and model
zoo: ``mep_hf.hub``. The algorithm: ``mep_hf.equilibrium`` (the family-neutral core) and ``mep_hf.energies`` (the
energy families; the layered one is ``mep_hf.energies.layered``). The map: ``docs/architecture.md``.
"""

from . import adapters, callbacks, data, hub, metrics, optim
from .adapters import prepare_ep_model
from .callbacks import EWCCallback
from .audit import GradientAuditError
from .backward import ep_backward, ep_loss
from .checkpointing import CheckpointIntegrityError
from .distributed import load_sharded_checkpoint, save_sharded_checkpoint, shard_for_ep
from .block_stack import BlockStack
from .energies.layered import Contrast, ScaleFreeBeta, SettleConfig, free_phase, nudged_phases, settle
from .equilibrium import SettlingDivergedError, register_nudging
from .guard import TrainingDivergedError
from .models import (
    EPCharTokenizer,
    EPCharTransformerConfig,
    EPCharTransformerForCausalLM,
    EPConvNetConfig,
    EPConvNetForImageClassification,
    EPHopfieldConvNetConfig,
    EPHopfieldConvNetForImageClassification,
    EPHopfieldMLPConfig,
    EPHopfieldMLPForImageClassification,
    EPMLPConfig,
    EPMLPForImageClassification,
    EPResidualMLPConfig,
    EPResidualMLPForImageClassification,
)
from .optim import PRESETS, build_optimizer
from .runtime import configure_threads
from .seq2seq import EPSeq2SeqTrainer, EPSeq2SeqTrainingArguments
from .trainer import EPTrainer
from .training_args import EPTrainingArguments
from .version import __version__

__all__ = [
    "PRESETS",
    "BlockStack",
    "CheckpointIntegrityError",
    "Contrast",
    "EPCharTokenizer",
    "EPCharTransformerConfig",
    "EPCharTransformerForCausalLM",
    "EPConvNetConfig",
    "EPConvNetForImageClassification",
    "EPHopfieldConvNetConfig",
    "EPHopfieldConvNetForImageClassification",
    "EPHopfieldMLPConfig",
    "EPHopfieldMLPForImageClassification",
    "EPMLPConfig",
    "EPMLPForImageClassification",
    "EPResidualMLPConfig",
    "EPResidualMLPForImageClassification",
    "EPSeq2SeqTrainer",
    "EPSeq2SeqTrainingArguments",
    "EPTrainer",
    "EPTrainingArguments",
    "EWCCallback",
    "GradientAuditError",
    "ScaleFreeBeta",
    "SettleConfig",
    "SettlingDivergedError",
    "TrainingDivergedError",
    "adapters",
    "build_optimizer",
    "callbacks",
    "configure_threads",
    "data",
    "ep_backward",
    "ep_loss",
    "free_phase",
    "load_sharded_checkpoint",
    "hub",
    "metrics",
    "nudged_phases",
    "optim",
    "prepare_ep_model",
    "register_nudging",
    "settle",
    "save_sharded_checkpoint",
    "shard_for_ep",
]
