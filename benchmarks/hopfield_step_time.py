"""Step time of classic EP (Hopfield energy) against backprop through the same network unrolled (BPTT).

    python benchmarks/hopfield_step_time.py                         # P-MLP 784-512-10 and P-CNN, MNIST batch 64
    python benchmarks/hopfield_step_time.py --models pmlp --repeats 50

For each model, from the same weights and batch: a plain ``Trainer`` whose ``forward`` settles the free phase for
T_free steps with autograd on, so its backward is BPTT through the unrolled settling, and an ``EPTrainer`` (free
phase of T_free steps, centered nudging, two nudged phases of T_nudged steps, the contrast). Each timed step is
Trainer's own ``training_step`` plus the optimizer step, the methods interleaved; medians of ``--repeats``.
The EP step is split into settling (free phase, nudged phases) and the rest (the contrast, Trainer's loss at the
free state, the optimizer), timed inside the same steps. The last column times the free phase with the state update
``s ← clamp(∂Φ/∂s, 0, 1)`` taken by autograd each step instead of the closed forms: what the closed forms save.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from mep_hf import (
    EPHopfieldConvNetConfig,
    EPHopfieldConvNetForImageClassification,
    EPHopfieldMLPConfig,
    EPHopfieldMLPForImageClassification,
    EPTrainer,
    EPTrainingArguments,
)
from mep_hf.data import load_mnist
from mep_hf.energies import get_energy


@dataclass
class BenchmarkArguments:
    models: list[str] = field(default_factory=lambda: ["pmlp", "pcnn"], metadata={"help": "pmlp and/or pcnn."})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads."})
    batch_size: int = 64
    repeats: int = field(default=20, metadata={"help": "Timed steps per method (median reported)."})
    warmup: int = 3
    pmlp_steps: list[int] = field(default_factory=lambda: [30, 10], metadata={"help": "P-MLP T_free, T_nudged."})
    pcnn_steps: list[int] = field(default_factory=lambda: [20, 6], metadata={"help": "P-CNN T_free, T_nudged."})
    pcnn_channels: list[int] = field(default_factory=lambda: [32, 64])
    ep_beta: float = 0.5
    output_dir: str = "runs/hopfield_step_time"
    seed: int = 0


def build(name: str, bench: BenchmarkArguments):
    if name == "pmlp":
        t_free, t_nudged = bench.pmlp_steps
        config = EPHopfieldMLPConfig(hidden_sizes=[512], num_labels=10, free_steps=t_free, nudged_steps=t_nudged)
        return EPHopfieldMLPForImageClassification(config), "P-MLP 784-512-10 (MSE)"
    t_free, t_nudged = bench.pcnn_steps
    config = EPHopfieldConvNetConfig(channels=bench.pcnn_channels, num_labels=10, free_steps=t_free,
                                     nudged_steps=t_nudged)
    c = bench.pcnn_channels
    return EPHopfieldConvNetForImageClassification(config), f"P-CNN 1-{'-'.join(map(str, c))}-10 (5x5 conv, max-pool, MSE)"


class PhaseTimer:
    """Wraps the Hopfield family's free_phase / nudged_phases to add up their wall time."""

    def __init__(self):
        self.family, self.seconds = get_energy("hopfield"), {"free": 0.0, "nudged": 0.0}
        self._orig = {"free": self.family.free_phase, "nudged": self.family.nudged_phases}
        for key in self._orig:
            setattr(self.family, f"{key}_phase" if key == "free" else "nudged_phases", self._timed(key))

    def _timed(self, key):
        fn = self._orig[key]

        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start

        return run

    def restore(self):
        del self.family.free_phase, self.family.nudged_phases  # the class's methods again


