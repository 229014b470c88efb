"""PyTorch Lightning by EP: put :class:`EPMixin` ahead of ``LightningModule`` in a module's bases.

    class LitClassifier(EPMixin, L.LightningModule):
        ep_settings = {"ep_beta": 1e-3}           # EPTrainingArguments' EP step fields; optional
        def __init__(self):
            super().__init__()
            self.model = mep_hf.EPMLPForImageClassification(config)   # or a stock / peft model
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

Why a module mixin, and not a ``Strategy``, ``Precision`` plugin or ``Callback``: EP needs the batch and the model's
blocks before any loss exists, while those plugins and callbacks meet the step only around the loss that
``training_step`` returned, after backprop's graph is built. What Lightning asks of a ``training_step`` is a loss it
can scale and backpropagate; :meth:`EPMixin.ep_loss` is that loss (its value the loss at the free state, its
gradient EP's), so everything else stays Lightning's own: automatic (or manual) optimization, gradient accumulation
(it divides the loss), precision (an fp16 scaler's scale is handed to EP), clipping, ``self.log``, checkpointing,
and multi-process launch: ``training_step`` runs inside the DDP wrapper's forward, so the ranks' EP gradients are
all-reduced by DDP's hooks as backprop's would be. It works with ``lightning`` and ``pytorch_lightning`` alike, and
imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..backward import ep_step, output_loss, prepare
from ..guard import LossGuard, TrainingDivergedError

__all__ = ["EPMixin"]


class EPMixin:
    """A ``LightningModule`` mixin whose training step is EP's: list it before ``LightningModule`` (or before your
    own backprop module class, whose ``training_step`` it then replaces).

    ``ep_settings``: the EP step settings (``ep_beta``, ``ep_nudging``, ``ep_settle_steps``, ...: the
    ``EPTrainingArguments`` fields, same defaults, same checks), checked at ``fit`` start. ``ep_model``: the
    attribute that holds the model EP trains (default ``model``). ``ep_loss_guard``: ``(factor, window)`` of the
    divergence guard (:class:`~mep_hf.guard.LossGuard`; factor 0 stops only on a non-finite loss).
    """

    ep_settings: Mapping[str, Any] = {}
    ep_model: str = "model"
    ep_loss_guard: tuple[float, int] = (10.0, 20)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """EP's loss on ``batch`` with the model's own loss (``labels``), logged as ``train_loss``. Override it to
        log more or to nudge with a loss of your own: ``return self.ep_loss(batch, loss_fn)``."""
        loss = self.ep_loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def ep_loss(self, batch: Mapping[str, Any], loss_fn: Callable | None = None) -> Tensor:
        """The loss to return from ``training_step``: its value is the loss at the free state, its gradient EP's.
        ``loss_fn(output, batch)`` nudges with a loss of the model output (default: the model's own loss). The
        settling diagnostics (``ep_energy``, ``ep_beta``, ...) are logged with ``self.log``."""
        model = self._ep_model()
        unwrapped, energy, settings, config = prepare(model, **self.ep_settings)
        loss = None if loss_fn is None else output_loss(loss_fn, batch)
        value, diagnostics = ep_step(model, unwrapped, dict(batch), energy, settings, config, loss,
                                     self._ep_grad_scale(), on_free_loss=self._ep_guard)
        self.log_dict(diagnostics, on_step=True, on_epoch=False)
        return value

    def on_fit_start(self) -> None:
        """Check the EP settings against the model before the first batch, and start the divergence guard."""
        prepare(self._ep_model(), **self.ep_settings)
        self._ep_loss_guard = LossGuard(*self.ep_loss_guard)
        super().on_fit_start()

    def _ep_model(self) -> nn.Module:
        model = getattr(self, self.ep_model, None)
        if not isinstance(model, nn.Module):
            raise AttributeError(f"{type(self).__name__}.{self.ep_model} holds no model for EP to train; set it in "
                                 "__init__, or set ep_model to the name of the attribute that holds it")
        return model

    def _ep_guard(self, loss: float) -> None:
        """Stop training when the loss at the free state is non-finite or exploded (the updates diverged); under
        DDP the ranks decide together, so none is left waiting in the gradient all-reduce."""
        guard = getattr(self, "_ep_loss_guard", None) or LossGuard(*self.ep_loss_guard)
        self._ep_loss_guard = guard
        reason = guard.check(loss, self.global_step)
        if self.trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            raise TrainingDivergedError(reason or f"the training loss diverged on another process at step "
                                                  f"{self.global_step}")

    def _ep_grad_scale(self) -> float:
        """The fp16 ``GradScaler``'s current scale under Lightning's ``16-mixed`` precision (1 otherwise)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
