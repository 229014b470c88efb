"""Peak memory per training step against model size, and the largest stock Llama each method fits in a budget:
backprop, checkpointed backprop, EP fast, EP low (one process), and backprop, EP fast, EP low under FSDP2 on 2
processes (``mep_hf.shard_for_ep``). Reads as ``docs/sharded_memory.md``.

    python benchmarks/sharded_memory.py                               # docs/sharded_memory.*
    python benchmarks/sharded_memory.py --layers 2 4 --width 512 --output_dir /tmp/sm
    python benchmarks/sharded_memory.py --device cuda --output_dir docs/gpu   # 2+ GPUs for the FSDP2 rows (nccl)

The model: ``LlamaForCausalLM`` from a stock config scaled up (width ``--width``, heads of 64, key/value heads a
quarter of them, SwiGLU of 8/3 the width, vocabulary 32000, untied head), ``--layers`` deep, float32. Each process
steps on the same micro-batch (``--batch`` × ``--sequence`` tokens), so the FSDP2 rows differ from the one-process
rows by the sharding alone. EP runs at the library's defaults (``EPTrainingArguments()``: scale-free β, one sweep,
positive nudging, ``ep_memory`` as named).

**Step peak**: the parameters the process holds (under FSDP2 its shards) plus what one step adds to the process's
resident set at its peak (``VmHWM`` reset through ``/proc/self/clear_refs``, glibc mapping every block of 64 KiB or
more on its own as in ``benchmarks/memory.py``: gradients, activations, FSDP2's gathered layers and gradient
buffers), after a warm-up step, gradients cleared before it. Not torch's allocation records: FSDP2 frees a gathered
layer by resizing its storage, which those records do not show as a free. On CUDA: ``max_memory_allocated``. **Fits**: step peak plus AdamW's two moments
(twice the parameters the process holds), against ``--budget_gib``; the peak is linear in depth at a fixed width, so
the largest depth that fits comes from a least-squares line through the measured depths (its largest residual is
in the JSON). Step time: the measured step (one thread per process; indicative on a shared machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memory import EXACT_MALLOC, _status_kib  # noqa: E402  (how benchmarks/memory.py reads the resident set)

SINGLE = ("backprop", "backprop_checkpointed", "ep_fast", "ep_low")
SHARDED = ("backprop_fsdp2", "ep_fast_fsdp2", "ep_low_fsdp2")
METHODS = SINGLE + SHARDED
GIB = 2**30


@dataclass
class Arguments:
    layers: list[int] = field(default_factory=lambda: [2, 4, 8], metadata={"help": "Depths measured."})
    width: int = 768
    batch: int = 2
    sequence: int = 256
    budget_gib: float = 4.0
    device: str = "cpu"
    sharded: bool = field(default=True, metadata={"help": "Measure the FSDP2 rows (2 processes; on CUDA, 2 GPUs)."})
    output_dir: str = "docs"
    worker: str | None = field(default=None, metadata={"help": "Internal: 'single' or 'fsdp2'."})
    out: str | None = field(default=None, metadata={"help": "Internal: the worker's JSON."})


def build(width: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = width // 64
    config = LlamaConfig(vocab_size=32000, hidden_size=width, intermediate_size=(width * 8 // 3) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         max_position_embeddings=2048, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def step(method: str, model, batch: dict) -> None:
    """One step's gradients by ``method`` (the FSDP2 variants run the same call on the sharded model)."""
    import mep_hf

    if method.startswith("backprop"):
        model(**batch).loss.backward()
    else:
        mep_hf.ep_backward(model, batch, ep_memory="low" if method.startswith("ep_low") else "fast")


def measure(method: str, model, batch: dict, device: str) -> dict:
    held = sum(_local(p).numel() * p.element_size() for p in model.parameters())
    step(method, model, batch)  # warm-up: adapts a stock model for EP, one-off allocations
    model.zero_grad(set_to_none=True)
    if device == "cpu":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        before = _status_kib("VmRSS")
    else:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    step(method, model, batch)
    if device == "cpu":
        peak = (_status_kib("VmHWM") - before) * 1024
    else:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return {"params_held_gib": held / GIB, "step_peak_gib": (held + peak) / GIB,
            "with_adamw_gib": (3 * held + peak) / GIB, "step_s": seconds}


def _local(p):
    return p.to_local() if hasattr(p, "to_local") else p


def batch_for(args: Arguments, device: str) -> dict:
    ids = torch.randint(0, 32000, (args.batch, args.sequence), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(device), "labels": ids.to(device)}


