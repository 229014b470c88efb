"""Continual learning with EP and EWC: train one MLP on a sequence of tasks, print the accuracy on every task after
each task.

    python examples/continual_learning.py --tasks permuted_mnist --num_tasks 5 --ewc_lambda 100
    python examples/continual_learning.py --tasks split_mnist --scenario task --ewc_lambda 1000
    python examples/continual_learning.py --method backprop --ewc_lambda 100     # the same with the plain Trainer
    python examples/continual_learning.py --tasks rotated_mnist --max_angle 90 --replay_per_task 100

Each task gets its own ``EPTrainer`` (``Trainer`` with ``--method backprop``) on the same model, with a fresh
optimizer and schedule; one :class:`~mep_hf.EWCCallback` is shared by them and consolidated after each task
(diagonal Fisher from the method's own per-example gradients on ``--fisher_samples`` training rows).
``--replay_per_task`` keeps that many rows of each finished task in a :class:`~mep_hf.data.ReplayBuffer` and mixes
them into every later task's training set; ``--mep_optimizer`` builds that preset for either method. Every
``TrainingArguments`` / ``EPTrainingArguments`` flag works; each task writes under ``--output_dir/task-<t>``.
Writes ``--output_dir/continual_results.json``: the accuracy matrices (row: after task t, column: task j) on the
validation and test splits, average accuracy and average forgetting.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser, Trainer, set_seed

from mep_hf import EPMLPConfig, EPMLPForImageClassification, EPTrainer, EPTrainingArguments, EWCCallback, metrics
from mep_hf import configure_threads
from mep_hf.data import ReplayBuffer, TaskSequence, permuted_mnist, rotated_mnist, split_fashion_mnist, split_mnist
from mep_hf.optim import build_optimizer

METHODS = ("ep", "backprop")
TASKS = ("permuted_mnist", "split_mnist", "split_fashion_mnist", "rotated_mnist")

DEFAULTS = dict(
    output_dir="runs/continual",
    num_train_epochs=1,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=1000,
    learning_rate=1e-3,
    ep_beta=0.05,
    ep_nudging="centered",
    ep_settle_steps=1,
    eval_strategy="no",
    save_strategy="no",
    logging_steps=100,
    report_to="none",
    disable_tqdm=True,
    seed=0,
)


@dataclass
class ContinualArguments:
    tasks: str = field(default="permuted_mnist", metadata={"help": "Task sequence.", "choices": list(TASKS)})
    num_tasks: int = field(default=5, metadata={"help": "permuted_mnist, rotated_mnist: number of tasks."})
    max_angle: float = field(default=90.0, metadata={"help": "rotated_mnist: the last task's angle (degrees)."})
    permutation_seed: int = field(default=0, metadata={"help": "permuted_mnist: seed of the permutations."})
    scenario: str = field(default="class", metadata={"help": "split_*: 'class' or 'task' incremental.",
                                                     "choices": ["class", "task"]})
    method: str = field(default="ep", metadata={"help": "Gradients: 'ep' (EPTrainer) or 'backprop' (Trainer).",
                                                "choices": list(METHODS)})
    ewc_lambda: float = field(default=0.0, metadata={"help": "EWC strength λ (0: plain fine-tuning)."})
    replay_per_task: int = field(default=0, metadata={"help": "Replayed rows kept per finished task (0: none)."})
    fisher_samples: int = field(default=500, metadata={"help": "Training rows per task for the Fisher estimate."})
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256], metadata={"help": "MLP hidden widths."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Training rows per task (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validation/test rows per task."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: mep_hf.runtime)."})


ACCURACY = metrics.load("accuracy")


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return ACCURACY.compute(predictions=np.argmax(logits, axis=-1), references=labels)


def load_tasks(cl: ContinualArguments) -> TaskSequence:
    if cl.tasks == "permuted_mnist":
        return permuted_mnist(cl.num_tasks, seed=cl.permutation_seed)
    if cl.tasks == "rotated_mnist":
        return rotated_mnist(cl.num_tasks, max_angle=cl.max_angle)
    return (split_fashion_mnist if cl.tasks == "split_fashion_mnist" else split_mnist)(cl.scenario)


def _head(dataset, n: int | None):
    return dataset if n is None else dataset.select(range(min(n, len(dataset))))


def summarize(matrix: list[list[float]]) -> dict[str, float]:
    """Average accuracy: mean final accuracy over the tasks. Average forgetting: mean over all but the last task
    of (best accuracy on it after any earlier task, from the one it was learnt on) minus its final accuracy."""
    final, last = matrix[-1], len(matrix) - 1
    forgetting = [max(matrix[t][j] for t in range(j, last)) - final[j] for j in range(last)]
    return {"average_accuracy": float(np.mean(final)),
            "average_forgetting": float(np.mean(forgetting)) if forgetting else 0.0}


def run_sequence(tasks: TaskSequence, cl: ContinualArguments, args: EPTrainingArguments,
                 splits: tuple[str, ...] = ("validation", "test")) -> dict:
    """Train ``tasks`` in order; after each, evaluate every task on ``splits``. Returns the accuracy matrices."""
    set_seed(args.seed)
    model = EPMLPForImageClassification(EPMLPConfig(input_size=784, hidden_sizes=cl.hidden_sizes, num_labels=10))
    ewc = EWCCallback(cl.ewc_lambda)
    replay = ReplayBuffer(cl.replay_per_task, seed=args.seed)
    trainer_class = EPTrainer if cl.method == "ep" else Trainer
    matrices = {split: [] for split in splits}
    for t, task in enumerate(tasks):
        task_args = dataclasses.replace(args, output_dir=str(Path(args.output_dir) / f"task-{t}"))
        train = _head(task["train"], cl.max_train_samples)
        # --mep_optimizer (e.g. sdmep: Dion with error feedback) for either method, fresh per task
        optimizer = (build_optimizer(args.mep_optimizer, model, lr=args.learning_rate, weight_decay=args.weight_decay)
                     if args.mep_optimizer else None)
        trainer = trainer_class(model=model, args=task_args, train_dataset=replay.mix(train),
                                compute_metrics=accuracy, callbacks=[ewc], optimizers=(optimizer, None),
                                **tasks.trainer_kwargs())
        trainer.train()
        replay.add(train)
        if cl.ewc_lambda > 0 and t < len(tasks) - 1:
            ewc.consolidate(trainer, task["train"], num_samples=cl.fisher_samples, seed=args.seed + t)
        for split in splits:
            row = [trainer.evaluate(_head(other[split], cl.max_eval_samples), metric_key_prefix=split)
                   [f"{split}_accuracy"] for other in tasks]
            matrices[split].append(row)
        print(f"after task {t}: test accuracy " + " ".join(f"{a:.4f}" for a in matrices[splits[-1]][-1]), flush=True)
    return {split: {"matrix": m, **summarize(m)} for split, m in matrices.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ContinualArguments, EPTrainingArguments))
    parser.set_defaults(**DEFAULTS)
    cl, args = parser.parse_args_into_dataclasses(args=argv)
    configure_threads(cl.num_threads)
    results = run_sequence(load_tasks(cl), cl, args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "continual_results.json").write_text(json.dumps({"arguments": dataclasses.asdict(cl), **results}, indent=1))
    test = results["test"]
    print(f"{cl.tasks} {cl.method} λ={cl.ewc_lambda}: average accuracy {test['average_accuracy']:.4f}, "
          f"average forgetting {test['average_forgetting']:.4f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
