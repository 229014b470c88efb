#!/usr/bin/env python
"""Translation, written the way transformers' ``examples/pytorch/translation/run_translation.py`` is
(HfArgumentParser, json files of ``{"translation": {src: ..., tgt: ...}}`` through ``load_dataset``, an optional
source prefix for T5, ``datasets.map`` tokenization with ``text_target``, ``DataCollatorForSeq2Seq``, evaluation with
``predict_with_generate``), trimmed to the offline path (an exact-match metric instead of sacrebleu). The one change
from the stock script: ``Seq2SeqTrainer`` / ``Seq2SeqTrainingArguments`` are mep-hf's ``EPSeq2SeqTrainer`` /
``EPSeq2SeqTrainingArguments`` (the import below).

    python run_translation.py --model_name_or_path MODEL_DIR --source_lang en --target_lang xx \\
        --train_file train.json --validation_file dev.json --source_prefix "translate: " \\
        --output_dir out --do_train --do_eval --predict_with_generate
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
    source_lang: str = field(metadata={"help": "Source language key in the translation dicts."})
    target_lang: str = field(metadata={"help": "Target language key in the translation dicts."})
    train_file: Optional[str] = field(default=None, metadata={"help": "A json lines file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "A json lines file."})
    source_prefix: Optional[str] = field(default=None, metadata={"help": "Put before every source text (T5)."})
    max_source_length: int = field(default=128)
    max_target_length: int = field(default=128)
    num_beams: Optional[int] = field(default=None, metadata={"help": "Beams for evaluation's generate()."})
    ignore_pad_token_for_loss: bool = field(default=True)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
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
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, config=config)
    if model.config.decoder_start_token_id is None:
        raise ValueError("Make sure that `config.decoder_start_token_id` is correctly defined")
    prefix = data_args.source_prefix or ""

    def preprocess_function(examples):
        inputs = [prefix + pair[data_args.source_lang] for pair in examples["translation"]]
        targets = [pair[data_args.target_lang] for pair in examples["translation"]]
        model_inputs = tokenizer(inputs, max_length=data_args.max_source_length, truncation=True)
        labels = tokenizer(text_target=targets, max_length=data_args.max_target_length, truncation=True)
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(preprocess_function, batched=True, remove_columns=["translation"])

    label_pad_token_id = -100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id
    data_collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=label_pad_token_id)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_preds = [t.strip() for t in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        decoded_labels = [t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        exact = np.mean([p == label for p, label in zip(decoded_preds, decoded_labels)])
        gen_len = np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds])
        return {"exact_match": float(exact), "gen_len": float(gen_len)}

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
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    if training_args.do_eval:
        max_length = training_args.generation_max_length or data_args.max_target_length
        num_beams = data_args.num_beams or training_args.generation_num_beams
        metrics = trainer.evaluate(max_length=max_length, num_beams=num_beams, metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