def worker(args: Arguments) -> None:
    torch.set_num_threads(1)
    rows = {}
    if args.worker == "single":
        device = args.device
        for method in SINGLE:  # a fresh model each: EP adapts it in place, checkpointing is a model setting
            model = build(args.width, args.layers[0]).to(device)
            if method == "backprop_checkpointed":
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            rows[method] = measure(method, model, batch_for(args, device), device)
            del model
    else:
        import torch.distributed as dist

        import mep_hf

        dist.init_process_group("gloo" if args.device == "cpu" else "nccl")
        device = args.device if args.device == "cpu" else f"cuda:{dist.get_rank()}"
        if device != "cpu":
            torch.cuda.set_device(device)
        for method in SHARDED:
            model = mep_hf.shard_for_ep(build(args.width, args.layers[0]).to(device))
            rows[method] = measure(method, model, batch_for(args, device), device)
            del model
        dist.barrier()
        if dist.get_rank() != 0:
            dist.destroy_process_group()
            return
        dist.destroy_process_group()
    Path(args.out).write_text(json.dumps(rows))


def run_workers(args: Arguments, layers: int, scratch: Path) -> dict:
    env = {**EXACT_MALLOC, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    common = [__file__, "--layers", str(layers), "--width", str(args.width), "--batch", str(args.batch),
              "--sequence", str(args.sequence), "--device", args.device]
    rows = {}
    kinds = [("single", [sys.executable])]
    if args.sharded:
        kinds.append(("fsdp2", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]))
    for kind, launcher in kinds:
        out = scratch / f"{kind}_{layers}.json"
        subprocess.run([*launcher, *common, "--worker", kind, "--out", str(out)], env=env, check=True)
        rows.update(json.loads(out.read_text()))
    return rows


def largest_fit(layers: list[int], values: list[float], budget: float) -> tuple[int, float]:
    """The largest depth whose least-squares line through ``(layers, values)`` stays within ``budget``; and the
    line's largest residual (GiB)."""
    n, mx, my = len(layers), sum(layers) / len(layers), sum(values) / len(values)
    slope = sum((x - mx) * (y - my) for x, y in zip(layers, values)) / sum((x - mx) ** 2 for x in layers)
    base = my - slope * mx
    residual = max(abs(y - (base + slope * x)) for x, y in zip(layers, values))
    return int((budget - base) // slope) if n > 1 and slope > 0 else 0, residual


def write(args: Arguments, results: dict[int, dict]) -> dict:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    depths = sorted(results)
    methods = [m for m in METHODS if m in results[depths[0]]]
    summary = {}
    for method in methods:
        peaks = [results[d][method]["step_peak_gib"] for d in depths]
        trained = [results[d][method]["with_adamw_gib"] for d in depths]
        fit, residual = largest_fit(depths, trained, args.budget_gib)
        summary[method] = {
            "largest_layers_in_budget": fit, "fit_residual_gib": residual,
            "step_peak_ratio_vs_backprop": {d: results[d][method]["step_peak_gib"] / results[d]["backprop"]["step_peak_gib"]
                                            for d in depths},
            "step_peak_gib": dict(zip(depths, peaks)),
        }
    setup = {"width": args.width, "layers": depths, "batch": args.batch, "sequence": args.sequence,
             "budget_gib": args.budget_gib, "device": args.device,
             "parameters": {d: sum(p.numel() for p in build(args.width, d).parameters()) for d in depths[:1]}}
    (out / "sharded_memory.json").write_text(json.dumps({"setup": setup, "summary": summary, "raw": results}, indent=1))
    lines = [f"| layers | method | params held (GiB) | step peak (GiB) | / backprop | + AdamW (GiB) | step (s) |",
             "|---|---|---|---|---|---|---|"]
    for d in depths:
        for method in methods:
            r = results[d][method]
            lines.append(f"| {d} | {method} | {r['params_held_gib']:.3f} | {r['step_peak_gib']:.3f} | "
                         f"{r['step_peak_gib'] / results[d]['backprop']['step_peak_gib']:.2f} | "
                         f"{r['with_adamw_gib']:.3f} | {r['step_s']:.1f} |")
    lines += ["", f"| method | largest depth in {args.budget_gib:g} GiB (step peak + AdamW) | line's largest residual (GiB) |",
              "|---|---|---|"]
    for method in methods:
        s = summary[method]
        lines.append(f"| {method} | {s['largest_layers_in_budget']} | {s['fit_residual_gib']:.3f} |")
    (out / "sharded_memory_tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, depths, methods, out / "sharded_memory.png")
    return summary


def plot(results: dict, depths: list[int], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method in methods:
        ax.plot(depths, [results[d][method]["step_peak_gib"] for d in depths], "o-" if method in SINGLE else "s--",
                label=method)
    ax.set_xlabel("Llama layers (width fixed)")
    ax.set_ylabel("peak memory per step, per process (GiB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=argv)
    if args.worker:
        worker(args)
        return {}
    with tempfile.TemporaryDirectory(prefix="mep_sharded_") as scratch:
        results = {}
        for layers in args.layers:
            results[layers] = run_workers(args, layers, Path(scratch))
            print(json.dumps({layers: results[layers]}), flush=True)
    return write(args, results)


if __name__ == "__main__":
    main()
