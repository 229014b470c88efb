"""Benchmark the MEP optimizer presets against plain SGD / AdamW on the MNIST MLP (issue 4).

    HF_HUB_OFFLINE=1 python benchmarks/optimizers.py        # default budget: ~2.5 min on a quiet 2-core CPU, <12 min loaded
    python benchmarks/optimizers.py --max_steps 50 --presets smep local_ep --baselines adamw_torch   # quick look

Every configuration trains the same model from the same initialization on the same batches (same seed, batch
size, number of steps and learning-rate schedule):

* ``ep:<preset>`` -- ``EPTrainer`` with ``EPTrainingArguments.mep_optimizer=<preset>`` (``mep_hf.optim.PRESETS``);
* ``ep:sgd`` / ``ep:adamw_torch`` -- ``EPTrainer`` with the Trainer's own ``optim`` (SGD with ``--sgd_momentum``);
* ``bp:<name>`` -- plain ``transformers.Trainer`` (backprop) with a preset or a Trainer ``optim``, as a reference
  (``muon_backprop`` is meant for backprop).

Step time is the Trainer's own optimizer step, measured by a ``TrainerCallback`` from ``on_step_begin`` to
``on_step_end`` (EP phases or backprop, gradient clipping, ``optimizer.step()``, scheduler, ``zero_grad``); the
table gives its median over the steps after ``--timing_warmup``, and its ratio to the reference configuration
(``--reference``, default ``ep:adamw_torch``). On a shared machine run-to-run timings drift, so by default
(``--interleave``) all configurations train *at once, one optimizer step each in turn*: each runs in its own
thread, and a baton passed in ``on_step_end`` lets exactly one of them compute at any moment. Step i of every
configuration is thus measured within a few seconds of step i of the reference, and the ratios compare like
with like. Training results are unaffected (each run's computation is the same as alone).

``--lr_grid '{"ep:sgd": [0.01, 0.03, 0.1]}'`` trains a configuration at each listed learning rate; the table
lists every run and marks, per configuration, the one with the best *validation* accuracy (test accuracy is
only reported, never used to choose). ``--learning_rates '{"ep:sgd": 0.03}'`` overrides one configuration's
learning rate (default: ``--learning_rate`` for all).

Writes ``optimizers.md`` (the table) and ``optimizers.json`` (everything, per-step times included) to
``--output_dir``, and prints the table.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainerCallback, set_seed

from mep_hf import EPMLPConfig, EPMLPForImageClassification, EPTrainer, EPTrainingArguments
from mep_hf.data import load_mnist
from mep_hf.optim import PRESETS, build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from train_image_classification import MAIN_JOB_DEFAULTS  # noqa: E402

TRAINER_OPTIMS = ("sgd", "adamw_torch")

# Chosen by validation accuracy from the grid {1e-3, 3e-3, 1e-2} ({0.01, 0.03, 0.1} for SGD) at the default budget
# (600 steps); the command and the whole grid are in docs/optimizers.md. Configurations not listed use --learning_rate.
TUNED_LEARNING_RATES = {
    "ep:smep": 3e-3,
    "ep:sdmep": 3e-3,
    "ep:local_ep": 1e-3,
    "ep:natural_ep": 3e-3,
    "ep:muon_backprop": 3e-3,
    "ep:sgd": 0.1,
    "ep:adamw_torch": 1e-2,
    "bp:muon_backprop": 1e-2,
    "bp:adamw_torch": 1e-2,
}


@dataclass
class BenchmarkArguments:
    presets: list[str] = field(
        default_factory=lambda: list(PRESETS), metadata={"help": "MEP presets to run with EPTrainer."}
    )
    baselines: list[str] = field(
        default_factory=lambda: list(TRAINER_OPTIMS),
        metadata={"help": "Trainer `optim` names to run with EPTrainer (the plain optimizers)."},
    )
    backprop: list[str] = field(
        default_factory=lambda: ["muon_backprop", "adamw_torch"],
        metadata={"help": "Presets or Trainer `optim` names to also run with plain transformers.Trainer (backprop)."},
    )
    reference: str = field(default="ep:adamw_torch", metadata={"help": "Configuration the step-time ratio divides by."})
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256], metadata={"help": "Hidden block widths."})
    sgd_momentum: float = field(default=0.9, metadata={"help": "Momentum of the `sgd` optimizer."})
    learning_rates: str = field(
        default=json.dumps(TUNED_LEARNING_RATES),
        metadata={"help": "JSON {config: lr} overriding --learning_rate for single configurations ('{}': none)."},
    )
    lr_grid: str = field(
        default="{}", metadata={"help": "JSON {config: [lr, ...]}: train config at each lr, pick by validation accuracy."}
    )
    preset_options: str = field(default="{}", metadata={"help": "JSON {preset: {option: value}} for build_optimizer."})
    timing_warmup: int = field(default=10, metadata={"help": "Steps left out of the step-time median."})
    interleave: bool = field(
        default=True, metadata={"help": "Train all configurations in lock-step (one step each in turn); else one after another."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})


# The main job's settings (examples/train_image_classification.py), except width and budget: see docs/optimizers.md.
BENCHMARK_DEFAULTS = {**MAIN_JOB_DEFAULTS, "output_dir": "runs/bench_optimizers", "max_steps": 600,
                      "eval_strategy": "no", "report_to": "none"}


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


class Baton:
    """Round-robin turn-taking between named threads: exactly one holds the turn at any time."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.index = 0
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order and self.order[self.index] == name)

    def pass_on(self, name: str) -> None:
        with self.cond:
            self.index = (self.order.index(name) + 1) % len(self.order)
            self.cond.notify_all()

    def leave(self, name: str) -> None:
        with self.cond:
            i = self.order.index(name)
            self.order.remove(name)
            if self.order:
                self.index = i % len(self.order)
            self.cond.notify_all()


