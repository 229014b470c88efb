"""The library's defaults, measured: EP at ``EPTrainingArguments()`` against backprop on the same model, one process.

    python benchmarks/defaults.py                              # every model; docs/defaults.json and tables
    python benchmarks/defaults.py --models llama bert --frontier   # and the settings frontier of each model
    python benchmarks/defaults.py --models llama bert --displacements 1e-2 1e-3 1e-4   # float64 bias per displacement

Per model (``step_time.MODELS``: the EP MLP and conv net on MNIST, the char transformer, stock Llama, Qwen2,
GPT-2, BERT, RoBERTa and ViT of a few million parameters on random batches):

* gradient: cosine and relative error of EP's gradient against backprop's on one batch, measured by the gradient
  audit (``EPTrainer.audit_step``: the same loss, the same dropout masks), in float32 and in float64, at init and
  after ``--train_steps`` steps of training at the defaults;
* step time: ``training_step`` + optimizer step, EP (audit off) and ``Trainer`` interleaved, median of
  ``--repeats``; the audit's cost amortized over ``ep_audit_steps=100``;
* activation memory of one step (peak live tensor bytes beyond the gradients), EP over backprop.

``--frontier`` adds, per model, nudging × β × sweeps × memory mode → step time, activation memory and gradient
error against backprop (float32).
"""

from __future__ import annotations

import copy
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from mep_hf import EPTrainer, EPTrainingArguments
from mep_hf.data import load_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import MNIST_MODELS, MODELS, synthetic_batch  # noqa: E402
from transformer_memory import step_bytes  # noqa: E402

SCRATCH = tempfile.TemporaryDirectory(prefix="mep_defaults_")
# nudging × β (None: the scale-free default) × sweeps × memory mode
FRONTIER = list(itertools.product(("positive", "centered"), (None, 1e-3, 1e-2, 1e-1), (1, 2), ("fast", "low")))


@dataclass
class Arguments:
    models: list[str] = field(default_factory=lambda: list(MODELS), metadata={"help": "Models to measure."})
    batch_size: int = field(default=8, metadata={"help": "Batch of the stock models (sequences of 128 tokens)."})
    char_batch_size: int = field(default=32, metadata={"help": "Batch of the char transformer (its example's)."})
    mnist_batch_size: int = 128
    repeats: int = field(default=15, metadata={"help": "Timed steps per method (median reported)."})
    warmup: int = 3
    train_steps: int = field(default=200, metadata={"help": "Training steps at the defaults before the second check."})
    learning_rate: float = 1e-3
    frontier: bool = field(default=False, metadata={"help": "Also measure the settings frontier of each model."})
    displacements: list[float] = field(default_factory=list, metadata={
        "help": "Only measure the float64 gradient at init at these ep_nudge_displacement values (and at the "
                "previous defaults, a fixed β=1e-3), positive nudging, one sweep; nothing else."})
    threads: int | None = field(default=1, metadata={"help": "torch intra-op threads."})
    output_dir: str = "docs"
    seed: int = 0


def common(bench: Arguments) -> dict:
    return dict(output_dir=SCRATCH.name, report_to="none", use_cpu=True, learning_rate=bench.learning_rate,
                lr_scheduler_type="constant", save_strategy="no", disable_tqdm=True, logging_steps=10**9,
                seed=bench.seed)


def ep_trainer(model, bench: Arguments, data=None, **ep) -> EPTrainer:
    trainer = EPTrainer(model=model, args=EPTrainingArguments(**common(bench), **ep), train_dataset=data)
    return ready(trainer)


def ready(trainer):
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); read by training_step
    trainer.create_optimizer()
    return trainer


def audited(trainer: EPTrainer, batch: dict) -> tuple[float, float]:
    """(cosine, relative error) of EP's gradient against backprop's on ``batch``; the gradient is dropped."""
    _, cosine, rel = trainer.audit_step(trainer.model, dict(batch))
    trainer.optimizer.zero_grad(set_to_none=True)
    return cosine, rel


def float64(model: torch.nn.Module, batch: dict, bench: Arguments, **ep) -> tuple[float, float]:
    """The same check on a float64 copy of the model and batch (``ep``: EP settings other than the defaults)."""
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    return audited(ep_trainer(copy.deepcopy(model).double(), bench, **ep), batch)


