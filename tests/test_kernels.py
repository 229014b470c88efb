"""Analytic block linearizations agree with generic autograd on the same block and state."""

import pytest
import torch
from torch import nn

from mep_hf.equilibrium import AutogradBlock, linearize_block
from mep_hf.kernels import DenseLinearization
from mep_hf.models.mlp.modeling_ep_mlp import EPDenseBlock


@pytest.mark.parametrize("activation", [None, "tanh", "sigmoid", "relu"])
def test_dense_linearization_matches_autograd(activation):
    torch.manual_seed(0)
    block = EPDenseBlock(6, 5, activation).double()
    s, e = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    analytic = linearize_block(block, s, None, input_grad=True)
    generic = AutogradBlock(block, s, None, input_grad=True)
    assert isinstance(analytic, DenseLinearization)
    assert torch.allclose(analytic.output, generic.output.detach(), rtol=0, atol=1e-14)
    assert torch.allclose(analytic.vjp(e), generic.vjp(e), rtol=0, atol=1e-14)
    before = e.clone()
    analytic_grads = analytic.parameter_grads(e, -0.5)
    assert torch.equal(e, before)  # the contrast places the state in e's storage after this
    generic_grads = {id(p): g for p, g in generic.parameter_grads(e, -0.5)}
    assert [id(p) for p, _ in analytic_grads] == [id(block.linear.weight), id(block.linear.bias)]
    assert generic_grads.keys() == {id(p) for p, _ in analytic_grads}
    for p, g in analytic_grads:
        assert g.shape == p.shape and g.is_contiguous()
        assert torch.allclose(g, generic_grads[id(p)], rtol=0, atol=1e-13)


def test_dense_linearization_skips_frozen_parameters():
    block = EPDenseBlock(3, 2, "tanh")
    block.linear.bias.requires_grad_(False)
    pairs = linearize_block(block, torch.randn(2, 3), None, input_grad=False).parameter_grads(torch.randn(2, 2), 1.0)
    assert [id(p) for p, _ in pairs] == [id(block.linear.weight)]


def test_dense_falls_back_to_autograd_where_the_closed_form_would_differ():
    """Autocast changes the matmul dtype, a bf16 block fed a float32 state computes in bf16, and an activation
    without a closed-form derivative here (gelu) is differentiated by autograd instead."""
    s = torch.randn(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert isinstance(linearize_block(EPDenseBlock(3, 2, "tanh"), s, None, input_grad=True), AutogradBlock)
    bf16 = EPDenseBlock(3, 2, "tanh").to(torch.bfloat16)
    assert isinstance(linearize_block(bf16, s, torch.bfloat16, input_grad=True), AutogradBlock)
    assert isinstance(linearize_block(EPDenseBlock(3, 2, "gelu"), s, None, input_grad=True), AutogradBlock)
    assert isinstance(linearize_block(nn.Linear(3, 2), s, None, input_grad=True), AutogradBlock)