class StepTimer(TrainerCallback):
    """Wall time of each Trainer optimizer step (on_step_begin -> on_step_end); hands the baton on after each."""

    def __init__(self, name: str, baton: Baton | None):
        self.name, self.baton = name, baton
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)
        if self.baton is not None:
            self.baton.pass_on(self.name)
            self.baton.wait(self.name)


@dataclass
class Run:
    name: str  # e.g. "ep:smep@0.001"
    config: str  # e.g. "ep:smep"
    trainer: str  # "EPTrainer" | "Trainer"
    optimizer: str  # preset or Trainer optim
    lr: float
    options: dict = field(default_factory=dict)
    status: str = "pending"
    error: str | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    train_loss: float | None = None
    final_logged_loss: float | None = None
    median_step_ms: float | None = None
    step_times_ms: list[float] = field(default_factory=list)
    selected: bool = False


def plan_runs(bench: BenchmarkArguments, default_lr: float) -> list[Run]:
    lr_overrides = json.loads(bench.learning_rates)
    grid = json.loads(bench.lr_grid)
    options = json.loads(bench.preset_options)
    for name in [*bench.presets, *(b for b in bench.backprop if b not in TRAINER_OPTIMS)]:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    for name in bench.baselines:
        if name not in TRAINER_OPTIMS:
            raise ValueError(f"baseline {name!r} is not one of {TRAINER_OPTIMS}")
    configs = [("ep", p) for p in bench.presets] + [("ep", b) for b in bench.baselines]
    configs += [("bp", b) for b in bench.backprop]
    runs = []
    for kind, opt in configs:
        config = f"{kind}:{opt}"
        lrs = grid.get(config, [lr_overrides.get(config, default_lr)])
        for lr in lrs:
            runs.append(
                Run(
                    name=f"{config}@{lr:g}", config=config, trainer="EPTrainer" if kind == "ep" else "Trainer",
                    optimizer=opt, lr=float(lr), options=options.get(opt, {}) if opt in PRESETS else {},
                )
            )
    unknown = (set(lr_overrides) | set(grid)) - {r.config for r in runs}
    if unknown and grid:
        print(f"note: --learning_rates/--lr_grid name configurations not run: {sorted(unknown)}")
    return runs


