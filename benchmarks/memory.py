"""Peak memory of one EP training step and one backprop step against depth (MLPs of 8 to 1024 blocks).

    python benchmarks/memory.py                         # depths 8 64 256 1024, width 256, batch 128
    python benchmarks/memory.py --depths 8 64 --width 128 --ep_nudging centered

Each (method, depth) runs in a fresh subprocess: build the model and batch, run a warm-up step (one-off allocations
such as thread pools are not counted), then measure ``training_step`` of ``Trainer`` / ``EPTrainer`` (forward,
backward, gradients allocated) two ways, above what model and batch already hold:

* **tensors**: the peak of live tensor bytes, from torch's own allocation records (``torch.profiler`` with
  ``profile_memory=True``, summed op by op in time order). Counts tensor bytes, not the allocator's pages.
* **RSS**: the peak resident set of the process (``VmHWM`` after resetting it through ``/proc/self/clear_refs``),
  with glibc set to map every block of 64 KiB or more on its own (``EXACT_MALLOC``), smallest of ``--repeats``
  steps. What the machine sees; small-object heap reuse makes it move by a few hundred KiB.

Writes ``memory.json``, a Markdown table and ``memory.png`` (tensor peaks) to ``--output_dir``.
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

METHODS = ("backprop", "ep")
MEASURES = ("tensors", "rss")

# The trainers never save; Trainer still creates its output_dir. Removed when the process exits.
SCRATCH = tempfile.TemporaryDirectory(prefix="mep_memory_")


@dataclass
class MemoryArguments:
    depths: list[int] = field(default_factory=lambda: [8, 64, 256, 1024], metadata={"help": "Hidden blocks."})
    width: int = 256
    batch_size: int = 128
    output_dir: str = "runs/memory"
    ep_nudging: str | None = None  # None: the library's defaults
    ep_settle_steps: int = 1
    repeats: int = field(default=5, metadata={"help": "Measured steps for the RSS peak; the smallest is reported."})
    measure: str | None = field(default=None, metadata={"help": "Internal: 'ep:DEPTH' or 'backprop:DEPTH'."})


# glibc serves every allocation of 64 KiB or more with its own mmap and returns it on free (a fixed threshold also
# turns off glibc's adaptive one, which otherwise keeps freed tensors in the heap), so the resident set follows
# the live tensors.
EXACT_MALLOC = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def tensor_peak(prof) -> int:
    """Peak of live tensor bytes over a profiled region: each op's own allocations minus frees, in time order."""
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def measure(args: MemoryArguments, method: str, depth: int) -> dict[str, float]:
    """MiB of peak memory one training step adds on top of model and batch (run in a fresh process)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import Trainer, TrainingArguments

    from mep_hf import EPMLPConfig, EPMLPForImageClassification, EPTrainer, EPTrainingArguments

    torch.manual_seed(0)
    model = EPMLPForImageClassification(EPMLPConfig(input_size=784, hidden_sizes=[args.width] * depth, num_labels=10))
    batch = {"pixel_values": torch.rand(args.batch_size, 784), "labels": torch.randint(0, 10, (args.batch_size,))}
    common = dict(output_dir=SCRATCH.name, report_to="none", use_cpu=True)
    if method == "ep":
        ep = dict(ep_nudging=args.ep_nudging, ep_settle_steps=args.ep_settle_steps, ep_audit_steps=0)
        trainer = EPTrainer(model=model, args=EPTrainingArguments(**common, **ep))
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); read by training_step

    trainer.training_step(trainer.model, dict(batch))  # warm-up
    trainer.model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.training_step(trainer.model, dict(batch))
    rss = []
    for _ in range(args.repeats):
        trainer.model.zero_grad(set_to_none=True)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        before = _status_kib("VmRSS")
        trainer.training_step(trainer.model, dict(batch))
        rss.append((_status_kib("VmHWM") - before) / 1024)
    return {"tensors": tensor_peak(prof) / 2**20, "rss": min(rss)}


def plot(results: dict, path: Path, args: MemoryArguments) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, label in (("backprop", "backprop"), ("ep", f"EP ({args.ep_nudging or 'default'} nudging, {args.ep_settle_steps} sweep)")):
        ax.plot(args.depths, [results[str(d)][method]["tensors"] for d in args.depths], marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="depth (hidden blocks)", ylabel="peak step tensor memory (MiB)")
    ax.set_title(f"MLP width {args.width}, batch {args.batch_size}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = HfArgumentParser(MemoryArguments).parse_args_into_dataclasses(args=argv)
    if args.measure:
        method, depth = args.measure.split(":")
        print(json.dumps(measure(args, method, int(depth))))
        return {}
    results = {}
    for depth in args.depths:
        row = {}
        for method in METHODS:
            cmd = [sys.executable, __file__, *argv, "--measure", f"{method}:{depth}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=EXACT_MALLOC).stdout
            row[method] = json.loads(out.strip().splitlines()[-1])
        row["ratio"] = {m: row["ep"][m] / row["backprop"][m] for m in MEASURES}
        results[str(depth)] = row
        print(json.dumps({depth: row}), flush=True)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    lines = [
        "| depth | backprop tensors (MiB) | EP tensors (MiB) | EP / backprop | backprop RSS (MiB) | EP RSS (MiB) | EP / backprop |",
        "|---|---|---|---|---|---|---|",
    ]
    for d, r in results.items():
        cells = [f"{r['backprop'][m]:.2f} | {r['ep'][m]:.2f} | {r['ratio'][m]:.2f}" for m in MEASURES]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    (out_dir / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        plot(results, out_dir / "memory.png", args)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
