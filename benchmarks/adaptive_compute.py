"""Adaptive compute in classic EP: do hard examples need more settling? (docs/research.md, question 2)

The Hopfield P-MLP of the model zoo settles its free phase from ``s = 0`` by fixed-point iteration; inference runs a
fixed number of steps (its config's ``free_steps``). Here each test example settles on its own: its relative
residual ``‖s_{t+1} − s_t‖ / ‖s_{t+1}‖`` is tracked per example, and the example *exits* at the first step where it
falls below a tolerance, predicting from the state it has then. Measured on the 10,000 MNIST test images:

* per example, the steps to reach the tolerance against its margin (top-1 minus top-2 output at the settled state)
  and its correctness (Spearman correlation; mean steps of right and wrong predictions);
* an early-exit curve: accuracy against mean steps spent, per tolerance, beside the fixed-step baseline (every
  example stopped after ``t`` steps).

    python benchmarks/adaptive_compute.py            # writes docs/research.json's adaptive_compute
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from transformers import AutoModelForImageClassification  # noqa: E402

import mep_hf  # noqa: E402, F401  (registers the EP classes)
from mep_hf.data import load_mnist  # noqa: E402
from mep_hf.energies.hopfield import _first_block, dynamics_step, initial_states  # noqa: E402
from research_record import record  # noqa: E402

TOLERANCES = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)


def rank(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


@torch.no_grad()
def settle_per_example(model, pixels: torch.Tensor, steps: int):
    """Per step ``t = 1..steps``: each example's residual and prediction."""
    stack = model._stack(pixels, None)
    first = _first_block(stack)
    states = initial_states(stack, first)
    residuals, predictions = [], []
    for _ in range(steps):
        new = dynamics_step(stack, first, states)
        change = sum((a - b).flatten(1).pow(2).sum(1) for a, b in zip(new, states))
        size = sum(a.flatten(1).pow(2).sum(1) for a in new)
        residuals.append((change / size.clamp_min(1e-30)).sqrt())
        predictions.append(model.ep_output(new[-1]).logits)
        states = new
    return torch.stack(residuals), torch.stack(predictions)  # (steps, batch), (steps, batch, classes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model_zoo" / "mnist_hopfield_pmlp"))
    parser.add_argument("--steps", type=int, default=100, help="settling steps tracked (the model's own: 30)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    test = load_mnist()["test"].with_format("torch")
    residuals, logits = [], []
    for i in range(0, len(test), 1000):
        rows = test[i: i + 1000]
        r, p = settle_per_example(model, model._pixels(rows["pixel_values"]), args.steps)
        residuals.append(r)
        logits.append(p)
    residuals, logits = torch.cat(residuals, 1), torch.cat(logits, 1)
    labels = test["labels"][:]
    correct = logits.argmax(-1) == labels  # (steps, examples)
    top2 = logits[-1].topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    fixed = [{"steps": t + 1, "accuracy": float(correct[t].float().mean())} for t in range(args.steps)]
    adaptive = []
    for tol in TOLERANCES:
        below = residuals < tol
        reached = below.any(0)
        exit_step = torch.where(reached, below.float().argmax(0), torch.full_like(labels, args.steps - 1))
        chosen = correct[exit_step, torch.arange(len(labels))]
        steps = (exit_step + 1).double()
        adaptive.append({
            "tolerance": tol, "mean_steps": float(steps.mean()), "max_steps": int(steps.max()),
            "reached": float(reached.float().mean()), "accuracy": float(chosen.float().mean()),
            "spearman_steps_vs_margin": spearman(steps, margin.double()),
            "mean_steps_right": float(steps[chosen].mean()), "mean_steps_wrong": float(steps[~chosen].mean()),
        })
    result = {"model": Path(args.model).name, "examples": len(labels), "model_free_steps": model.config.free_steps,
              "fixed": fixed, "adaptive": adaptive,
              "command": "python benchmarks/adaptive_compute.py"}
    record("adaptive_compute", result)
    print("| tolerance | mean steps | max | accuracy | fixed-step accuracy at that mean | Spearman(steps, margin) | "
          "steps right / wrong |\n|---|---|---|---|---|---|---|")
    for a in adaptive:
        at = fixed[min(args.steps, max(1, round(a["mean_steps"]))) - 1]["accuracy"]
        print(f"| {a['tolerance']:g} | {a['mean_steps']:.1f} | {a['max_steps']} | {a['accuracy']:.4f} | {at:.4f} | "
              f"{a['spearman_steps_vs_margin']:.3f} | {a['mean_steps_right']:.1f} / {a['mean_steps_wrong']:.1f} |")
    print("fixed steps:", ", ".join(f"{f['steps']}: {f['accuracy']:.4f}" for f in fixed if f["steps"] in
                                    (1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 100)))


if __name__ == "__main__":
    main()
