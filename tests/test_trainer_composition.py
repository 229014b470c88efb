"""EP composed with other Trainer subclasses, and ``model_init``.

* ``class X(EPTrainer, OtherTrainer)`` runs EP's step under ``OtherTrainer.compute_loss``: its update equals
  ``OtherTrainer``'s backprop update (float64, centered, small β; the bound of ``tests/test_trainer_parity.py``).
* The other order, ``class X(OtherTrainer, EPTrainer)``, would train by backprop in silence: refused at ``__init__``
  with the order that works.
* ``EPTrainer(model_init=...)`` adapts and checks the model as ``model=`` does, at ``__init__`` and again in
  ``train()``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer

from mep_hf import EPTrainer, EPTrainingArguments
from tests.adapter_models import tiny_model
from tests.parity import MODELS, padded_lm_data, relative_difference, train_update
from tests.test_trainer_parity import margin_loss

BOUND = 1e-4
ACCUMULATED = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2)


class PenaltyTrainer(Trainer):
    """A Trainer subclass with its own loss: cross-entropy plus a logit penalty, from the model's outputs."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = margin_loss(outputs, labels, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


class EPPenaltyTrainer(EPTrainer, PenaltyTrainer):
    """PenaltyTrainer by EP: EPTrainer first."""


class PenaltyEPTrainer(PenaltyTrainer, EPTrainer):
    """The wrong order: PenaltyTrainer's compute_loss would run (backprop) instead of EP's."""


class StepTrainer(Trainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, num_items_in_batch)


class StepEPTrainer(StepTrainer, EPTrainer):
    pass


class WrongBase(PenaltyTrainer, EPTrainer):
    pass


class ChildOfWrongBase(WrongBase):
    pass


def penalty_parity(tmp_path, ep_trainer) -> float:
    data = padded_lm_data(8, seed=1)
    ep, _ = train_update("ep", MODELS["gpt2"](), data, tmp_path / "ep", ep_trainer=ep_trainer, **ACCUMULATED)
    bp, _ = train_update("backprop", MODELS["gpt2"](), data, tmp_path / "bp", backprop_trainer=PenaltyTrainer,
                         **ACCUMULATED)
    difference = relative_difference(ep, bp)
    print(f"{ep_trainer.__name__} vs PenaltyTrainer (backprop): relative update difference {difference:.3g}")
    return difference


def test_ep_first_nudges_with_the_subclass_loss(tmp_path):
    assert penalty_parity(tmp_path, EPPenaltyTrainer) <= BOUND


def test_negative_control_plain_eptrainer_misses_the_subclass_loss(tmp_path):
    """EPTrainer alone nudges with Trainer's loss, not PenaltyTrainer's: the comparison above can fail."""
    assert penalty_parity(tmp_path, EPTrainer) > 100 * BOUND


def args(tmp_path, **kw) -> EPTrainingArguments:
    return EPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


@pytest.mark.parametrize("cls, owner, method, fix", [
    (PenaltyEPTrainer, "PenaltyTrainer", "compute_loss", "class PenaltyEPTrainer(EPTrainer, PenaltyTrainer)"),
    (StepEPTrainer, "StepTrainer", "training_step", "class StepEPTrainer(EPTrainer, StepTrainer)"),
    (ChildOfWrongBase, "PenaltyTrainer", "compute_loss", "class WrongBase(EPTrainer, PenaltyTrainer)"),
])
def test_another_trainers_step_ahead_of_eps_is_refused(tmp_path, cls, owner, method, fix):
    with pytest.raises(TypeError) as info:
        cls(model=MODELS["gpt2"](), args=args(tmp_path), train_dataset=padded_lm_data(4))
    message = str(info.value)
    print(message)
    assert f"{cls.__name__} would train by backprop, not EP" in message
    assert f"runs {owner}.{method} ahead of EPTrainer's" in message
    assert fix in message


def test_ep_subclasses_and_mixins_without_a_step_are_accepted(tmp_path):
    class OwnLoss(EPTrainer):
        def compute_loss(self, *a, **kw):
            return super().compute_loss(*a, **kw)

    class Mixin:
        def describe(self):
            return "mixin"

    class Mixed(Mixin, EPTrainer):
        pass

    for cls in (OwnLoss, Mixed, EPPenaltyTrainer):
        cls(model=MODELS["gpt2"](), args=args(tmp_path), train_dataset=padded_lm_data(4))


def llama_init():
    return tiny_model("llama", "causal-lm").double()


def test_model_init_trains_a_supported_model_by_ep(tmp_path):
    """``model_init`` runs in ``__init__`` and again in ``train()``: both models are adapted; the EP update equals
    Trainer's (β = 1e-5: this tiny Llama's O(β²) bias is 1.8e-5 per batch at β = 1e-4, tests/test_trl.py)."""
    calls = []

    def model_init():
        calls.append(1)
        return llama_init()

    data = padded_lm_data(8, seed=1)
    ep, ep_log = train_update("ep", model_init, data, tmp_path / "ep", ep_beta=1e-5, **ACCUMULATED)
    assert len(calls) == 3, "model_init: once for `before`, once in __init__, once in train()"
    bp, _ = train_update("backprop", llama_init(), data, tmp_path / "bp", **ACCUMULATED)
    difference = relative_difference(ep, bp)
    print(f"EPTrainer(model_init=Llama) vs Trainer: relative update difference {difference:.3g}")
    assert difference <= BOUND
    assert all("ep_energy" in h for h in ep_log if "loss" in h)


def test_model_init_with_a_trial_is_adapted(tmp_path):
    """``hyperparameter_search`` calls ``model_init(trial)``: that model is adapted too."""
    trainer = EPTrainer(model_init=lambda trial: llama_init(), args=args(tmp_path), train_dataset=padded_lm_data(4))
    assert callable(getattr(trainer.model, "ep_stack", None))
    model = trainer.call_model_init({"learning_rate": 1e-3})
    assert callable(getattr(model, "ep_stack", None)) and model is not trainer.model


def test_model_init_of_an_unsupported_model_is_refused_at_init(tmp_path):
    def model_init():
        return torch.nn.Sequential(torch.nn.Linear(4, 2))

    with pytest.raises(TypeError, match="Sequential cannot be split into EP blocks"):
        EPTrainer(model_init=model_init, args=args(tmp_path), train_dataset=padded_lm_data(4))
