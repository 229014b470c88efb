"""EP on deep residual MLPs (10 to 10,000 blocks) on MNIST: accuracy, gradients, step time and memory vs backprop.

    python benchmarks/deep_scaling.py --depths 10 100                 # train, test, probe; docs/deep_scaling.*
    python benchmarks/deep_scaling.py --depths 10000 --max_steps 400  # a fixed number of steps
    python benchmarks/deep_scaling.py --report_only                   # redraw the docs from runs/deep_scaling

For each depth, a fresh :class:`~mep_hf.EPResidualMLPForImageClassification` is first probed on one training batch,
in one process: the gradient of the first, middle and last residual block by EP (``EPTrainer``) and by backprop
(``Trainer``) and their cosine; the median ``training_step`` time of EP (both ``ep_memory`` modes) and backprop,
interleaved; and each one's peak of live tensor bytes during a ``training_step`` (``tensor_peak`` of
``benchmarks/memory.py``: torch's allocation records, gradients included). Then ``EPTrainer`` trains it (AdamW,
the Trainer's loop, logging and checkpoints; a re-run resumes from the last checkpoint) and tests it on MNIST's
test split. Each depth's record goes to ``<output_dir>/depth_<N>/deep_scaling.json`` as soon as it exists, and
``docs/deep_scaling.{json,md,png}`` are rebuilt from every record present, so a cut-off run keeps what it measured.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from mep_hf import (
    EPResidualMLPConfig,
    EPResidualMLPForImageClassification,
    EPTrainer,
    EPTrainingArguments,
    TrainingDivergedError,
    configure_threads,
    metrics,
)
from mep_hf.data import load_mnist

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "benchmarks")]
from memory import SCRATCH, tensor_peak  # noqa: E402  (the allocation-record peak and the scratch output_dir)
from run_utils import command_line, cpu_model, git_commit, write_run_info  # noqa: E402

METHODS = ("backprop", "ep_fast", "ep_low")


@dataclass
class DeepScalingArguments:
    depths: list[int] = field(default_factory=lambda: [10, 100, 1000], metadata={"help": "Residual blocks."})
    hidden_size: int = 64
    activation: str = "tanh"
    batch_size: int = 64
    learning_rate: float = 1e-3
    num_train_epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "Training steps; overrides num_train_epochs when > 0."})
    warmup_steps: int = 100
    ep_beta: float = field(default=1e-5, metadata={"help": "Small: a nudge moves block l's state by ~l·β."})
    ep_memory: str = field(default="low", metadata={"help": "ep_memory of the training run (both are probed)."})
    logging_steps: int = 20
    save_steps: int = 500
    repeats: int = field(default=3, metadata={"help": "Timed training_step calls per method (median reported)."})
    threads: int = 1
    seed: int = 0
    output_dir: str = "runs/deep_scaling"
    docs_dir: str = "docs"
    report_only: bool = field(default=False, metadata={"help": "Only rebuild the docs from the saved records."})


def build(args: DeepScalingArguments, depth: int) -> EPResidualMLPForImageClassification:
    set_seed(args.seed)
    config = EPResidualMLPConfig(hidden_size=args.hidden_size, num_blocks=depth, activation=args.activation,
                                 num_labels=10)
    return EPResidualMLPForImageClassification(config)


def ep_arguments(args: DeepScalingArguments, memory: str, **kwargs) -> EPTrainingArguments:
    return EPTrainingArguments(ep_beta=args.ep_beta, ep_nudging="positive", ep_settle_steps=1, ep_memory=memory,
                               use_cpu=True, report_to="none", **kwargs)


def probe(args: DeepScalingArguments, model, batch: dict) -> dict:
    """Gradients, step time and peak memory of EP and backprop at the initial weights, on one batch."""
    depth = model.config.num_blocks
    trainers = {"backprop": Trainer(model=model, args=TrainingArguments(output_dir=SCRATCH.name,
                                                                        use_cpu=True, report_to="none"))}
    for memory in ("fast", "low"):
        training = ep_arguments(args, memory, output_dir=SCRATCH.name)
        trainers[f"ep_{memory}"] = EPTrainer(model=model, args=training)
    blocks = {"first": 1, "middle": 1 + depth // 2, "last": depth}  # residual blocks; 0 is the input block
    row, grads = {}, {}
    for method, trainer in trainers.items():
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); read by training_step
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(batch))  # warm-up, and the gradients
        grads[method] = {k: model.blocks[i].linear.weight.grad.clone() for k, i in blocks.items()}
        model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.training_step(model, dict(batch))
        row[method] = {"peak_mib": tensor_peak(prof) / 2**20}
        del prof
    times = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method, trainer in trainers.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            trainer.training_step(model, dict(batch))
            times[method].append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    for method in METHODS:
        row[method]["step_s"] = statistics.median(times[method])
    ep = f"ep_{args.ep_memory}"
    row["grad_norms"] = {
        k: {"ep": grads[ep][k].norm().item(), "backprop": grads["backprop"][k].norm().item(),
            "cosine": torch.nn.functional.cosine_similarity(grads[ep][k].flatten(), grads["backprop"][k].flatten(),
                                                            dim=0).item()}
        for k in blocks
    }
    row["ratios"] = {f"{m}_{q}": row[m][key] / row["backprop"][key]
                     for m in ("ep_fast", "ep_low") for q, key in (("time", "step_s"), ("memory", "peak_mib"))}
    return row


def train(args: DeepScalingArguments, model, mnist, out: Path) -> dict:
    """Train with ``EPTrainer`` (resuming from the last checkpoint in ``out``) and test on MNIST's test split."""
    accuracy = metrics.load("accuracy")

    def compute_metrics(pred):
        return accuracy.compute(predictions=pred.predictions.argmax(-1), references=pred.label_ids)

    training = ep_arguments(
        args, args.ep_memory, output_dir=str(out), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=1000, learning_rate=args.learning_rate, optim="adamw_torch", weight_decay=0.0,
        lr_scheduler_type="cosine", warmup_steps=args.warmup_steps, num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps, logging_steps=args.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=1, seed=args.seed, disable_tqdm=True,
    )
    trainer = EPTrainer(model=model, args=training, train_dataset=mnist["train"], compute_metrics=compute_metrics)
    start, diverged = time.perf_counter(), None
    try:
        trainer.train(resume_from_checkpoint=get_last_checkpoint(str(out)) if out.is_dir() else None)
    except TrainingDivergedError as err:
        diverged = str(err)
    seconds = time.perf_counter() - start
    test = trainer.evaluate(mnist["test"], metric_key_prefix="test")
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    info = write_run_info(out, seconds)
    return {"run_info": info,
        "ep_test_accuracy": test["test_accuracy"], "steps": trainer.state.global_step,
        "loss_first": losses[0][1], "loss_last": losses[-1][1], "losses": losses, "diverged": diverged,
        "train_seconds": seconds, "seconds_per_step": seconds / max(trainer.state.global_step, 1),
    }


