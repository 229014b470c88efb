"""The EP residual MLP: EP gradients equal backprop's at depth, its closed-form block equals autograd's, and the
model saves, loads, validates its config and trains."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from mep_hf import EPResidualMLPConfig, EPResidualMLPForImageClassification, EPTrainer
from mep_hf.equilibrium import AutogradBlock
from mep_hf.kernels import ResidualDenseLinearization
from mep_hf.models import EPImageProcessor
from tests.conftest import toy_args, toy_images
from tests.test_gradient_equivalence import assert_match, compare


def residual_mlp(depth: int, seed: int = 0, **config) -> EPResidualMLPForImageClassification:
    torch.manual_seed(seed)
    config = {"input_size": 30, "hidden_size": 12, "num_blocks": depth, "num_labels": 5, **config}
    return EPResidualMLPForImageClassification(EPResidualMLPConfig(**config)).double()


def stack_and_params(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, model.config.input_size, dtype=torch.float64, generator=g)
    y = torch.randint(0, model.config.num_labels, (8,), generator=g)
    return x, y, model.ep_stack(pixel_values=x, labels=y), list(model.parameters())


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"],
                         ids=["tanh-closed-form", "sigmoid-closed-form", "gelu-autograd"])
def test_deep_residual_gradients_match_backprop(activation):
    """40 residual blocks, both memory modes (``compare`` holds each to the bound). A nudge moves block l's state by about
    l·β (the skip paths add up), so the O(β²) bias grows with depth (1e-3 relative at β = 1e-5 here, 1e-5 at
    β = 1e-6): β = 1e-6 keeps it well below the bound."""
    model = residual_mlp(40, activation=activation)
    x, y, stack, params = stack_and_params(model)
    cos, rel = compare(params, stack, lambda c: model(pixel_values=x, labels=y, ep_contrast=c), beta=1e-6)
    assert len(params) == 2 * (40 + 2)
    assert_match(cos, rel)


def test_one_sided_large_beta_fails_the_bound():
    """Negative control: positive nudging with β = 0.01 (an O(β) bias, amplified by depth) fails the same check."""
    model = residual_mlp(40)
    x, y, stack, params = stack_and_params(model)
    cos, rel = compare(params, stack, lambda c: c(stack), beta=0.01, nudging="positive")
    print(f"max relative error {max(rel):.3g}")
    with pytest.raises(AssertionError):
        assert_match(cos, rel)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_closed_form_block_equals_autograd(activation):
    """Output, state VJP and parameter gradients of the closed form match autograd on the module to round-off."""
    block = residual_mlp(3, activation=activation).blocks[2]
    s = torch.randn(6, 12, dtype=torch.float64) * 3 + 1
    e = torch.randn(6, 12, dtype=torch.float64)
    closed = block.ep_linearize(s)
    assert isinstance(closed, ResidualDenseLinearization)
    reference = AutogradBlock(block, s, None, input_grad=True)
    torch.testing.assert_close(closed.output, reference.output.detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(closed.vjp(e), reference.vjp(e), rtol=1e-12, atol=1e-14)
    for (p, g), (q, h) in zip(closed.parameter_grads(e, 0.5), reference.parameter_grads(e, 0.5)):
        assert p is q
        torch.testing.assert_close(g, h, rtol=1e-12, atol=1e-14)


def test_residual_stream_stays_order_one_at_depth():
    """With α = 1/√depth the residual stream of 2,000 random blocks moves by O(1), neither exploding nor frozen."""
    model = residual_mlp(2000, hidden_size=16)
    x = torch.rand(4, 30, dtype=torch.float64)
    with torch.no_grad():
        first = model.blocks[0](x)
        s = first
        for block in model.blocks[1:-1]:
            s = block(s)
    moved = ((s - first).norm(dim=-1) / first.norm(dim=-1)).tolist()
    assert all(0.3 < m < 10 for m in moved), moved


def test_save_load_round_trip_through_auto_classes(tmp_path):
    model = residual_mlp(5, activation="sigmoid", branch_scale=0.3, loss="mse").float()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ep_residual_mlp"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), EPResidualMLPConfig)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, EPResidualMLPForImageClassification)
    assert loaded.config.residual_scale == 0.3 and loaded.config.num_blocks == 5
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(3, 30)
    assert torch.equal(model(pixel_values=x).logits, loaded(pixel_values=x).logits)
    assert IMAGE_PROCESSOR_MAPPING[EPResidualMLPConfig] == {"pil": EPImageProcessor}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_blocks", 0, "num_blocks must be at least 1"),
        ("hidden_size", 0, "sizes must be positive"),
        ("activation", "swishy", "unknown activation 'swishy'"),
        ("branch_scale", -1.0, "branch_scale must be a positive finite number"),
        ("branch_scale", float("nan"), "branch_scale must be a positive finite number"),
        ("layer_norm_eps", 0.0, "layer_norm_eps must be positive"),
        ("loss", "hinge", "unknown loss 'hinge'"),
    ],
)
def test_config_refuses_bad_values(field, value, message):
    """The strict config runs ``validate_architecture`` on construction; its error names the field."""
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        EPResidualMLPConfig(**{field: value})


def test_default_branch_scale_is_one_over_sqrt_depth():
    assert EPResidualMLPConfig(num_blocks=100).residual_scale == pytest.approx(0.1)


def test_trains_with_ep_trainer(tmp_path):
    torch.manual_seed(0)
    model = EPResidualMLPForImageClassification(EPResidualMLPConfig(input_size=64, hidden_size=16, num_blocks=30,
                                                                    num_labels=4))
    args = toy_args(tmp_path, max_steps=40, logging_steps=10, learning_rate=3e-3, ep_beta=1e-4, ep_memory="low")
    trainer = EPTrainer(model=model, args=args, train_dataset=toy_images())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses
