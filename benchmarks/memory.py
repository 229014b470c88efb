"""Peak memory of one EP training step and one backprop step against depth (MLPs of 8 to 1024 blocks).

    python benchmarks/memory.py                         # depths 8 64 256 1024, width 256, batch 128
    python benchmarks/memory.py --depths 8 64 --width 128

Each (method, depth) runs in a fresh subprocess (with glibc's allocator set to hand large blocks back to the
system at once, see ``EXACT_MALLOC``): build the model and batch, run a warm-up step, read the resident set size,
run one more (``training_step`` of ``Trainer`` / ``EPTrainer``: forward, backward, gradients allocated), read the peak
resident set size; the difference is the step's peak memory. Writes ``memory.json``, a Markdown table and
``memory.png`` to ``--output_dir``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser


@dataclass
class MemoryArguments:
    depths: list[int] = field(default_factory=lambda: [8, 64, 256, 1024], metadata={"help": "Hidden blocks."})
    width: int = 256
    batch_size: int = 128
    output_dir: str = "runs/memory"
    ep_nudging: str = "positive"
    ep_settle_steps: int = 1
    repeats: int = field(default=5, metadata={"help": "Measured steps per process; the smallest peak is reported."})
    measure: str | None = field(default=None, metadata={"help": "Internal: 'ep:DEPTH' or 'backprop:DEPTH'."})


# glibc serves every allocation of 64 KiB or more with its own mmap and returns it on free (a fixed threshold also
# turns off glibc's adaptive one, which otherwise keeps freed tensors in the heap): the resident set then tracks the
# live tensors, and its peak is the step's peak tensor memory rather than an artefact of heap reuse.
EXACT_MALLOC = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(args: MemoryArguments, method: str, depth: int) -> float:
    """MiB of peak memory one training step adds on top of model and batch (run in a fresh process).

    One step runs first, so that one-off allocations (thread pools, kernel workspaces) are not counted. Before each
    measured step the gradients are dropped and the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``);
    the step's peak is read from ``VmHWM``. The smallest of ``repeats`` peaks is reported: heap growth from small
    Python objects can only add to it.
    """
    import torch
    from transformers import Trainer, TrainingArguments

    from mep_hf import EPMLPConfig, EPMLPForImageClassification, EPTrainer, EPTrainingArguments

    torch.manual_seed(0)
    model = EPMLPForImageClassification(EPMLPConfig(input_size=784, hidden_sizes=[args.width] * depth, num_labels=10))
    batch = {"pixel_values": torch.rand(args.batch_size, 784), "labels": torch.randint(0, 10, (args.batch_size,))}
    common = dict(output_dir=tempfile.mkdtemp(prefix="mep_memory_"), report_to="none", use_cpu=True)
    if method == "ep":
        ep = dict(ep_beta=0.01, ep_nudging=args.ep_nudging, ep_settle_steps=args.ep_settle_steps)
        trainer = EPTrainer(model=model, args=EPTrainingArguments(**common, **ep))
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); read by training_step
    trainer.training_step(trainer.model, dict(batch))  # warm-up
    peaks = []
    for _ in range(args.repeats):
        trainer.model.zero_grad(set_to_none=True)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        before = _status_kib("VmRSS")
        trainer.training_step(trainer.model, dict(batch))
        peaks.append((_status_kib("VmHWM") - before) / 1024)
    return min(peaks)


def plot(results: dict, path: Path, args: MemoryArguments) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, label in (("backprop", "backprop"), ("ep", f"EP ({args.ep_nudging}, {args.ep_settle_steps} sweep)")):
        ax.plot(args.depths, [results[str(d)][method] for d in args.depths], marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="depth (hidden blocks)", ylabel="peak step memory (MiB)")
    ax.set_title(f"MLP width {args.width}, batch {args.batch_size}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = HfArgumentParser(MemoryArguments).parse_args_into_dataclasses(args=argv)
    if args.measure:
        method, depth = args.measure.split(":")
        print(json.dumps({"mib": measure(args, method, int(depth))}))
        return {}
    results = {}
    for depth in args.depths:
        row = {}
        for method in ("backprop", "ep"):
            cmd = [sys.executable, __file__, *argv, "--measure", f"{method}:{depth}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=EXACT_MALLOC).stdout
            row[method] = json.loads(out.strip().splitlines()[-1])["mib"]
        row["ratio"] = row["ep"] / row["backprop"]
        results[str(depth)] = row
        print(json.dumps({depth: row}), flush=True)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    lines = ["| depth | backprop (MiB) | EP (MiB) | EP / backprop |", "|---|---|---|---|"]
    lines += [f"| {d} | {r['backprop']:.1f} | {r['ep']:.1f} | {r['ratio']:.2f} |" for d, r in results.items()]
    (out_dir / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        plot(results, out_dir / "memory.png", args)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
