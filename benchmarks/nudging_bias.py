"""How far EP's gradient is from backprop's at a finite β, in each memory mode, on the tiny stock decoders of the
adapter tests: the two modes' energies differ (inner states or block states), and so do their O(β) biases.

    python benchmarks/nudging_bias.py --beta 1e-3 --nudging centered --sweeps 1

Prints, per model type and mode, the worst per-tensor relative L2 error against backprop (float64).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mep_hf.energies import layered as eq  # noqa: E402
from mep_hf.adapters import prepare_ep_model  # noqa: E402
from mep_hf.adapters.check import backprop_gradients  # noqa: E402
from tests.adapter_models import tiny_batch, tiny_model  # noqa: E402  (the tiny configs every adapter test uses)


def worst_error(model_type: str, memory: str, beta: float, nudging: str, sweeps: int) -> float:
    model = prepare_ep_model(tiny_model(model_type, "causal-lm").double()).eval()
    batch = tiny_batch(model_type, "causal-lm", model)
    params = [p for p in model.parameters() if p.requires_grad]
    reference = backprop_gradients(model, batch)
    stack = model.ep_stack(**batch)
    config = eq.SettleConfig(steps=sweeps, memory=memory)
    phases = eq.nudged_phases(stack, eq.free_phase(stack, memory), beta, nudging, config)
    grads = torch.autograd.grad(model(**batch, ep_contrast=eq.Contrast(phases)), params, allow_unused=True)
    return max(float((a - b).norm() / b.norm()) for a, b in zip(grads, reference) if float(b.norm()) > 1e-9)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["llama", "gpt2", "gemma2", "olmo2", "qwen3"])
    parser.add_argument("--beta", type=float, default=1e-3)
    parser.add_argument("--nudging", default="centered")
    parser.add_argument("--sweeps", type=int, default=1)
    args = parser.parse_args(argv)
    print("| model type | fast (inner states) | low (block states) |\n|---|---|---|")
    for model_type in args.models:
        fast, low = (worst_error(model_type, m, args.beta, args.nudging, args.sweeps) for m in ("fast", "low"))
        print(f"| {model_type} | {fast:.2g} | {low:.2g} |")


if __name__ == "__main__":
    main()