def autograd_free_phase_seconds(model, x: torch.Tensor, steps: int, repeats: int) -> float:
    """Median seconds of a free phase whose update takes ∂Φ/∂s by autograd each step (no closed forms)."""
    blocks, times = list(model.blocks), []
    with torch.no_grad():
        shapes, s = [], x
        for b in blocks:
            s = b(s)
            shapes.append(s.shape)
    for _ in range(repeats):
        start = time.perf_counter()
        states = [torch.zeros(shape) for shape in shapes]
        for _ in range(steps):
            states = [t.requires_grad_(True) for t in states]
            with torch.enable_grad():
                below = [x, *states[:-1]]
                phi = sum((s * b(sb)).sum() for b, sb, s in zip(blocks, below, states))
                grads = torch.autograd.grad(phi, states)
            states = [g.clamp(0, 1) for g in grads]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    (bench,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(bench.threads)
    data = load_mnist()
    batch = data["train"][: bench.batch_size]
    out, results = Path(bench.output_dir), {}
    for name in bench.models:
        set_seed(bench.seed)
        model, label = build(name, bench)
        common = dict(per_device_train_batch_size=bench.batch_size, learning_rate=1e-3, max_steps=100,
                      save_strategy="no", report_to="none", use_cpu=True, seed=bench.seed, disable_tqdm=True)
        trainers = {
            "backprop": Trainer(model=copy.deepcopy(model), train_dataset=data["train"],
                                args=TrainingArguments(output_dir=str(out / name / "bp"), **common)),
            "ep": EPTrainer(model=copy.deepcopy(model), train_dataset=data["train"],
                            args=EPTrainingArguments(output_dir=str(out / name / "ep"), ep_beta=bench.ep_beta,
                                                     ep_nudging="centered", **common)),
        }
        for trainer in trainers.values():
            trainer.create_optimizer_and_scheduler(num_training_steps=100)
            trainer.current_gradient_accumulation_steps = 1
        timer, times, phases = PhaseTimer(), {k: [] for k in trainers}, {"free": [], "nudged": []}
        try:
            for i in range(bench.warmup + bench.repeats):
                for method, trainer in trainers.items():
                    before = dict(timer.seconds)
                    start = time.perf_counter()
                    trainer.training_step(trainer.model, dict(batch))
                    trainer.optimizer.step()
                    trainer.optimizer.zero_grad()
                    elapsed = time.perf_counter() - start
                    if i >= bench.warmup:
                        times[method].append(elapsed)
                        if method == "ep":
                            for key in phases:
                                phases[key].append((timer.seconds[key] - before[key]) / elapsed)
        finally:
            timer.restore()
        x = model._pixels(batch["pixel_values"])
        t_free = model.config.free_steps
        closed = statistics.median(_closed_free_phase(model, x, max(3, bench.repeats // 4)))
        autograd = autograd_free_phase_seconds(model, x, t_free, max(3, bench.repeats // 4))
        ep, bp = statistics.median(times["ep"]), statistics.median(times["backprop"])
        row = {
            "model": label, "T_free": t_free, "T_nudged": model.config.nudged_steps,
            "ep_step_ms": 1e3 * ep, "bptt_step_ms": 1e3 * bp, "ratio": ep / bp,
            "settling_share": statistics.median([f + n for f, n in zip(phases["free"], phases["nudged"])]),
            "free_share": statistics.median(phases["free"]), "nudged_share": statistics.median(phases["nudged"]),
            "free_phase_closed_form_ms": 1e3 * closed, "free_phase_autograd_ms": 1e3 * autograd,
        }
        results[name] = row
        print(json.dumps({name: row}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hopfield_step_time.json").write_text(json.dumps({"args": vars(bench), "results": results}, indent=2))
    print(f"threads={torch.get_num_threads()} batch={bench.batch_size} beta={bench.ep_beta} centered; medians of "
          f"{bench.repeats}")
    print("| model | T_free / T_nudged | EP step (ms) | BPTT step (ms) | EP / BPTT | settling share of the EP step "
          "(free + nudged) | free phase: closed form / autograd (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['model']} | {r['T_free']} / {r['T_nudged']} | {r['ep_step_ms']:.1f} | {r['bptt_step_ms']:.1f} | "
              f"{r['ratio']:.2f} | {100 * r['settling_share']:.0f}% ({100 * r['free_share']:.0f}% + "
              f"{100 * r['nudged_share']:.0f}%) | {r['free_phase_closed_form_ms']:.1f} / "
              f"{r['free_phase_autograd_ms']:.1f} |")
    return results


def _closed_free_phase(model, x, repeats):
    from mep_hf.energies.hopfield import free_phase

    stack, times = model._stack(x, None), []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            free_phase(stack, model.config.free_steps)
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main(sys.argv[1:])
