"""Train a classic-EP (Hopfield energy) P-MLP or P-CNN on MNIST with EPTrainer, then test it.

    python examples/train_hopfield_mnist.py --model pmlp --output_dir runs/zoo/mnist_hopfield_pmlp
    python examples/train_hopfield_mnist.py --model pcnn --output_dir runs/zoo/mnist_hopfield_pcnn

Every ``TrainingArguments`` / ``EPTrainingArguments`` flag works (``--help``). Writes the model (``save_model``), the
Trainer state (``save_state``), ``{train,eval,test,all}_results.json`` and ``run_info.json`` (command, training
seconds, machine, torch, date) to ``--output_dir``; resumes from its last checkpoint with
``--resume_from_checkpoint <dir>`` (``save_strategy="epoch"`` by default).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser, set_seed

from mep_hf import (
    EPHopfieldConvNetConfig,
    EPHopfieldConvNetForImageClassification,
    EPHopfieldMLPConfig,
    EPHopfieldMLPForImageClassification,
    EPTrainer,
    EPTrainingArguments,
)
from mep_hf.data import load_mnist
from run_utils import write_run_info


@dataclass
class ModelArguments:
    model: str = field(default="pmlp", metadata={"help": "'pmlp' (P-MLP) or 'pcnn' (P-CNN)."})
    hidden_sizes: list[int] = field(default_factory=lambda: [512], metadata={"help": "P-MLP hidden widths."})
    channels: list[int] = field(default_factory=lambda: [32, 64], metadata={"help": "P-CNN conv channels."})
    kernel_size: int = field(default=5, metadata={"help": "P-CNN kernel size."})
    loss: str = field(default="mse", metadata={"help": "'mse' (output states) or 'cross_entropy' (read-out)."})
    free_steps: int = field(default=30, metadata={"help": "T_free of the model (inference and training)."})
    nudged_steps: int = field(default=10, metadata={"help": "T_nudged of the model (training)."})
    initializer_gain: float = field(default=1.0, metadata={"help": "Initial weights uniform in ±gain/√fan_in."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (quick runs)."})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads."})


DEFAULTS = dict(
    output_dir="runs/mnist_hopfield",
    num_train_epochs=10,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=1000,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    ep_beta=0.5,
    ep_nudging="centered",
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=100,
    report_to="none",
    seed=0,
)


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def build_model(m: ModelArguments):
    common = dict(loss=m.loss, free_steps=m.free_steps, nudged_steps=m.nudged_steps,
                  initializer_gain=m.initializer_gain, num_labels=10,
                  id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    if m.model == "pmlp":
        return EPHopfieldMLPForImageClassification(EPHopfieldMLPConfig(input_size=784, hidden_sizes=m.hidden_sizes,
                                                                       **common))
    if m.model == "pcnn":
        return EPHopfieldConvNetForImageClassification(EPHopfieldConvNetConfig(
            num_channels=1, image_size=28, channels=m.channels, kernel_size=m.kernel_size, **common))
    raise ValueError(f"--model must be 'pmlp' or 'pcnn', got {m.model!r}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, EPTrainingArguments))
    parser.set_defaults(**DEFAULTS)
    model_args, args = parser.parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(model_args.threads)
    set_seed(args.seed)

    mnist = load_mnist()
    if model_args.max_train_samples is not None:
        mnist["train"] = mnist["train"].select(range(model_args.max_train_samples))
    model = build_model(model_args)
    trainer = EPTrainer(model=model, args=args, train_dataset=mnist["train"], eval_dataset=mnist["validation"],
                        compute_metrics=accuracy)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    seconds = time.time() - start
    trainer.save_model()
    trainer.save_state()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    valid = trainer.evaluate()
    trainer.save_metrics("eval", valid)
    test = trainer.evaluate(mnist["test"], metric_key_prefix="test")
    trainer.save_metrics("test", test)
    if args.should_save:
        write_run_info(args.output_dir, seconds, dataset="mnist", model=model_args.model,
                       num_parameters=model.num_parameters())
    print(f"test accuracy {test['test_accuracy']:.4f}; validation {valid['eval_accuracy']:.4f}; {seconds:.0f} s training")
    return test


if __name__ == "__main__":
    main(sys.argv[1:])
