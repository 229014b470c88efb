#!/usr/bin/env python
"""Image classification, written the way transformers'
``examples/pytorch/image-classification/run_image_classification.py`` is (HfArgumentParser, an ``imagefolder``
dataset, the model's image processor in a ``set_transform``, a collate function, Trainer with an accuracy metric),
trimmed to the offline path and without torchvision augmentation. The one change from the stock script:
``Trainer`` / ``TrainingArguments`` are mep-hf's ``EPTrainer`` / ``EPTrainingArguments`` (the import below).

    python run_image_classification.py --model_name_or_path MODEL_DIR --train_dir images/ --output_dir out \\
        --remove_unused_columns False --do_train --do_eval
"""

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import transformers
from datasets import load_dataset
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, set_seed

from mep_hf import EPTrainer as Trainer, EPTrainingArguments as TrainingArguments  # the swap

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    train_dir: Optional[str] = field(default=None, metadata={"help": "A folder of class sub-folders."})
    train_val_split: Optional[float] = field(default=0.25)
    image_column_name: str = field(default="image")
    label_column_name: str = field(default="label")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Checkpoint to start from."})
    cache_dir: Optional[str] = field(default=None)
    ignore_mismatched_sizes: bool = field(default=False)


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    dataset = load_dataset("imagefolder", data_dir=data_args.train_dir, cache_dir=model_args.cache_dir)
    split = dataset["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
    dataset["train"], dataset["validation"] = split["train"], split["test"]
    labels = dataset["train"].features[data_args.label_column_name].names
    label2id = {label: str(i) for i, label in enumerate(labels)}
    id2label = {str(i): label for i, label in enumerate(labels)}

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, num_labels=len(labels), label2id=label2id, id2label=id2label,
        finetuning_task="image-classification",
    )
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes
    )
    image_processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)

    def transforms(example_batch):
        images = [image.convert("RGB") for image in example_batch[data_args.image_column_name]]
        example_batch["pixel_values"] = list(image_processor(images, return_tensors="pt")["pixel_values"])
        return example_batch

    dataset["train"].set_transform(transforms)
    dataset["validation"].set_transform(transforms)

    def compute_metrics(p):
        return {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=image_processor,
        data_collator=collate_fn,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
