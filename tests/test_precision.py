"""Mixed precision: bf16 autocast on CPU for settling and the contrast, with float32 states."""

import torch

from mep_hf import EPTrainer, SettleConfig, free_phase, nudged_phases
from mep_hf.energies.layered import Contrast
from tests.conftest import toy_args, toy_model


def test_bf16_autocast_ep_gradient_matches_float32_backprop():
    """Tolerance for bf16 (8-bit mantissa): cosine >= 0.999 and relative error <= 2e-2 per tensor, against the
    float32 backprop gradient; bf16 backprop itself is ~6e-3 off that reference on this case."""
    torch.manual_seed(0)
    model = toy_model(hidden_sizes=[64, 64], num_labels=10)
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    params = list(model.parameters())
    reference = torch.autograd.grad(model(pixel_values=x, labels=y).loss, params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack = model.ep_stack(pixel_values=x, labels=y)
        phases = nudged_phases(stack, free_phase(stack), 0.01, "centered", SettleConfig(steps=1))
        assert all(e.dtype == torch.float32 for p in phases for e in p.errors)
        ep = torch.autograd.grad(model(pixel_values=x, labels=y, ep_contrast=Contrast(phases)), params)
    for g, r in zip(ep, reference):
        assert g.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0) >= 0.999
        assert (g - r).norm() / r.norm() <= 2e-2


def test_trainer_learns_under_bf16_autocast(tmp_path, dataset):
    args = toy_args(tmp_path, bf16=True, max_steps=60, logging_steps=20, ep_nudging="centered")
    trainer = EPTrainer(model=toy_model(), args=args, train_dataset=dataset)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in trainer.model.parameters())
