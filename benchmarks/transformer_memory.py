"""Activation memory and step time of EP (both memory modes) against backprop, with and without activation
checkpointing, on transformer stacks: same model, same batch, one process per stack.

    python benchmarks/transformer_memory.py                       # all stacks, docs/transformer_memory.*
    python benchmarks/transformer_memory.py --stacks gpt2_small_blocks --repeats 5
    python benchmarks/transformer_memory.py --use_cpu false --output_dir docs/gpu   # on a CUDA GPU

Methods: ``backprop`` (``Trainer``), ``backprop_checkpointed`` (``Trainer`` with activation checkpointing),
``ep_fast`` and ``ep_low`` (``EPTrainer`` with ``ep_memory="fast"`` / ``"low"``), otherwise at the library's defaults
(scale-free β, one sweep, positive nudging unless ``--nudging`` says otherwise; the audit off, its cost is
``benchmarks/defaults.py``'s).
Activation memory is the peak of live tensor bytes during one ``training_step`` (torch's allocation records,
``torch.profiler`` with ``profile_memory=True``) minus the gradients' bytes: what the step holds beyond the model
and its gradients. Step time is the median of ``--repeats`` ``training_step`` calls, the methods interleaved.
FLOPs per step (:class:`CountFlops`) measure the work each method does, independent of the machine's load.
Writes ``transformer_memory.json`` (per stack the four ratios the issue asks for), ``transformer_memory_raw.json``
(every number), ``transformer_memory_tables.md`` and ``transformer_memory.png`` into ``--output_dir``
(``docs/transformer_memory.md`` reads these tables).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count
from transformers import HfArgumentParser, Trainer, TrainingArguments

from mep_hf import EPTrainer, EPTrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import tensor_peak  # noqa: E402  (the allocation-record peak, shared with the MLP memory benchmark)

# The trainers never save; Trainer still creates its output_dir. Removed when the process exits.
SCRATCH = tempfile.TemporaryDirectory(prefix="mep_tm_")

METHODS = ("backprop", "backprop_checkpointed", "ep_fast", "ep_low")
# transformers 5.24 renamed gradient checkpointing to activation checkpointing (the old names warn).
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")


class CountFlops(TorchDispatchMode):
    """FLOPs of the matrix products and attention kernels a region runs: the work it does, whatever the load.

    torch's own formulas (``torch.utils.flop_counter``), plus CPU flash attention, which torch's table lacks
    (grouped-query key/value heads counted per query head, as the kernel computes them). ``FlopCounterMode`` itself
    cannot watch an EP step: its module hooks break ``torch.autograd.grad`` on leaves.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        elif packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
            self.total += sdpa_flop_count(*_per_query_head(*args[:3]))
        elif packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
            self.total += sdpa_backward_flop_count(args[0].shape, *_per_query_head(*args[1:4]))
        return out


def _per_query_head(query, key, value):
    heads = query.shape[1]
    return query.shape, (*key.shape[:1], heads, *key.shape[2:]), (*value.shape[:1], heads, *value.shape[2:])


@dataclass
class Arguments:
    stacks: list[str] = field(default_factory=lambda: ["char_transformer", "gpt2_small_blocks", "llama"])
    repeats: int = field(default=5, metadata={"help": "Timed steps per method (median reported)."})
    warmup: int = 1
    threads: int = field(default=2, metadata={"help": "torch intra-op threads."})
    nudging: str | None = field(default=None, metadata={"help": "EP's ep_nudging (default: the library's)."})
    use_cpu: bool = field(default=True, metadata={"help": "False: on the CUDA device, activation memory from "
                                                  "torch.cuda's peak counters, step times synchronized."})
    output_dir: str = "docs"


def char_transformer():
    from mep_hf.models import EPCharTransformerConfig, EPCharTransformerForCausalLM

    config = EPCharTransformerConfig(vocab_size=96, max_position_embeddings=256, hidden_size=256,
                                     num_hidden_layers=4, num_attention_heads=8)
    return EPCharTransformerForCausalLM(config), 96, (8, 256)


def gpt2_small_blocks():
    """GPT-2 small's blocks (width 768, 12 heads, sequence 256, batch 4); 6 of its 12 layers and a 512-token
    vocabulary on CPU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=512, n_positions=256, n_embd=768, n_layer=6, n_head=12,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config), 512, (4, 256)


def llama():
    """A Llama-style decoder (RMSNorm, rotary, SwiGLU, grouped-query attention), width 512, 4 layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(config), 512, (4, 256)


STACKS: dict[str, Callable] = {"char_transformer": char_transformer, "gpt2_small_blocks": gpt2_small_blocks, "llama": llama}


def make_trainer(method: str, state: dict, build: Callable, use_cpu: bool = True, nudging: str | None = None):
    model = build()[0]
    model.load_state_dict(state)
    common = dict(output_dir=SCRATCH.name, report_to="none", use_cpu=use_cpu,
                  learning_rate=1e-4, lr_scheduler_type="constant")
    if method.startswith("ep"):
        args = EPTrainingArguments(**common, ep_nudging=nudging, ep_audit_steps=0,
                                   ep_memory=method.split("_")[1])
        trainer = EPTrainer(model=model, args=args)
    else:
        args = TrainingArguments(**common, **{CHECKPOINTING: method == "backprop_checkpointed"})
        trainer = Trainer(model=model, args=args)
        if getattr(args, CHECKPOINTING):  # what Trainer.train() does before its loop
            enable = getattr(trainer.model, f"{CHECKPOINTING}_enable")
            enable(**{f"{CHECKPOINTING}_kwargs": getattr(args, f"{CHECKPOINTING}_kwargs")})
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); read by training_step
    trainer.create_optimizer()
    return trainer


