"""Continual-learning study for issue 31, question 1: is continual learning EP's niche?

    OMP_NUM_THREADS=1 python benchmarks/continual_study.py    # writes docs/research.json's continual, prints a table

Four sequences (permuted MNIST, split MNIST and split Fashion-MNIST class-incremental, rotated MNIST 0..90 degrees)
× three methods (plain fine-tuning, EWC, a replay buffer) × learners: backprop with the stock ``Trainer``, EP with the
library's defaults, a biased EP (positive nudging at β=0.5), and backprop and EP with the ``sdmep`` optimizer preset
(Dion's low-rank updates with error feedback) × seeds; each EP learner is compared with its backprop twin. Every run is
``examples/continual_learning.py``'s ``run_sequence`` at a budget that runs on this project's shared 2-core CPU (a
small MLP, ``--max_train_samples`` rows per task, one epoch). EWC's λ is picked once per learner from ``--lambdas``
on permuted MNIST's validation split with the first seed, then fixed for every sequence and seed. Finished runs are
kept in ``--work_dir`` (a re-run skips them), so an interrupted study resumes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples")]

from continual_learning import DEFAULTS, ContinualArguments, load_tasks, run_sequence  # noqa: E402
from run_utils import command_line, cpu_model  # noqa: E402

from mep_hf import EPTrainingArguments, configure_threads  # noqa: E402
from research_record import record  # noqa: E402

SEQUENCES = {
    "permuted_mnist": dict(tasks="permuted_mnist", num_tasks=5),
    "split_mnist": dict(tasks="split_mnist", scenario="class"),
    "split_fashion_mnist": dict(tasks="split_fashion_mnist", scenario="class"),
    "rotated_mnist": dict(tasks="rotated_mnist", num_tasks=5, max_angle=90.0),
}
# learner -> (ContinualArguments.method, EPTrainingArguments overrides); sdmep: Dion with error feedback
LEARNERS = {
    "backprop": ("backprop", {}),
    "ep": ("ep", {}),
    "ep_positive_0.5": ("ep", {"ep_nudging": "positive", "ep_beta": 0.5}),
    "backprop_sdmep": ("backprop", {"mep_optimizer": "sdmep"}),
    "ep_sdmep": ("ep", {"mep_optimizer": "sdmep"}),
}
METHODS = ("plain", "ewc", "replay")
TWINS = {"ep": "backprop", "ep_positive_0.5": "backprop", "ep_sdmep": "backprop_sdmep"}  # EP learner -> its twin


@dataclass
class StudyArguments:
    work_dir: str = field(default="runs/continual_study", metadata={"help": "Per-run results (resumable)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds."})
    lambdas: list[float] = field(default_factory=lambda: [10.0, 100.0, 1000.0, 10000.0],
                                 metadata={"help": "EWC λ grid, searched once on permuted MNIST validation."})
    replay_per_task: int = field(default=100, metadata={"help": "Replay buffer rows kept per finished task."})
    max_train_samples: int = field(default=2000, metadata={"help": "Training rows per task."})
    max_eval_samples: int = field(default=500, metadata={"help": "Validation and test rows per task."})
    fisher_samples: int = field(default=200, metadata={"help": "Rows per task for the Fisher estimate."})
    hidden_sizes: list[int] = field(default_factory=lambda: [100], metadata={"help": "MLP hidden widths."})
    learners: list[str] = field(default_factory=lambda: list(LEARNERS), metadata={"help": "Learners to run."})
    num_threads: int = field(default=1, metadata={"help": "torch threads."})
    cached_only: bool = field(default=False, metadata={"help": "Report the finished runs only (train nothing)."})


def run(study: StudyArguments, args: EPTrainingArguments, key: str, learner: str, seed: int,
        ewc_lambda: float = 0.0, replay: int = 0) -> dict:
    """One sequence, learner, seed and method (cached in ``work_dir``)."""
    name = f"{key}_{learner}_s{seed}_ewc{ewc_lambda:g}_replay{replay}"
    path = Path(study.work_dir) / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if study.cached_only:
        return None
    method, overrides = LEARNERS[learner]
    cl = ContinualArguments(**SEQUENCES[key], method=method, ewc_lambda=ewc_lambda, replay_per_task=replay,
                            fisher_samples=study.fisher_samples, hidden_sizes=study.hidden_sizes,
                            max_train_samples=study.max_train_samples, max_eval_samples=study.max_eval_samples)
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    run_args = dataclasses.replace(args, output_dir=str(Path(study.work_dir) / name), seed=seed, **overrides)
    result = {**run_sequence(load_tasks(cl), cl, run_args), "seconds": round(time.perf_counter() - start, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": values}


def summarize(study: StudyArguments, runs: dict) -> dict:
    """Mean and sample std over seeds, and each EP learner's paired gap to backprop against the seed spread."""
    out = {}
    for key, by_learner in runs.items():
        out[key] = {}
        by_learner = {learner: by_method for learner, by_method in by_learner.items() if by_method["plain"]}
        for learner, by_method in by_learner.items():
            out[key][learner] = {m: {metric: spread([r["test"][metric] for r in seeds])
                                     for metric in ("average_accuracy", "average_forgetting")}
                                 for m, seeds in by_method.items()}
        for twin, reference in TWINS.items():
            if twin not in by_learner or reference not in by_learner:
                continue
            for m in METHODS:
                ours, theirs = out[key][twin][m]["average_accuracy"], out[key][reference][m]["average_accuracy"]
                gaps = [a - b for a, b in zip(ours["per_seed"], theirs["per_seed"])]
                seed_spread = max(ours["std"], theirs["std"])
                out[key][twin][m]["gap_to_backprop"] = {
                    "twin": reference, "mean": float(np.mean(gaps)), "per_seed": gaps, "seed_spread": seed_spread,
                    "beats_backprop": bool(np.mean(gaps) > seed_spread)}
    return out


