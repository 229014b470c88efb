"""EP gradients equal backprop gradients of the same loss as beta -> 0 (centered nudging, float64), in both memory
modes."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from mep_hf import BlockStack, EPMLPConfig, EPMLPForImageClassification, SettleConfig, free_phase, nudged_phases
from mep_hf.energies.layered import MEMORY_MODES, Contrast

COS_MIN, REL_MAX = 0.9999, 1e-4


def compare(params, stack: BlockStack, contrast_of, beta=1e-4, config=SettleConfig(steps=3), nudging="centered"):
    """Per-tensor (cosine, relative L2 error) of the EP gradient against backprop of the stack's loss, the worse of
    the two memory modes (``fast``: inner states, the free pass's graphs kept; ``low``: block states only, blocks
    re-run). Their energies differ by the inner states, so each is held to the bound on its own."""
    s = stack.inputs
    for block in stack.blocks:
        s = block(s)
    bp = torch.autograd.grad(stack.loss(s), params)
    grads = {}
    for memory in MEMORY_MODES:
        free = free_phase(stack, memory)
        # The free phase is the forward pass, but fast mode computes it module by module under hooks: the kernels
        # may sum in another order (5.6e-17 apart on an AMD EPYC), so the agreement is float64's, not bit for bit.
        torch.testing.assert_close(free.states[-1], s.detach(), rtol=1e-12, atol=1e-14)
        phases = nudged_phases(stack, free, beta, nudging, replace(config, memory=memory))
        grads[memory] = torch.autograd.grad(contrast_of(Contrast(phases)), params)
    cos, rel = [], []
    for ep in grads.values():
        cos.append([torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() for a, b in zip(ep, bp)])
        rel.append([((a - b).norm() / b.norm()).item() for a, b in zip(ep, bp)])
    worst = min(range(len(cos)), key=lambda i: (min(cos[i]), -max(rel[i])))
    return cos[worst], rel[worst]


def assert_match(cos, rel):
    print(f"min cosine {min(cos):.10f}, max relative error {max(rel):.3g}")
    assert min(cos) >= COS_MIN, cos
    assert max(rel) <= REL_MAX, rel


@pytest.mark.parametrize(
    "hidden, activation, loss",
    [([64, 48, 32], "tanh", "cross_entropy"), ([20] * 6, "sigmoid", "mse"), ([128], "gelu", "cross_entropy")],
    ids=["deep-tanh-ce", "narrow-sigmoid-mse", "wide-gelu-ce"],
)
def test_mlp_gradients_match_backprop(hidden, activation, loss):
    torch.manual_seed(0)
    model = EPMLPForImageClassification(
        EPMLPConfig(input_size=50, hidden_sizes=hidden, activation=activation, loss=loss, num_labels=7)
    ).double()
    x, y = torch.rand(12, 50, dtype=torch.float64), torch.randint(0, 7, (12,))
    stack = model.ep_stack(pixel_values=x, labels=y)
    cos, rel = compare(list(model.parameters()), stack, lambda c: model(pixel_values=x, labels=y, ep_contrast=c))
    assert_match(cos, rel)


def test_gradient_settling_matches_backprop():
    """Classic synchronous gradient-descent settling reaches the same equilibrium, just in more steps."""
    torch.manual_seed(1)
    model = EPMLPForImageClassification(EPMLPConfig(input_size=30, hidden_sizes=[24, 24], num_labels=5)).double()
    x, y = torch.rand(8, 30, dtype=torch.float64), torch.randint(0, 5, (8,))
    stack = model.ep_stack(pixel_values=x, labels=y)
    config = SettleConfig(steps=1000, mode="gradient", lr=0.3)
    cos, rel = compare(list(model.parameters()), stack, lambda c: c(stack), config=config)
    assert_match(cos, rel)


def _generic_stack_grads(blocks: nn.ModuleList, x, loss):
    stack = BlockStack(inputs=x, blocks=list(blocks), loss=loss)
    return compare(list(blocks.parameters()), stack, lambda c: c(stack))


def test_conv_blocks_match_backprop():
    """Any nn.Module is a block: conv blocks with pooling, then a linear read-out."""
    torch.manual_seed(2)
    blocks = nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
            nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 5)),
        ]
    ).double()
    x, y = torch.rand(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    cos, rel = _generic_stack_grads(blocks, x, lambda s: nn.functional.cross_entropy(s, y))
    assert_match(cos, rel)


class _Readout(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, s):
        return self.proj(self.norm(s).mean(dim=1))


def test_transformer_blocks_match_backprop():
    """Self-attention + LayerNorm blocks on (batch, tokens, dim) states."""
    torch.manual_seed(3)
    layer = dict(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    blocks = nn.ModuleList(
        [nn.TransformerEncoderLayer(**layer), nn.TransformerEncoderLayer(**layer), _Readout(16, 4)]
    ).double()
    x, y = torch.randn(5, 6, 16, dtype=torch.float64), torch.randint(0, 4, (5,))
    cos, rel = _generic_stack_grads(blocks, x, lambda s: nn.functional.cross_entropy(s, y))
    assert_match(cos, rel)


def test_one_sided_nudging_is_biased_to_first_order():
    """Positive nudging's error shrinks linearly with beta; centered nudging's is far smaller (O(beta^2))."""
    torch.manual_seed(4)
    model = EPMLPForImageClassification(EPMLPConfig(input_size=20, hidden_sizes=[16], num_labels=3)).double()
    x, y = torch.rand(8, 20, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = list(model.parameters())
    bp = torch.autograd.grad(model(pixel_values=x, labels=y).loss, params)

    def error(beta, nudging):
        stack = model.ep_stack(pixel_values=x, labels=y)
        phases = nudged_phases(stack, free_phase(stack), beta, nudging, SettleConfig(steps=20))
        ep = torch.autograd.grad(Contrast(phases)(stack), params)
        return max(((a - b).norm() / b.norm()).item() for a, b in zip(ep, bp))

    pos_big, pos_small = error(0.2, "positive"), error(0.1, "positive")
    assert 1.6 < pos_big / pos_small < 2.4  # first order: halving beta halves the error
    assert error(0.1, "centered") < 0.2 * pos_small


def _deep_tanh_stack():
    """The deep tanh MLP's stack on a float64 batch, and its parameters (the nudging tests' model)."""
    torch.manual_seed(0)
    model = EPMLPForImageClassification(
        EPMLPConfig(input_size=50, hidden_sizes=[64, 48, 32], activation="tanh", num_labels=7)
    ).double()
    x, y = torch.rand(12, 50, dtype=torch.float64), torch.randint(0, 7, (12,))
    return model.ep_stack(pixel_values=x, labels=y), list(model.parameters())


def test_five_point_nudging_is_exact_to_fourth_order():
    """The scheme added through the registry alone (±β, ±2β; its weights come from ``contrast_weights``): at a β
    where centered nudging's O(β²) bias fails the bound, the five-point stencil's O(β⁴) bias passes it, and halving
    β divides its error by about 16. Both memory modes."""
    stack, params = _deep_tanh_stack()
    config = SettleConfig(steps=40)  # settled to float64 precision: only the nudging's bias remains

    def worst(beta, nudging):
        cos, rel = compare(params, stack, lambda c: c(stack), beta=beta, config=config, nudging=nudging)
        print(f"{nudging} beta={beta}: min cosine {min(cos):.12f}, max relative error {max(rel):.3g}")
        return cos, rel

    centered = worst(0.02, "centered")
    with pytest.raises(AssertionError):  # the negative control: the same β, second order
        assert_match(*centered)
    five, five_half = worst(0.02, "five_point"), worst(0.01, "five_point")
    assert_match(*five)
    assert max(five[1]) < 0.05 * max(centered[1])
    assert 8 < max(five[1]) / max(five_half[1]) < 32  # fourth order: halving β divides the error by 16


def test_convnet_model_gradients_match_backprop():
    """The EP conv net (conv -> gelu -> max-pool blocks, linear read-out) through its own forward."""
    from mep_hf import EPConvNetConfig, EPConvNetForImageClassification

    torch.manual_seed(5)
    config = EPConvNetConfig(num_channels=2, image_size=8, channels=[6, 8], num_labels=5)
    model = EPConvNetForImageClassification(config).double()
    x, y = torch.rand(6, 2 * 8 * 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    stack = model.ep_stack(pixel_values=x, labels=y)
    cos, rel = compare(list(model.parameters()), stack, lambda c: model(pixel_values=x, labels=y, ep_contrast=c))
    assert_match(cos, rel)


def test_bounds_fail_for_one_sided_nudging_and_unsettled_phases():
    """Negative controls: at the same β, one-sided nudging (an O(β) bias) and gradient-descent settling stopped
    after 20 steps both fail the bounds the tests above pass."""
    stack, params = _deep_tanh_stack()
    for kwargs in (dict(nudging="positive"), dict(config=SettleConfig(steps=20, mode="gradient", lr=0.2))):
        cos, rel = compare(params, stack, lambda c: c(stack), **kwargs)
        print(f"{kwargs}: max relative error {max(rel):.3g}")
        with pytest.raises(AssertionError):
            assert_match(cos, rel)


def _deep_tanh_model():
    torch.manual_seed(0)
    model = EPMLPForImageClassification(
        EPMLPConfig(input_size=50, hidden_sizes=[64, 48, 32], activation="tanh", num_labels=7)
    ).double()
    return model, {"pixel_values": torch.rand(12, 50, dtype=torch.float64), "labels": torch.randint(0, 7, (12,))}


def _step_grad(model, batch, **ep) -> torch.Tensor:
    from mep_hf import ep_backward

    model.zero_grad(set_to_none=True)
    ep_backward(model, batch, **ep)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_low_memory_step_at_one_sweep_is_the_beta_to_zero_limit():
    """ep_memory="low" fuses the last sweep with the contrast (``SweepContrast``): with one sweep the contrast is
    taken at the free state, where every phase's errors are β_k times one unit sweep, so the update is EP's β → 0
    limit at any β and nudging: backprop's gradient to float64 rounding, and nothing to diverge (its energy is the
    linearized phase's minimum, below the start). Negative control: the placed contrast
    (``ep_memory="fast"``) at the same β = 0.5 is off by O(β)."""
    model, batch = _deep_tanh_model()
    bp = torch.cat([g.flatten() for g in torch.autograd.grad(model(**batch).loss, list(model.parameters()))])
    for beta, nudging in ((None, None), (1e-4, "centered"), (0.5, "positive"), (2.0, "random_sign")):
        rel = _rel(_step_grad(model, batch, ep_memory="low", ep_beta=beta, ep_nudging=nudging), bp)
        print(f"low, β={beta}, {nudging}: {rel:.2e}")
        assert rel <= 1e-12, (beta, nudging, rel)
    placed = _rel(_step_grad(model, batch, ep_memory="fast", ep_beta=0.5, ep_nudging="positive"), bp)
    print(f"fast, β=0.5, positive: {placed:.2e}")
    assert placed >= 1e-2


def test_low_memory_fused_contrast_at_a_settled_phase_is_the_placed_one():
    """With several sweeps the fused contrast is taken at the states the last sweep linearized (the previous
    iterate of settling) instead of those its errors place: the same states once the phase has settled. 40 sweeps:
    fused = the placed contrast of the same low-memory phases to float64's settling floor; the control, after 2
    sweeps (not settled), differs from it."""
    model, batch = _deep_tanh_model()
    params = list(model.parameters())

    def placed(steps):
        stack = model.ep_stack(**batch)
        phases = nudged_phases(stack, free_phase(stack, "low"), 0.05, "centered", SettleConfig(steps=steps, memory="low"))
        return torch.cat([g.flatten() for g in torch.autograd.grad(model(**batch, ep_contrast=Contrast(phases)), params)])

    gaps = {steps: _rel(_step_grad(model, batch, ep_memory="low", ep_beta=0.05, ep_nudging="centered",
                                   ep_settle_steps=steps), placed(steps)) for steps in (2, 40)}
    print({k: f"{v:.2e}" for k, v in gaps.items()})
    assert gaps[40] <= 1e-9, gaps
    assert gaps[2] >= 1e3 * gaps[40], gaps
