"""Bad input fails early with an error that names the problem."""

import math

import pytest
import torch
from torch import nn

from mep_hf import BlockStack, EPTrainer, SettleConfig, SettlingDivergedError, free_phase, settle
from tests.conftest import toy_args, toy_model


@pytest.fixture
def trainer(tmp_path, dataset):
    return EPTrainer(model=toy_model(), args=toy_args(tmp_path), train_dataset=dataset)


def step(trainer, **batch):
    return trainer.training_step(trainer.model, batch)


def test_wrong_input_shape(trainer):
    with pytest.raises(ValueError, match=r"pixel_values.*do not give 64 features"):
        step(trainer, pixel_values=torch.rand(4, 1, 7, 7), labels=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs(trainer, bad):
    x = torch.rand(4, 1, 8, 8)
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match="pixel_values.*NaN or inf"):
        step(trainer, pixel_values=x, labels=torch.zeros(4, dtype=torch.long))


def test_missing_labels(trainer):
    with pytest.raises(ValueError, match="needs `labels`"):
        step(trainer, pixel_values=torch.rand(4, 1, 8, 8))


@pytest.mark.parametrize(
    "labels, message",
    [(torch.tensor([0, 1, 2, 9]), r"labels must lie in \[0, 3\]"), (torch.rand(4), "integer class ids")],
)
def test_bad_labels(trainer, labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        step(trainer, pixel_values=torch.rand(4, 1, 8, 8), labels=labels)


def test_model_that_cannot_be_split_into_blocks(tmp_path):
    with pytest.raises(TypeError, match="cannot be split into EP blocks.*ep_stack.*model_type"):
        EPTrainer(model=nn.Linear(3, 2), args=toy_args(tmp_path))


def test_empty_block_stack():
    with pytest.raises(ValueError, match="at least one block"):
        BlockStack(inputs=torch.zeros(2, 3), blocks=[], loss=lambda s: s.sum())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ep_beta", -0.1, "ep_beta must be a finite number > 0"),
        ("ep_beta", 0.0, "ep_beta must be a finite number > 0"),
        ("ep_beta", math.nan, "ep_beta must be a finite number > 0"),
        ("ep_settle_steps", 0, "ep_settle_steps must be an integer >= 1"),
        ("ep_settle_steps", True, "ep_settle_steps must be an integer >= 1"),
        ("ep_beta", True, "ep_beta must be a finite number > 0"),
        ("ep_nudging", "symmetric-ish", "ep_nudging must be one of"),
        ("ep_settle_mode", "anneal", "ep_settle_mode must be one of"),
        ("ep_settle_lr", 1.5, r"ep_settle_lr must be in \(0, 1\]"),
        ("ep_settle_tol", -1.0, "ep_settle_tol must be >= 0"),
        ("ep_divergence_threshold", 0.0, "ep_divergence_threshold must be > 0"),
        ("mep_optimizer_options", "{not json", "mep_optimizer_options is not valid JSON"),
    ],
)
def test_invalid_ep_arguments(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        toy_args(tmp_path, **{field: value})


def test_trainer_refuses_plain_training_arguments(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="needs EPTrainingArguments"):
        EPTrainer(model=toy_model(), args=TrainingArguments(output_dir=str(tmp_path)))


def test_diverging_settling_names_step_and_layer():
    """Gradient settling with a step far beyond the energy's curvature blows up; the error says where."""
    torch.manual_seed(0)
    blocks = [nn.Linear(8, 8), nn.Linear(8, 8)]
    for b in blocks:
        nn.init.normal_(b.weight, std=3.0)
    y = torch.randint(0, 8, (4,))
    stack = BlockStack(torch.rand(4, 8), blocks, lambda s: nn.functional.cross_entropy(s, y))
    with pytest.raises(SettlingDivergedError, match=r"settling diverged at step \d+ .*layer \d of 2"):
        settle(stack, free_phase(stack), 0.5, SettleConfig(steps=50, mode="gradient", lr=1.0))


def test_settle_stops_early_at_tolerance():
    torch.manual_seed(0)
    model = toy_model()
    stack = model.ep_stack(pixel_values=torch.rand(8, 64), labels=torch.randint(0, 4, (8,)))
    phase = settle(stack, free_phase(stack), 0.01, SettleConfig(steps=50, tol=1e-4))
    assert 2 <= phase.steps < 50


def test_divergence_is_caught_at_the_contrast(tmp_path, dataset):
    """With one sweep no placement happens inside settling; the contrast's placement still checks the energy."""
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, ep_beta=1e4), train_dataset=dataset)
    with pytest.raises(SettlingDivergedError, match=r"settling diverged at step 1 \(beta=10000\)"):
        step(trainer, **dataset[:8])
