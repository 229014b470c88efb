#!/usr/bin/env python
"""Summarization, written the way transformers' ``examples/pytorch/summarization/run_summarization.py`` is
(HfArgumentParser, csv or json files with a text and a summary column through ``load_dataset``, ``datasets.map``
tokenization with ``text_target`` and pad labels replaced by -100, ``DataCollatorForSeq2Seq``, evaluation with
``predict_with_generate``), trimmed to the offline path (a unigram-overlap F1 instead of ROUGE). The one change from
the stock script: ``Seq2SeqTrainer`` / ``Seq2SeqTrainingArguments`` are mep-hf's ``EPSeq2SeqTrainer`` /
``EPSeq2SeqTrainingArguments`` (the import below).

    python run_summarization.py --model_name_or_path MODEL_DIR --train_file train.csv --validation_file dev.csv \\
        --text_column text --summary_column summary --output_dir out --do_train --do_eval --predict_with_generate
"""

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import transformers
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    set_seed,
)

from mep_hf import EPSeq2SeqTrainer as Seq2SeqTrainer, EPSeq2SeqTrainingArguments as Seq2SeqTrainingArguments  # the swap

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
    text_column: Optional[str] = field(default="text", metadata={"help": "The column of full texts."})
    summary_column: Optional[str] = field(default="summary", metadata={"help": "The column of summaries."})
    source_prefix: Optional[str] = field(default=None, metadata={"help": "Put before every text (T5)."})
    max_source_length: int = field(default=1024)
    max_target_length: int = field(default=128)
    val_max_target_length: Optional[int] = field(default=None)
    pad_to_max_length: bool = field(default=False)
    num_beams: Optional[int] = field(default=None)


def unigram_f1(prediction: str, reference: str) -> float:
    common = sum((Counter(prediction.split()) & Counter(reference.split())).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction.split()), common / len(reference.split())
    return 2 * precision * recall / (precision + recall)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    data_files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        data_files["validation"] = data_args.validation_file
    extension = data_args.train_file.split(".")[-1]
    raw_datasets = load_dataset(extension, data_files=data_files, cache_dir=model_args.cache_dir)

    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, config=config)
    if model.config.decoder_start_token_id is None:
        raise ValueError("Make sure that `config.decoder_start_token_id` is correctly defined")
    prefix = data_args.source_prefix or ""
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess_function(examples):
        pairs = [(t, s) for t, s in zip(examples[data_args.text_column], examples[data_args.summary_column]) if t and s]
        model_inputs = tokenizer([prefix + t for t, _ in pairs], max_length=data_args.max_source_length,
                                 padding=padding, truncation=True)
        labels = tokenizer(text_target=[s for _, s in pairs], max_length=data_args.max_target_length,
                           padding=padding, truncation=True)
        if padding == "max_length":
            labels["input_ids"] = [[(i if i != tokenizer.pad_token_id else -100) for i in row] for row in labels["input_ids"]]
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(preprocess_function, batched=True, remove_columns=raw_datasets["train"].column_names)

    data_collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        summaries = tokenizer.batch_decode(preds, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = [unigram_f1(p.strip(), r.strip()) for p, r in zip(summaries, references)]
        return {"unigram_f1": round(float(np.mean(scores)) * 100, 4),
                "gen_len": float(np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds]))}

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=raw_datasets["train"] if training_args.do_train else None,
        eval_dataset=raw_datasets["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(raw_datasets["train"])
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        max_length = training_args.generation_max_length or data_args.val_max_target_length or data_args.max_target_length
        num_beams = data_args.num_beams or training_args.generation_num_beams
        metrics = trainer.evaluate(max_length=max_length, num_beams=num_beams, metric_key_prefix="eval")
        metrics["eval_samples"] = len(raw_datasets["validation"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