def step(trainer, batch) -> None:
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def step_bytes(trainer, batch, use_cpu: bool) -> int:
    """Peak bytes one ``training_step`` allocates above what was live before it: from the CPU profiler's allocation
    records, or from torch.cuda's peak counter."""
    if use_cpu:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.training_step(trainer.model, dict(batch))
        return tensor_peak(prof)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    trainer.training_step(trainer.model, dict(batch))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure_stack(name: str, args: Arguments) -> dict:
    torch.manual_seed(0)
    model, vocab, (batch_size, length) = STACKS[name]()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, vocab, (batch_size, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone()}
    trainers = {m: make_trainer(m, state, STACKS[name], args.use_cpu, args.nudging) for m in METHODS}
    sync = (lambda: None) if args.use_cpu else torch.cuda.synchronize
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    row = {}
    for method, trainer in trainers.items():
        step(trainer, batch)  # warm-up: one-off allocations are not counted
        row[method] = {"activation_mib": (step_bytes(trainer, batch, args.use_cpu) - grad_bytes) / 2**20}
        trainer.optimizer.zero_grad(set_to_none=True)
        with CountFlops() as flops:
            trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.zero_grad(set_to_none=True)
        row[method]["gflops"] = flops.total / 1e9
    times = {m: [] for m in METHODS}
    for i in range(args.warmup + args.repeats):
        for method, trainer in trainers.items():
            sync()
            start = time.perf_counter()
            step(trainer, batch)
            sync()
            if i >= args.warmup:
                times[method].append(time.perf_counter() - start)
    for method in METHODS:
        row[method]["step_ms"] = 1e3 * statistics.median(times[method])
    act = {m: row[m]["activation_mib"] for m in METHODS}
    ms = {m: row[m]["step_ms"] for m in METHODS}
    row["summary"] = {
        "activation_ratio_vs_backprop": act["ep_low"] / act["backprop"],
        "activation_ratio_vs_checkpointing": act["ep_low"] / act["backprop_checkpointed"],
        "time_ratio_vs_checkpointing": ms["ep_low"] / ms["backprop_checkpointed"],
        "fast_time_ratio_vs_backprop": ms["ep_fast"] / ms["backprop"],
    }
    gflops = {m: row[m]["gflops"] for m in METHODS}
    row["work"] = {
        "low_flop_ratio_vs_checkpointing": gflops["ep_low"] / gflops["backprop_checkpointed"],
        "fast_flop_ratio_vs_backprop": gflops["ep_fast"] / gflops["backprop"],
    }
    row["shape"] = {"batch": batch_size, "sequence": length, "parameters": sum(p.numel() for p in model.parameters())}
    return row


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "transformer_memory.json").write_text(json.dumps({k: v["summary"] for k, v in results.items()}, indent=2))
    (out / "transformer_memory_raw.json").write_text(json.dumps(results, indent=2))
    lines = ["| stack | method | activation memory (MiB) | step (ms) | GFLOP per step |", "|---|---|---|---|---|"]
    for name, row in results.items():
        for method in METHODS:
            m = row[method]
            lines.append(f"| {name} | {method} | {m['activation_mib']:.1f} | {m['step_ms']:.0f} | {m['gflops']:.1f} |")
    lines += ["", "| stack | EP low / backprop memory | EP low / checkpointed memory | EP low / checkpointed time | "
              "EP fast / backprop time |", "|---|---|---|---|---|"]
    for name, row in results.items():
        s = row["summary"]
        lines.append(f"| {name} | {s['activation_ratio_vs_backprop']:.2f} | {s['activation_ratio_vs_checkpointing']:.2f}"
                     f" | {s['time_ratio_vs_checkpointing']:.2f} | {s['fast_time_ratio_vs_backprop']:.2f} |")
    lines += ["", "| stack | EP low / checkpointed FLOPs | EP fast / backprop FLOPs |", "|---|---|---|"]
    for name, row in results.items():
        w = row["work"]
        lines.append(f"| {name} | {w['low_flop_ratio_vs_checkpointing']:.2f} | {w['fast_flop_ratio_vs_backprop']:.2f} |")
    (out / "transformer_memory_tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.2
    for i, method in enumerate(METHODS):
        xs = [j + i * width for j in range(len(results))]
        axes[0].bar(xs, [r[method]["activation_mib"] for r in results.values()], width, label=method)
        axes[1].bar(xs, [r[method]["step_ms"] for r in results.values()], width, label=method)
    for ax, label in zip(axes, ("activation memory per step (MiB)", "step time (ms)")):
        ax.set_xticks([j + 1.5 * width for j in range(len(results))], list(results), fontsize=8)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "transformer_memory.png", dpi=120)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.stacks:
        results[name] = measure_stack(name, args)
        print(json.dumps({name: results[name]}), flush=True)
    write(results, Path(args.output_dir))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