def run_depth(args: DeepScalingArguments, depth: int, mnist) -> dict:
    out = Path(args.output_dir) / f"depth_{depth}"
    out.mkdir(parents=True, exist_ok=True)
    model = build(args, depth)
    g = torch.Generator().manual_seed(args.seed)
    rows = mnist["train"][torch.randperm(len(mnist["train"]), generator=g)[: args.batch_size].tolist()]
    batch = {"pixel_values": rows["pixel_values"], "labels": rows["labels"]}
    record = {"depth": depth, "command": command_line(), "commit": git_commit(), "settings": asdict(args),
              "parameters": sum(p.numel() for p in model.parameters()),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)",
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    record["probe"] = probe(args, model, batch)
    save(out, record)
    write_docs(args)
    record["train"] = train(args, model, mnist, out)
    return save(out, record)


def save(out: Path, record: dict) -> dict:
    (out / "deep_scaling.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_records(args: DeepScalingArguments) -> dict[int, dict]:
    records = {}
    for path in Path(args.output_dir).glob("depth_*/deep_scaling.json"):
        record = json.loads(path.read_text())
        checkpoint = get_last_checkpoint(str(path.parent))
        if "train" not in record and checkpoint is not None:
            record["train"] = from_checkpoint(Path(checkpoint))
        records[record["depth"]] = record
    return dict(sorted(records.items()))


def from_checkpoint(checkpoint: Path) -> dict:
    """What a cut-off training run measured up to its last checkpoint (the Trainer's ``trainer_state.json``)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    losses = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
    return {"ep_test_accuracy": None, "steps": state["global_step"], "loss_first": losses[0][1],
            "loss_last": losses[-1][1], "losses": losses, "diverged": None, "train_seconds": None,
            "seconds_per_step": None, "cut_off_at": checkpoint.name}


def number(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def summary(record: dict) -> dict:
    """The issue's per-depth shape."""
    probe, trained = record["probe"], record.get("train", {})
    return {
        "ep_test_accuracy": trained.get("ep_test_accuracy"),
        "steps": trained.get("steps", 0),
        "loss_first": trained.get("loss_first"),
        "loss_last": trained.get("loss_last"),
        "ep_peak_mib": probe[f"ep_{record['settings']['ep_memory']}"]["peak_mib"],
        "backprop_peak_mib": probe["backprop"]["peak_mib"],
    }


def write_docs(args: DeepScalingArguments) -> None:
    records = load_records(args)
    if not records:
        raise FileNotFoundError(f"no deep_scaling.json records under {args.output_dir}/depth_*; run some depths first")
    docs = Path(args.docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "deep_scaling.json").write_text(json.dumps({str(d): summary(r) for d, r in records.items()}, indent=2)
                                            + "\n")
    (docs / "deep_scaling_raw.json").write_text(json.dumps({str(d): r for d, r in records.items()}, indent=2) + "\n")
    (docs / "deep_scaling.md").write_text(markdown(records))
    try:
        plot(records, docs / "deep_scaling.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


def checks(records: dict[int, dict]) -> list[str]:
    """The issue's claims, read off the records: accuracy, a falling loss without divergence, EP memory ≤ backprop."""
    lines = []
    for d, r in records.items():
        t = r.get("train")
        if t is None:
            lines.append(f"* depth {d:,}: training did not finish (probe only).")
            continue
        falling = "falling" if t["loss_last"] < t["loss_first"] else "NOT falling"
        stopped = f"stopped by the divergence guard: {t['diverged']}" if t["diverged"] else "no divergence"
        cut = f" (cut off; measured up to {t['cut_off_at']})" if t.get("cut_off_at") else ""
        accuracy = number(t["ep_test_accuracy"], ".4f")
        lines.append(f"* depth {d:,}: {t['steps']} EP steps{cut}, test accuracy {accuracy}, "
                     f"loss {t['loss_first']:.3f} → {t['loss_last']:.3f} ({falling}, {stopped}).")
    for mode in ("low", "fast"):
        ratios = {d: r["probe"]["ratios"][f"ep_{mode}_memory"] for d, r in records.items()}
        worst = max(ratios, key=ratios.get)
        verdict = "≤ 1 at every depth" if ratios[worst] <= 1 else "above 1 at some depth"
        lines.append(f"* EP `ep_memory=\"{mode}\"` peak / backprop peak: at most {ratios[worst]:.2f} "
                     f"(depth {worst:,}): {verdict}.")
    return lines


def markdown(records: dict[int, dict]) -> str:
    """``docs/deep_scaling.md``: every measured number, the command that reproduces it, the machine and its load."""
    lines = [
        "# EP on deep residual MLPs (MNIST)",
        "",
        "Generated by `benchmarks/deep_scaling.py` from `runs/deep_scaling/depth_*/deep_scaling.json` (all numbers:",
        "`docs/deep_scaling_raw.json`; the issue's summary: `docs/deep_scaling.json`; plot: `docs/deep_scaling.png`).",
        "Model: `EPResidualMLPForImageClassification`, input block 784 → width (tanh), `depth` pre-norm residual",
        "blocks `s + tanh(W·LayerNorm(s) + b)/√depth` (one EP state each), head LayerNorm → Linear. EP: `EPTrainer`,",
        "positive nudging, one sweep, β = `--ep_beta` (default 1e-5) and `ep_memory` = `--ep_memory` (default `low`)",
        "unless the row's command sets them. Probe columns: one training batch at the initial weights, same model,",
        "same process; step = median `training_step` time (forward, backward,",
        "gradients; no optimizer); peak = peak of live tensor bytes during a `training_step`, gradients included",
        "(`tensor_peak` of `benchmarks/memory.py`). Training s/step: the Trainer's wall time per step (data,",
        "optimizer, logging included). β is small because a nudge moves block l's state by about l·β (the skip",
        "paths add up the errors), so the placed contrast's bias grows with depth (cosine 0.971 at the last block of",
        "depth 10,000, β = 1e-5, before ac92491); the fused low mode at one sweep has none (cosines below).",
        "The machine is shared: step times are medians of interleaved steps, so the ratios hold better than the",
        "absolute times, which depend on the load shown at the bottom. Each row names the commit it ran: from",
        "ac92491 on, `ep_memory=\"low\"` fuses the last sweep with the contrast (one sweep: the β → 0 limit, at",
        "checkpointing's cost); a row without a commit, or before it, ran the placed contrast",
        "(`docs/transformer_memory.md`).",
        "",
        *checks(records),
        "",
        "| depth | width | batch | params | steps | EP test acc. | loss first → last | s/step (training) | "
        "EP fast / EP low / backprop step (s) | EP low / backprop time | EP fast / EP low / backprop peak (MiB) | "
        "EP low / backprop memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, r in records.items():
        p, t, s = r["probe"], r.get("train"), r["settings"]
        trained = "not finished | – | – | –" if t is None else (
            f"{t['steps']} | {number(t['ep_test_accuracy'], '.4f')} | {t['loss_first']:.3f} → {t['loss_last']:.3f} | "
            f"{number(t['seconds_per_step'], '.3f')}")
        lines.append(
            f"| {d:,} | {s['hidden_size']} | {s['batch_size']} | {r['parameters']:,} | {trained} | "
            + " / ".join(f"{p[m]['step_s']:.3f}" for m in ("ep_fast", "ep_low", "backprop"))
            + f" | {p['ratios']['ep_low_time']:.2f} | "
            + " / ".join(f"{p[m]['peak_mib']:.1f}" for m in ("ep_fast", "ep_low", "backprop"))
            + f" | {p['ratios']['ep_low_memory']:.2f} |"
        )
    lines += ["", "Gradient of a residual block's weight at the initial weights, EP (the training run's `ep_memory`) "
              "and backprop, same batch:", "", "| depth | block | EP ‖∂L/∂W‖ | backprop ‖∂L/∂W‖ | cosine |",
              "|---|---|---|---|---|"]
    for d, r in records.items():
        for k, g in r["probe"]["grad_norms"].items():
            lines.append(f"| {d:,} | {k} | {g['ep']:.4g} | {g['backprop']:.4g} | {g['cosine']:.6f} |")
    lines += ["", "| depth | command | commit | machine | load average (start → end) | training wall time (s) |",
              "|---|---|---|---|---|---|"]
    for d, r in records.items():
        info = r.get("train", {}).get("run_info", {}).get("machine", {})
        end = info.get("load_average_at_end", "–")
        seconds = number(r.get("train", {}).get("train_seconds"), ".0f")
        lines.append(f"| {d:,} | `{r['command']}` | {r.get('commit') or '–'} | {r['machine']} | "
                     f"{r['load_average_at_start']} → {end} | {seconds} |")
    return "\n".join(lines) + "\n"


def plot(records: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for d, r in records.items():
        if "train" in r:
            steps, losses = zip(*r["train"]["losses"])
            left.plot(steps, losses, label=f"depth {d:,}")
    left.set(xscale="log", yscale="log", xlabel="step", ylabel="training loss (EP)", title="EP training loss")
    left.legend()
    depths = list(records)
    for k, marker in (("first", "o"), ("middle", "s"), ("last", "^")):
        for method, style in (("ep", "-"), ("backprop", ":")):
            right.plot(depths, [records[d]["probe"]["grad_norms"][k][method] for d in depths], style, marker=marker,
                       label=f"{k} block, {method}")
    right.set(xscale="log", yscale="log", xlabel="depth (residual blocks)", ylabel="‖∂L/∂W‖ at init",
              title="gradient norm of a block's weight")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(DeepScalingArguments).parse_args_into_dataclasses(args=argv)
    configure_threads(args.threads)
    if not args.report_only:
        git_commit()  # the code this process imported, whatever is committed while it runs
        mnist = load_mnist()
        for depth in args.depths:
            record = run_depth(args, depth, mnist)
            print(json.dumps({depth: summary(record)}), flush=True)
    write_docs(args)


if __name__ == "__main__":
    main()
