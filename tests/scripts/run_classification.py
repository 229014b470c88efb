#!/usr/bin/env python
"""Text classification, written the way transformers' ``examples/pytorch/text-classification/run_classification.py``
is (HfArgumentParser, csv/json files through ``load_dataset``, ``datasets.map`` tokenization, dynamic padding,
Trainer with an accuracy metric), trimmed to the offline single-label path. The one change from the stock script:
``Trainer`` / ``TrainingArguments`` are mep-hf's ``EPTrainer`` / ``EPTrainingArguments`` (the import below).

    python run_classification.py --model_name_or_path MODEL_DIR --train_file train.csv --validation_file dev.csv \\
        --text_column_names sentence --label_column_name label --output_dir out --do_train --do_eval
"""

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import transformers
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    set_seed,
)

from mep_hf import EPTrainer as Trainer, EPTrainingArguments as TrainingArguments  # the swap

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Checkpoint to start from."})
    tokenizer_name: Optional[str] = field(default=None)
    cache_dir: Optional[str] = field(default=None)


@dataclass
class DataTrainingArguments:
    train_file: Optional[str] = field(default=None, metadata={"help": "A csv or json file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "A csv or json file."})
    text_column_names: Optional[str] = field(default="sentence", metadata={"help": "Comma-separated columns."})
    label_column_name: Optional[str] = field(default="label")
    max_seq_length: int = field(default=128)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    data_files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        data_files["validation"] = data_args.validation_file
    extension = data_args.train_file.split(".")[-1]
    raw_datasets = load_dataset(extension, data_files=data_files, cache_dir=model_args.cache_dir)
    text_columns = data_args.text_column_names.split(",")
    if data_args.label_column_name != "label":
        raw_datasets = raw_datasets.rename_column(data_args.label_column_name, "label")
    label_list = sorted(raw_datasets["train"].unique("label"))
    num_labels = len(label_list)

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=num_labels, finetuning_task="text-classification")
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True
    )
    label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = label_to_id
    model.config.id2label = {i: str(v) for v, i in label_to_id.items()}

    def preprocess_function(examples):
        if len(text_columns) > 1:
            texts = [" ".join(parts) for parts in zip(*(examples[c] for c in text_columns))]
        else:
            texts = examples[text_columns[0]]
        result = tokenizer(texts, max_length=data_args.max_seq_length, truncation=True)
        result["label"] = [label_to_id[label] for label in examples["label"]]
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(preprocess_function, batched=True, remove_columns=raw_datasets["train"].column_names)

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return {"accuracy": float((np.argmax(preds, axis=1) == p.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=raw_datasets["train"] if training_args.do_train else None,
        eval_dataset=raw_datasets["validation"] if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
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
