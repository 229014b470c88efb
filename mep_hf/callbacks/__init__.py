"""Trainer callbacks that work with ``EPTrainer`` and the plain ``Trainer`` alike.

* :class:`EWCCallback` -- Elastic Weight Consolidation for continual learning, Fisher from EP's own gradients
  (:mod:`mep_hf.callbacks.ewc`).
"""

from .ewc import EWC_STATE_NAME, EWCCallback, estimate_fisher

__all__ = ["EWCCallback", "EWC_STATE_NAME", "estimate_fisher"]
