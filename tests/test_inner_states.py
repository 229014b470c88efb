"""Inner states (``ep_memory="fast"``): which modules get states, which fold into a normalization, when a block
keeps block states, and what it saves: the contrast runs each module alone, so an EP step does about 4/3 of
backprop's matrix-product work on a decoder instead of 5/3 (FLOPs counted op by op, exact and repeatable)."""

import pytest
import torch
from torch import nn

from mep_hf.block_stack import BlockStack
from mep_hf.energies import layered as eq
from mep_hf.adapters import prepare_ep_model
from mep_hf.adapters.check import check_against_backprop
from mep_hf.energies.inner_states import FreeRun
from tests.adapter_models import tiny_batch, tiny_model
from tests.test_gradient_equivalence import _generic_stack_grads, assert_match


def _layer_folds(model_type: str) -> dict[str, str | None]:
    """For the first decoder layer: each parameterized module and the module whose state it folds into."""
    model = prepare_ep_model(tiny_model(model_type, "causal-lm").double()).eval()
    stack = model.ep_stack(**tiny_batch(model_type, "causal-lm", model))
    layer = eq.free_phase(stack, "fast").blocks[1]
    assert layer.usable
    names = {m: n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    return {names[m]: names[layer.modules[layer.free_run.fold_into[k]]] if k in layer.free_run.fold_into else None
            for k, m in enumerate(layer.modules)}


def test_pre_norm_layers_give_every_module_a_state():
    assert set(_layer_folds("llama").values()) == {None}


def test_modules_under_a_normalization_fold_into_it():
    """Post-norms (OLMo-2) and per-head q/k norms: the modules below a normalization, down to the nearest
    normalization output or the block's input, fold into its state."""
    assert _layer_folds("olmo2") == {
        "q_proj": "q_norm", "q_norm": None, "k_proj": "k_norm", "k_norm": None,
        "v_proj": "post_attention_layernorm", "o_proj": "post_attention_layernorm", "post_attention_layernorm": None,
        "gate_proj": "post_feedforward_layernorm", "up_proj": "post_feedforward_layernorm",
        "down_proj": "post_feedforward_layernorm", "post_feedforward_layernorm": None,
    }


def test_without_folding_post_norm_states_leave_the_linear_regime(monkeypatch):
    """Negative control for the fold: states right under OLMo-2's post-norms are displaced relative to their own
    small scale, and EP's gradient misses backprop's by far more than the bound (float64, centered β=1e-5)."""
    model = prepare_ep_model(tiny_model("olmo2", "causal-lm").double()).eval()
    batch = tiny_batch("olmo2", "causal-lm", model)
    assert check_against_backprop(model, batch, beta=1e-5, sweeps=3) == []
    monkeypatch.setattr("mep_hf.energies.inner_states.is_normalization", lambda module: False)
    assert len(check_against_backprop(model, batch, beta=1e-5, sweeps=3)) > 5


class _Shared(nn.Module):
    """Uses its linear layer's weight outside the layer's forward too."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, s):
        return self.out(torch.tanh(self.lin(s)) + s @ self.lin.weight.T)


class _Nested(nn.Module):
    """A module with a parameter of its own around a child with parameters."""

    def __init__(self):
        super().__init__()
        self.scale, self.lin, self.out = nn.Parameter(torch.ones(6)), nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, s):
        return self.out(torch.tanh(self.lin(s) * self.scale))


class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, s):
        h = self.lin(s)
        return self.out(torch.tanh(h.mul_(2)))


class _Nest(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Nested()

    def forward(self, s):
        return self.inner(s)


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, s):
        return self.out(torch.tanh(self.lin(s)))


@pytest.mark.parametrize("block, inner_states", [(_Plain, True), (_Shared, False), (_Nest, False), (_InPlace, False)],
                         ids=["plain", "weight-used-outside-its-module", "nested", "in-place-on-an-output"])
def test_blocks_breaking_the_assumption_keep_block_states_and_exact_gradients(block, inner_states):
    """A parameter used outside its module's forward, modules with parameters nested in one another, or a module
    output modified in place: the block keeps block states. Either way EP's gradient is backprop's (float64)."""
    torch.manual_seed(0)
    blocks = nn.ModuleList([nn.Linear(6, 6), block(), nn.Linear(6, 3)]).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    stack = BlockStack(x, list(blocks), lambda s: nn.functional.cross_entropy(s, y))
    phases = eq.nudged_phases(stack, eq.free_phase(stack, "fast"), 1e-4, "centered", eq.SettleConfig(steps=2))
    assert (phases[0].inner[1] is not None) == inner_states
    assert_match(*_generic_stack_grads(blocks, x, lambda s: nn.functional.cross_entropy(s, y)))


def _step_flops(model, batch, memory: str | None) -> float:
    """FLOPs of one EP step (positive nudging, one sweep) or, with ``memory=None``, of a backprop step."""
    from benchmarks.transformer_memory import CountFlops

    params = [p for p in model.parameters() if p.requires_grad]
    with CountFlops() as flops:
        if memory is None:
            torch.autograd.grad(model(**batch).loss, params)
        else:
            stack = model.ep_stack(**batch)
            free = eq.free_phase(stack, memory)
            phases = eq.nudged_phases(stack, free, 0.01, "positive", eq.SettleConfig(steps=1, memory=memory))
            torch.autograd.grad(model(**batch, ep_contrast=eq.Contrast(phases, first_block=free.blocks[0])), params)
    return flops.total


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = prepare_ep_model(LlamaForCausalLM(config))
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "labels": ids}


def test_inner_states_cut_a_decoder_step_to_four_thirds_of_backprops_work(monkeypatch):
    """Fast mode: free pass F, sweep F (input products), contrast F + F (forward and each module's own parameter
    product) against backprop's 3F: 4/3 plus the attention and head details. Without inner states (the negative
    control: every block keeps block states) the contrast is a full backward of each layer: 5/3."""
    model, batch = _llama()
    backprop = _step_flops(model, batch, None)
    fast = _step_flops(model, batch, "fast") / backprop
    monkeypatch.setattr(FreeRun, "finish", lambda self, *args: False)  # no block may have inner states
    block_states = _step_flops(model, batch, "fast") / backprop
    assert fast <= 1.36, fast
    assert block_states >= 1.6, block_states


class _Raises(nn.Module):
    """Raises inside its own forward, after its parameter was taken out of autograd for the call."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, s):
        assert not self.weight.requires_grad
        raise ValueError("bad block")


