#!/usr/bin/env python
"""Extractive question answering, written the way transformers' ``examples/pytorch/question-answering/run_qa.py``
is (HfArgumentParser, SQuAD-format json files through ``load_dataset``, question/context pairs tokenized with
``truncation="only_second"``, a stride and offset mappings, answer character spans mapped to start/end token
positions, Trainer with ``AutoModelForQuestionAnswering``), trimmed to the offline path: the validation features
keep their positions too, and the metric is the exact match of the predicted token span (the stock script
post-processes the logits into text spans for the SQuAD metric). The one change from the stock script: ``Trainer`` /
``TrainingArguments`` are mep-hf's ``EPTrainer`` / ``EPTrainingArguments`` (the import below).

    python run_qa.py --model_name_or_path MODEL_DIR --train_file train.json --validation_file dev.json \\
        --output_dir out --do_train --do_eval
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
    AutoModelForQuestionAnswering,
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
    train_file: Optional[str] = field(default=None, metadata={"help": "A SQuAD-format json lines file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "A SQuAD-format json lines file."})
    max_seq_length: int = field(default=384)
    doc_stride: int = field(default=128, metadata={"help": "Overlap of the chunks a long context is split into."})


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    data_files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        data_files["validation"] = data_args.validation_file
    raw_datasets = load_dataset("json", data_files=data_files, cache_dir=model_args.cache_dir)

    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    model = AutoModelForQuestionAnswering.from_pretrained(model_args.model_name_or_path, config=config)
    pad_on_right = tokenizer.padding_side == "right"
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def prepare_features(examples):
        questions = [q.lstrip() for q in examples["question"]]
        tokenized = tokenizer(
            questions if pad_on_right else examples["context"],
            examples["context"] if pad_on_right else questions,
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_seq_length,
            stride=data_args.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        sample_mapping = tokenized.pop("overflow_to_sample_mapping")
        offset_mapping = tokenized.pop("offset_mapping")
        tokenized["start_positions"], tokenized["end_positions"] = [], []
        for i, offsets in enumerate(offset_mapping):
            input_ids = tokenized["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = tokenized.sequence_ids(i)
            answers = examples["answers"][sample_mapping[i]]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_id = 1 if pad_on_right else 0
            token_start = sequence_ids.index(context_id)
            token_end = len(input_ids) - 1 - sequence_ids[::-1].index(context_id)
            if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
                tokenized["start_positions"].append(cls_index)  # the answer is outside this chunk
                tokenized["end_positions"].append(cls_index)
                continue
            while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                token_start += 1
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            tokenized["start_positions"].append(token_start - 1)
            tokenized["end_positions"].append(token_end + 1)
        return tokenized

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(prepare_features, batched=True, remove_columns=raw_datasets["train"].column_names)

    def compute_metrics(p: EvalPrediction):
        start_logits, end_logits = p.predictions
        start_positions, end_positions = p.label_ids
        hits = (start_logits.argmax(-1) == start_positions) & (end_logits.argmax(-1) == end_positions)
        return {"exact_match": float(np.mean(hits))}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=raw_datasets["train"] if training_args.do_train else None,
        eval_dataset=raw_datasets["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
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