def step(trainer, batch) -> None:
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def timed(runs: dict, bench: Arguments) -> dict[str, float]:
    """Median milliseconds of each callable, interleaved so that load on the machine hits all alike."""
    times = {name: [] for name in runs}
    for i in range(bench.warmup + bench.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= bench.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def activation_mib(trainer, batch) -> float:
    grad_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    step(trainer, batch)  # warm-up: one-off allocations are not counted
    mib = (step_bytes(trainer, batch, use_cpu=True) - grad_bytes) / 2**20
    trainer.optimizer.zero_grad(set_to_none=True)
    return mib


def training_rows(name: str, bench: Arguments, mnist) -> tuple[list[dict], dict]:
    """Rows to train on (MNIST, or a pool of 64 random examples cycled), and one batch to measure on."""
    if name in MNIST_MODELS:
        rows = mnist["train"].select(range(bench.mnist_batch_size * bench.train_steps))
        return rows, mnist["train"][: bench.mnist_batch_size]
    pool = synthetic_batch(name, 64, bench.seed)
    rows = [{k: v[i] for k, v in pool.items()} for i in range(64)]
    return rows, synthetic_batch(name, batch_size(name, bench), bench.seed + 1)


def batch_size(name: str, bench: Arguments) -> int:
    if name in MNIST_MODELS:
        return bench.mnist_batch_size
    return bench.char_batch_size if name == "char_transformer" else bench.batch_size


def measure(name: str, bench: Arguments, mnist) -> dict:
    set_seed(bench.seed)
    model = MODELS[name]()
    rows, batch = training_rows(name, bench, mnist)
    row = {"parameters": sum(p.numel() for p in model.parameters())}
    ep = ep_trainer(copy.deepcopy(model), bench, ep_audit_steps=0)
    row["init_float32"], row["init_float64"] = audited(ep, batch), float64(model, batch, bench)
    backprop = ready(Trainer(model=copy.deepcopy(model), args=TrainingArguments(**common(bench))))
    ms = timed({"backprop": lambda: step(backprop, batch), "ep": lambda: step(ep, batch),
                "ep_audited": lambda: audited(ep, batch)}, bench)
    row["step_ms"] = ms
    row["time_ratio"] = ms["ep"] / ms["backprop"]
    row["audit_cost_at_100"] = (ms["ep_audited"] - ms["ep"]) / (100 * ms["ep"])
    act = {"backprop": activation_mib(backprop, batch), "ep": activation_mib(ep, batch)}
    # Below 1 MiB, backprop's peak is its gradients (its activations are freed before they all exist): no ratio.
    row["activation_mib"] = act
    row["activation_ratio"] = act["ep"] / act["backprop"] if act["backprop"] >= 1 else None
    # The loss guard off: memorizing 64 random examples, a classifier's loss falls near zero and single batches
    # jump back above the first loss, which the guard (10x its baseline) reads as divergence. The audit judges.
    trained = EPTrainer(model=copy.deepcopy(model), train_dataset=rows, args=EPTrainingArguments(
        **{**common(bench), "max_steps": bench.train_steps, "per_device_train_batch_size": batch_size(name, bench),
           "ep_loss_guard_factor": 0}))
    trained.train()
    ready(trained)
    with trained.outside_training():  # the measuring batch is not a training batch: the loss guard must not judge it
        row["trained_float32"] = audited(trained, batch)
    row["trained_float64"] = float64(trained.model, batch, bench)
    row["trained_loss"] = [h["loss"] for h in trained.state.log_history if "loss" in h][-1:] or [
        trained.state.log_history[-1].get("train_loss")]
    return row


def frontier(name: str, bench: Arguments, mnist) -> list[dict]:
    set_seed(bench.seed)
    model = MODELS[name]()
    _, batch = training_rows(name, bench, mnist)
    backprop = ready(Trainer(model=copy.deepcopy(model), args=TrainingArguments(**common(bench))))
    base_act = activation_mib(backprop, batch)
    out = []
    for nudging, beta, sweeps, memory in FRONTIER:
        ep = ep_trainer(copy.deepcopy(model), bench, ep_audit_steps=0, ep_nudging=nudging, ep_beta=beta,
                        ep_settle_steps=sweeps, ep_memory=memory)
        try:
            cosine, rel = audited(ep, batch)
            ms = timed({"backprop": lambda: step(backprop, batch), "ep": lambda: step(ep, batch)},
                       Arguments(repeats=max(3, bench.repeats // 3), warmup=1))
            act = activation_mib(ep, batch)
            result = {"time_ratio": ms["ep"] / ms["backprop"], "activation_mib": act,
                      "activation_ratio": act / base_act if base_act >= 1 else None, "cosine": cosine, "rel_error": rel}
        except Exception as err:  # a setting that diverges is a result too
            result = {"error": f"{type(err).__name__}: {str(err)[:80]}"}
        out.append({"nudging": nudging, "beta": "scale-free" if beta is None else beta, "sweeps": sweeps,
                    "memory": memory, **result})
        print(json.dumps({name: out[-1]}), flush=True)
    return out


def memory(r: dict) -> str:
    act = r["activation_mib"]
    if r["activation_ratio"] is None:
        return f"n/a (EP {act['ep']:.1f} MiB, backprop {act['backprop']:.1f} MiB)"
    return f"{r['activation_ratio']:.2f}"


def displacement_rows(name: str, bench: Arguments, mnist) -> dict:
    """Relative error of EP's float64 gradient against backprop's at each displacement, and two fixed settings."""
    set_seed(bench.seed)
    model = MODELS[name]()
    _, batch = training_rows(name, bench, mnist)
    settings = {f"displacement {d:g}": dict(ep_nudge_displacement=d) for d in bench.displacements}
    settings["fixed β=1e-3"] = dict(ep_beta=1e-3)
    settings["previous defaults (centered β=0.1, 2 sweeps)"] = dict(ep_beta=0.1, ep_nudging="centered",
                                                                    ep_settle_steps=2)
    row = {label: float64(model, batch, bench, ep_audit_steps=0, **ep) for label, ep in settings.items()}
    print(json.dumps({name: row}), flush=True)
    return row


def tables(results: dict, frontiers: dict) -> str:
    lines = ["| model | parameters | cosine / rel. error at init (f32; f64) | after training (f32; f64) | "
             "step time / backprop | activation memory / backprop | audit cost at N=100 |", "|---|---|---|---|---|---|---|"]
    pair = lambda c: f"{c[0]:.6f} / {c[1]:.2g}"  # noqa: E731
    for name, r in results.items():
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {pair(r['init_float32'])}; {pair(r['init_float64'])} | "
                     f"{pair(r['trained_float32'])}; {pair(r['trained_float64'])} | {r['time_ratio']:.2f} | "
                     f"{memory(r)} | {100 * r['audit_cost_at_100']:.2f}% |")
    for name, rows in frontiers.items():
        lines += ["", f"Settings frontier, {name} (float32):", "",
                  "| nudging | β | sweeps | memory | step time / backprop | activation / backprop | cosine | rel. error |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in rows:
            if "error" in f:
                lines.append(f"| {f['nudging']} | {f['beta']} | {f['sweeps']} | {f['memory']} | {f['error']} | | | |")
            else:
                act = "n/a" if f["activation_ratio"] is None else f"{f['activation_ratio']:.2f}"
                lines.append(f"| {f['nudging']} | {f['beta']} | {f['sweeps']} | {f['memory']} | {f['time_ratio']:.2f} | "
                             f"{act} | {f['cosine']:.6f} | {f['rel_error']:.2g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    (bench,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=argv)
    if bench.threads:
        torch.set_num_threads(bench.threads)
    mnist = load_mnist() if set(bench.models) & set(MNIST_MODELS) else None
    if bench.displacements:
        return {name: displacement_rows(name, bench, mnist) for name in bench.models}
    results, frontiers = {}, {}
    for name in bench.models:
        results[name] = measure(name, bench, mnist)
        print(json.dumps({name: results[name]}), flush=True)
        if bench.frontier:
            frontiers[name] = frontier(name, bench, mnist)
    out = Path(bench.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_frontier" if bench.frontier else ""
    path = out / f"defaults{suffix}.json"
    if path.exists():  # a run of some models updates theirs and keeps the others'
        kept = json.loads(path.read_text())
        results, frontiers = {**kept.get("results", {}), **results}, {**kept.get("frontier", {}), **frontiers}
        runs = {**kept.get("runs", {}), **{name: vars(bench) for name in bench.models}}
    else:
        runs = {name: vars(bench) for name in bench.models}
    order = [name for name in MODELS if name in results or name in frontiers]
    results = {name: results[name] for name in order if name in results}
    frontiers = {name: frontiers[name] for name in order if name in frontiers}
    path.write_text(json.dumps({"runs": runs, "results": results, "frontier": frontiers}, indent=2))
    text = tables(results, frontiers)
    (out / f"defaults{suffix}_tables.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
