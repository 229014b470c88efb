"""An EP step holds about what a backprop step holds, at any depth (``benchmarks/memory.py``'s exact tensor peaks).

The contrast frees each layer before the next, so EP's peak is backprop's plus a few activations of one layer,
whatever the depth. A regression that keeps something per layer (a graph over the whole contrast, the phases'
errors, the free pass) makes the overhead grow with depth and fails here. These are allocation records, not
timings: the numbers are exact and repeatable.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
WIDTH, BATCH = 64, 32
ACTIVATION_MIB = BATCH * WIDTH * 4 / 2**20


def peak_tensors(method: str, depth: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1])}
    cmd = [sys.executable, str(BENCH), "--width", str(WIDTH), "--batch_size", str(BATCH), "--repeats", "1"]
    out = subprocess.run([*cmd, "--measure", f"{method}:{depth}"], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["tensors"]


def test_ep_memory_overhead_is_a_few_activations_whatever_the_depth():
    overhead = {depth: peak_tensors("ep", depth) - peak_tensors("backprop", depth) for depth in (4, 32)}
    assert all(o <= 4 * ACTIVATION_MIB + 0.01 for o in overhead.values()), (overhead, ACTIVATION_MIB)
    assert abs(overhead[32] - overhead[4]) <= 0.01, overhead  # constant: nothing is kept per layer


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _char_lm_activation_mib(bench, method: str, layers: int, nudging: str = "positive") -> float:
    """Activation memory of one training step of a small char transformer (allocation records, in process)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mep_hf.models import EPCharTransformerConfig, EPCharTransformerForCausalLM

    def build():
        torch.manual_seed(0)
        config = EPCharTransformerConfig(vocab_size=32, max_position_embeddings=64, hidden_size=64,
                                         num_hidden_layers=layers, num_attention_heads=4)
        return EPCharTransformerForCausalLM(config), 32, (4, 64)

    model = build()[0]
    trainer = bench.make_trainer(method, model.state_dict(), build, nudging=nudging)
    ids = torch.randint(0, 32, (4, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    bench.step(trainer, batch)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.training_step(trainer.model, dict(batch))
    grads = sum(p.numel() * 4 for p in model.parameters())
    return (bench.tensor_peak(prof) - grads) / 2**20


def test_low_memory_mode_keeps_states_not_graphs():
    """ep_memory="low" keeps one state (and one error) per block: going from 2 to 8 transformer blocks adds a few
    residual-stream tensors per block, where backprop and fast EP keep every block's graph (about 15 of them)."""
    bench = _load_benchmark("transformer_memory")
    stream_mib = 4 * 64 * 64 * 4 / 2**20  # one (batch, tokens, width) float32 tensor
    growth = {m: (_char_lm_activation_mib(bench, m, 8) - _char_lm_activation_mib(bench, m, 2)) / 6 / stream_mib
              for m in ("backprop", "backprop_checkpointed", "ep_fast", "ep_low")}
    print({m: f"{g:.1f} residual streams per block" for m, g in growth.items()})
    assert growth["ep_low"] <= 3.0, growth
    assert growth["backprop"] >= 4 * growth["ep_low"] and growth["ep_fast"] >= 4 * growth["ep_low"], growth


def test_flop_count_covers_matmuls_and_cpu_flash_attention():
    """The transformer benchmark's work measure: 2·m·n·k per matrix product, and CPU flash attention (which torch's
    own table lacks) at 4·b·h·s²·d forward and 2.5 times that backward (torch's formula: the recomputed scores and
    four gradient products), with grouped key/value heads counted per query head."""
    import torch
    import torch.nn.functional as F

    bench = _load_benchmark("transformer_memory")
    x, w = torch.rand(8, 16, requires_grad=True), torch.rand(32, 16)
    with bench.CountFlops() as flops:
        F.linear(x, w).sum().backward()
    assert flops.total == 2 * 8 * 16 * 32 + 2 * 8 * 32 * 16  # forward, and the input gradient (w needs none)
    b, h, kv, s, d = 2, 4, 2, 16, 8
    q = torch.rand(b, h, s, d, requires_grad=True)
    k, v = torch.rand(b, kv, s, d), torch.rand(b, kv, s, d)
    with bench.CountFlops() as flops:
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1))
    assert flops.total == 4 * b * h * s * s * d
    with bench.CountFlops() as flops:
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        out.sum().backward()
    assert flops.total == (1 + 2.5) * 4 * b * h * s * s * d


def test_fast_mode_graphs_keep_no_parameter_activations(monkeypatch):
    """ep_memory="fast" keeps the free pass's graphs for the sweep's input VJPs only (each module runs with its own
    parameters out of autograd): at 8 transformer blocks EP holds at most backprop's activation memory (measured
    0.96×). Negative control: with parameters left in those graphs (the freeze turned off) it is 1.19×."""
    import mep_hf.energies.inner_states as inner_states

    bench = _load_benchmark("transformer_memory")
    ratio = _char_lm_activation_mib(bench, "ep_fast", 8) / _char_lm_activation_mib(bench, "backprop", 8)
    assert ratio <= 1.0, ratio
    unfrozen = inner_states.ModuleCalls.__init__
    monkeypatch.setattr(inner_states.ModuleCalls, "__init__",
                        lambda self, on_output=None, freeze=False: unfrozen(self, on_output, False))
    ratio = _char_lm_activation_mib(bench, "ep_fast", 8) / _char_lm_activation_mib(bench, "backprop", 8)
    assert ratio >= 1.1, ratio


def test_low_memory_step_holds_what_checkpointed_backprop_holds(monkeypatch):
    """ep_memory="low" runs the free pass under activation checkpointing and fuses the last sweep with the
    contrast (``SweepContrast``): at 4 blocks it holds checkpointed backprop's activation memory (measured 1.005×)
    and centered nudging costs what positive does (its phases share the one sweep). Negative control: the contrast
    placed after the sweep, as before the fusion (measured 1.11×; centered 1.34× positive)."""
    import mep_hf.energies.layered as layered

    bench = _load_benchmark("transformer_memory")
    checkpointed = _char_lm_activation_mib(bench, "backprop_checkpointed", 4)
    positive, centered = (_char_lm_activation_mib(bench, "ep_low", 4, n) for n in ("positive", "centered"))
    print(f"low / checkpointed {positive / checkpointed:.3f}, centered / positive {centered / positive:.3f}")
    assert positive <= 1.02 * checkpointed and centered <= 1.01 * positive, (checkpointed, positive, centered)
    monkeypatch.setattr(layered, "_fuses_last_sweep", lambda config: False)
    unfused = _char_lm_activation_mib(bench, "ep_low", 4)
    print(f"unfused: low / checkpointed {unfused / checkpointed:.3f}")
    assert unfused >= 1.08 * checkpointed, (checkpointed, unfused)
