"""EPTrainer inside the stock Trainer machinery: learning, accumulation, resume, evaluate/predict, logging, I/O."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageClassification

from mep_hf import EPMLPForImageClassification, EPTrainer
from tests.conftest import toy_args, toy_images, toy_model


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-6, msg=k)


def test_loss_falls_and_diagnostics_are_logged(tmp_path, dataset):
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, max_steps=60, logging_steps=10), train_dataset=dataset)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"], [h["loss"] for h in logs]
    assert all("ep_energy" in h and h["ep_settle_steps"] == 1 for h in logs)
    assert all(np.isfinite(h["ep_energy"]) and h["ep_energy"] > 0 for h in logs)


def test_logged_loss_is_the_free_phase_task_loss(tmp_path, dataset):
    model = toy_model()
    batch = dataset[:16]
    expected = model(**batch).loss.item()
    trainer = EPTrainer(model=model, args=toy_args(tmp_path), train_dataset=dataset)
    loss = trainer.training_step(trainer.model, dict(batch))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_accumulation_equals_doubled_batch(tmp_path, dataset):
    runs = {}
    for name, batch, accumulation in [("accumulated", 8, 2), ("doubled", 16, 1)]:
        args = toy_args(
            tmp_path / name, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=5
        )
        trainer = EPTrainer(model=toy_model(), args=args, train_dataset=dataset)
        trainer.train()
        runs[name] = params_of(trainer.model)
    assert_same_params(runs["accumulated"], runs["doubled"], atol=1e-6)


def test_resume_from_checkpoint_continues_exactly(tmp_path, dataset):
    common = dict(max_steps=12, save_strategy="steps", save_steps=6)
    straight = EPTrainer(model=toy_model(), args=toy_args(tmp_path / "a", **common), train_dataset=dataset)
    straight.train()

    interrupted_args = toy_args(tmp_path / "b", **common)
    first = EPTrainer(model=toy_model(), args=interrupted_args, train_dataset=dataset)
    first.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-6"
    assert (checkpoint / "model.safetensors").is_file()
    resumed = EPTrainer(model=toy_model(seed=123), args=toy_args(tmp_path / "b", **common), train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert_same_params(params_of(straight.model), params_of(resumed.model))


def test_evaluate_and_predict(tmp_path, dataset):
    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = EPTrainer(
        model=toy_model(),
        args=toy_args(tmp_path, max_steps=80, learning_rate=2e-2),
        train_dataset=dataset,
        eval_dataset=toy_images(128, seed=1),
        compute_metrics=accuracy,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.9, metrics
    prediction = trainer.predict(toy_images(64, seed=2))
    assert prediction.predictions.shape == (64, 4)
    assert prediction.metrics["test_accuracy"] > 0.9


def test_save_pretrained_round_trips_bit_exactly_through_auto_classes(tmp_path):
    model = toy_model(activation="gelu", loss="mse")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ep_mlp"
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "EPMLPConfig"
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, EPMLPForImageClassification)
    assert loaded.config.loss == "mse" and loaded.config.activation == "gelu"
    assert_same_params(params_of(model), params_of(loaded))


def test_mep_optimizer_preset_is_used(tmp_path, dataset):
    from mep_hf.optim import Muon

    args = toy_args(tmp_path, mep_optimizer="muon_backprop", max_steps=3)
    trainer = EPTrainer(model=toy_model(), args=args, train_dataset=dataset)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, Muon)


def test_convnet_trains_and_round_trips(tmp_path, dataset):
    from mep_hf import EPConvNetConfig, EPConvNetForImageClassification

    torch.manual_seed(0)
    config = EPConvNetConfig(num_channels=1, image_size=8, channels=[8, 8], num_labels=4, activation="tanh")
    model = EPConvNetForImageClassification(config)
    trainer = EPTrainer(model=model, args=toy_args(tmp_path, max_steps=40, logging_steps=10), train_dataset=dataset)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0], losses
    trainer.save_model()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert isinstance(loaded, EPConvNetForImageClassification)
    assert_same_params(params_of(trainer.model), params_of(loaded))