def table(summary: dict, learners: list[str]) -> str:
    """One row per sequence and method: each of ``learners``'s test average accuracy / forgetting (mean ± std over
    seeds), and each EP learner's mean paired gap to its backprop twin beside the larger of the two seed spreads."""
    learners = [name for name in learners if name in next(iter(summary.values()))]
    head = " | ".join(f"{name}: accuracy / forgetting" + (f" | − {TWINS[name]} (spread)" if name in TWINS else "")
                      for name in learners)
    columns = len(learners) + len(set(learners) & set(TWINS))
    lines = [f"| sequence | method | {head} |", "|---|---|" + "---|" * columns]
    for key, by_learner in summary.items():
        for m in METHODS:
            cells = []
            for name in learners:
                by_method = by_learner[name]
                acc, forg = by_method[m]["average_accuracy"], by_method[m]["average_forgetting"]
                cells.append(f"{acc['mean']:.4f} ± {acc['std']:.4f} / {forg['mean']:.4f} ± {forg['std']:.4f}")
                if name in TWINS:
                    gap = by_method[m]["gap_to_backprop"]
                    cells.append(f"{gap['mean']:+.4f} ({gap['seed_spread']:.4f})")
            lines.append(f"| {key} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((StudyArguments, EPTrainingArguments))
    parser.set_defaults(**{**DEFAULTS, "logging_steps": 10**6, "use_cpu": True})
    study, args = parser.parse_args_into_dataclasses(args=argv)
    configure_threads(study.num_threads)
    learners = [name for name in LEARNERS if name in study.learners]
    # λ: once per learner (EP's pick for both EP learners), on permuted MNIST validation, first seed
    search = {learner: {f"{lam:g}": run(study, args, "permuted_mnist", learner, study.seeds[0], lam)["validation"]
                        for lam in study.lambdas} for learner in ("backprop", "ep")}
    picked = {learner: float(max(grid, key=lambda lam: grid[lam]["average_accuracy"]))
              for learner, grid in search.items()}
    method_kwargs = {"plain": lambda learner: {},
                     "ewc": lambda learner: {"ewc_lambda": picked[LEARNERS[learner][0]]},
                     "replay": lambda learner: {"replay": study.replay_per_task}}
    runs = {key: {learner: {m: [] for m in METHODS} for learner in learners} for key in SEQUENCES}
    # the main twins first, then the others, whole seeds at a time (an interrupted study has whole seeds)
    for phase in (["backprop", "ep"], ["ep_positive_0.5"], ["backprop_sdmep", "ep_sdmep"]):
        for seed in study.seeds:
            for learner in (name for name in phase if name in learners):
                for key in SEQUENCES:
                    for m in METHODS:
                        result = run(study, args, key, learner, seed, **method_kwargs[m](learner))
                        if result is not None:
                            runs[key][learner][m].append(result)
    summary = summarize(study, runs)
    seconds = sum(json.loads(p.read_text())["seconds"] for p in Path(study.work_dir).glob("*.json"))
    info = {"command": command_line(), "cpu": cpu_model(), "threads": study.num_threads, "seconds": round(seconds, 1),
            "study": dataclasses.asdict(study), "ewc_lambda": picked, "ewc_search_validation": search,
            "training": {"learning_rate": args.learning_rate, "batch_size": args.per_device_train_batch_size,
                         "epochs_per_task": args.num_train_epochs, "ep_beta": args.ep_beta,
                         "ep_nudging": args.ep_nudging, "ep_settle_steps": args.ep_settle_steps,
                         "optimizer": getattr(args.optim, "value", str(args.optim))},
            "learners": {name: dict(overrides, method=method) for name, (method, overrides) in LEARNERS.items()}}
    matrices = {key: {learner: {m: [r["test"]["matrix"] for r in seeds] for m, seeds in by_method.items()}
                      for learner, by_method in by_learner.items()} for key, by_learner in runs.items()}
    record("continual", {"info": info, "summary": summary, "test_matrices": matrices})
    print(f"EWC λ picked: {picked}")
    for group in (["backprop", "ep", "ep_positive_0.5"], ["backprop_sdmep", "ep_sdmep"]):
        print(table(summary, group))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