def test_a_block_that_raises_leaves_every_parameter_trainable():
    """The free pass runs modules with their parameters out of autograd; an exception inside a block must give them
    back (the context restores what the module's own exit hook did not)."""
    block = _Raises()
    with pytest.raises(ValueError, match="bad block"):
        eq.SweepOnlyBlock(block, torch.randn(2, 3), None, input_grad=True)
    assert all(p.requires_grad for p in block.parameters())


def test_a_graph_for_input_vjps_only_refuses_parameter_gradients():
    """Without its parameters' activations such a graph would give zero gradients: it refuses instead."""
    lin = eq.SweepOnlyBlock(nn.Linear(3, 3), torch.randn(2, 3), None, input_grad=True)
    assert lin.vjp(torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(RuntimeError, match="input VJPs only"):
        lin.parameter_grads(torch.ones(2, 3), 1.0)


class _FoldLeaks(nn.Module):
    """``v`` folds into the post-norm's state (``o(v)`` is all the norm reads), but ``v`` also feeds ``side``, a
    state of its own: the norm's contrast would miss ``v``'s share through ``side``."""

    def __init__(self):
        super().__init__()
        self.v, self.o, self.norm = nn.Linear(6, 6), nn.Linear(6, 6), nn.LayerNorm(6)
        self.side, self.post = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, s):
        v = self.v(s)
        return self.post(s + self.norm(self.o(v))) + self.side(v)


def test_a_folded_module_that_also_feeds_another_state_keeps_block_states(monkeypatch):
    """Negative control: accepting the block (the check turned off) gives a gradient that fails the bound."""
    torch.manual_seed(0)
    blocks = nn.ModuleList([nn.Linear(6, 6), _FoldLeaks(), nn.Linear(6, 3)]).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    loss = lambda s: nn.functional.cross_entropy(s, y)  # noqa: E731
    free = eq.free_phase(BlockStack(x, list(blocks), loss), "fast")
    assert free.blocks[1].free_run.fold_into == {0: 2, 1: 2} and not free.blocks[1].usable
    assert_match(*_generic_stack_grads(blocks, x, loss))
    monkeypatch.setattr(FreeRun, "_only_feeds", lambda self, *args: True)
    with pytest.raises(AssertionError):
        assert_match(*_generic_stack_grads(blocks, x, loss))