def run_args(parser: HfArgumentParser, argv: list[str], run: Run, bench: BenchmarkArguments) -> EPTrainingArguments:
    extra = ["--learning_rate", repr(run.lr), "--output_dir", str(Path(parse_output_dir(parser, argv)) / "runs" / run.name)]
    if run.optimizer in TRAINER_OPTIMS:
        extra += ["--optim", run.optimizer]
        if run.optimizer == "sgd":
            extra += ["--optim_args", f"momentum={bench.sgd_momentum}"]
    elif run.trainer == "EPTrainer":
        extra += ["--mep_optimizer", run.optimizer]
        if run.options:
            extra += ["--mep_optimizer_options", json.dumps(run.options)]
    _, args = parser.parse_args_into_dataclasses(args=[*argv, *extra])
    return args


def parse_output_dir(parser: HfArgumentParser, argv: list[str]) -> str:
    _, args = parser.parse_args_into_dataclasses(args=argv)
    return args.output_dir


def train_one(run: Run, args: EPTrainingArguments, bench: BenchmarkArguments, mnist, baton: Baton | None) -> None:
    set_seed(args.seed)  # same initialization for every configuration
    model = EPMLPForImageClassification(
        EPMLPConfig(
            input_size=784, hidden_sizes=bench.hidden_sizes,
            id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
        )
    )
    timer = StepTimer(run.name, baton)
    common = dict(
        model=model, args=args, train_dataset=mnist["train"], eval_dataset=mnist["validation"],
        compute_metrics=accuracy, callbacks=[timer],
    )
    if run.trainer == "EPTrainer":
        trainer = EPTrainer(**common)
    elif run.optimizer in PRESETS:
        optimizer = build_optimizer(run.optimizer, model, lr=args.learning_rate, weight_decay=args.weight_decay, **run.options)
        trainer = Trainer(**common, optimizers=(optimizer, None))
    else:
        trainer = Trainer(**common)
    result = trainer.train()
    run.train_loss = float(result.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    run.final_logged_loss = float(losses[-1]) if losses else None
    run.val_accuracy = float(trainer.evaluate(mnist["validation"], metric_key_prefix="val")["val_accuracy"])
    run.test_accuracy = float(trainer.evaluate(mnist["test"], metric_key_prefix="test")["test_accuracy"])
    run.step_times_ms = [t * 1e3 for t in timer.times]
    timed = run.step_times_ms[bench.timing_warmup:] or run.step_times_ms
    run.median_step_ms = statistics.median(timed) if timed else None
    run.status = "ok"


def execute(runs: list[Run], parser, argv, bench: BenchmarkArguments, mnist) -> None:
    all_args = {run.name: run_args(parser, argv, run, bench) for run in runs}

    def body(run: Run, baton: Baton | None) -> None:
        if baton is not None:
            baton.wait(run.name)
        t0 = time.perf_counter()
        try:
            train_one(run, all_args[run.name], bench, mnist, baton)
        except Exception as err:  # one failing configuration must not stop the others
            run.status, run.error = "failed", f"{type(err).__name__}: {err}"
            traceback.print_exc()
        finally:
            print(
                f"[{run.name}] {run.status}: test acc {run.test_accuracy}, median step {run.median_step_ms} ms "
                f"({time.perf_counter() - t0:.0f} s incl. waiting)",
                flush=True,
            )
            if baton is not None:
                baton.leave(run.name)

    if not bench.interleave:
        for run in runs:
            body(run, None)
        return
    baton = Baton([r.name for r in runs])
    threads = [threading.Thread(target=body, args=(run, baton), name=run.name) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def select_and_ratio(runs: list[Run], reference: str) -> dict:
    best: dict[str, Run] = {}
    for run in runs:
        if run.status != "ok":
            continue
        if run.config not in best or run.val_accuracy > best[run.config].val_accuracy:
            best[run.config] = run
    for run in best.values():
        run.selected = True
    ref = best.get(reference)
    ratios = {}
    for run in runs:
        if ref is None or run.status != "ok":
            ratios[run.name] = None
            continue
        n = min(len(run.step_times_ms), len(ref.step_times_ms))
        paired = [a / b for a, b in zip(run.step_times_ms[:n], ref.step_times_ms[:n])]
        ratios[run.name] = {
            "ratio_of_medians": run.median_step_ms / ref.median_step_ms,
            "median_paired_ratio": statistics.median(paired[10:] or paired) if paired else None,
        }
    return ratios


def markdown_table(runs: list[Run], ratios: dict, reference: str, grid_used: bool) -> str:
    head = "| configuration | trainer | optimizer | lr | test acc | val acc | train loss | median step (ms) | step time / " + reference + " |"
    lines = [head, "|" + "---|" * 9]
    for run in runs:
        mark = " *" if grid_used and run.selected else ""
        if run.status != "ok":
            lines.append(f"| {run.config}{mark} | {run.trainer} | {run.optimizer} | {run.lr:g} | failed: {run.error} | | | | |")
            continue
        r = ratios.get(run.name)
        lines.append(
            f"| {run.config}{mark} | {run.trainer} | {run.optimizer} | {run.lr:g} | {run.test_accuracy:.4f} | "
            f"{run.val_accuracy:.4f} | {run.train_loss:.4f} | {run.median_step_ms:.1f} | "
            f"{r['ratio_of_medians']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((BenchmarkArguments, EPTrainingArguments))
    parser.set_defaults(**BENCHMARK_DEFAULTS)
    bench, base_args = parser.parse_args_into_dataclasses(args=argv)
    runs = plan_runs(bench, base_args.learning_rate)

    mnist = load_mnist()
    if bench.max_train_samples is not None:
        mnist["train"] = mnist["train"].select(range(bench.max_train_samples))

    t0 = time.perf_counter()
    execute(runs, parser, argv, bench, mnist)
    wall = time.perf_counter() - t0
    ratios = select_and_ratio(runs, bench.reference)
    grid_used = any(len(lrs) > 1 for lrs in json.loads(bench.lr_grid).values())
    table = markdown_table(runs, ratios, bench.reference, grid_used)

    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    header = (
        f"MNIST MLP 784-{'-'.join(map(str, bench.hidden_sizes))}-10, {base_args.max_steps} steps x batch "
        f"{base_args.per_device_train_batch_size}, lr schedule {getattr(base_args.lr_scheduler_type, 'value', base_args.lr_scheduler_type)}, seed {base_args.seed}, "
        f"EP beta={base_args.ep_beta} nudging={base_args.ep_nudging} settle_steps={base_args.ep_settle_steps}; "
        f"{'interleaved' if bench.interleave else 'sequential'} timing, median over steps > {bench.timing_warmup}; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, {machine}; total wall time {wall:.0f} s."
    )
    if grid_used:
        header += " `*`: learning rate chosen by validation accuracy from --lr_grid."
    text = header + "\n\n" + table + "\n"
    print("\n" + text)

    out = Path(base_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizers.md").write_text(text)
    payload = {
        "command": "python benchmarks/optimizers.py " + " ".join(argv),
        "benchmark_args": asdict(bench),
        "training_args": {k: base_args.to_dict()[k] for k in (
            "max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "warmup_steps",
            "max_grad_norm", "weight_decay", "seed", "ep_beta", "ep_nudging", "ep_settle_steps", "ep_settle_mode")},
        "environment": {
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": machine, "python": platform.python_version(),
        },
        "wall_seconds": wall,
        "runs": [{**asdict(run), "ratio": ratios.get(run.name)} for run in runs],
        "table_markdown": table,
    }
    (out / "optimizers.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out / 'optimizers.md'} and {out / 'optimizers.json'}")
    return payload


if __name__ == "__main__":
    main()
