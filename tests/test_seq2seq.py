"""``EPSeq2SeqTrainer`` + ``EPSeq2SeqTrainingArguments`` (mep_hf/seq2seq.py): Seq2SeqTrainer by EP.

* Parity: its update equals ``Seq2SeqTrainer``'s backprop update under the same arguments (float64, centered, small
  β, accumulation over two micro-batches with padded targets; label smoothing), T5 and BART; one-sided large β
  misses the bound.
* It trains a tiny T5 and BART (``ep_*`` logged) and evaluates with ``predict_with_generate`` (the stock
  ``generate()``).
* The wrong class order, or arguments without the generation settings, are refused at ``__init__``.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from mep_hf import EPSeq2SeqTrainer, EPSeq2SeqTrainingArguments, EPTrainer, EPTrainingArguments
from tests.parity import relative_difference, train_update
from tests.test_structural_adapters import SEQ2SEQ_CASES, build

BOUND = 1e-4
NO_DROPOUT = {"t5": dict(dropout_rate=0.0), "bart": dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)}
MODELS = {"t5": SEQ2SEQ_CASES[0], "bart": SEQ2SEQ_CASES[2]}


def seq2seq_model(kind: str, dtype=torch.float64):
    model_type, cls, overrides = MODELS[kind]
    return build(model_type, cls, {**overrides, **NO_DROPOUT[kind]}).to(dtype)


def seq2seq_data(n: int = 8, seed: int = 0, source: int = 7, target: int = 5) -> Dataset:
    """Source rows with padding, target rows of random lengths (-100 after the end): the target is the source's first
    tokens reversed, something to learn."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 48, (n, source), generator=g)
    mask = torch.ones_like(ids)
    labels = ids[:, :target].flip(1).clone()
    for i in range(n):
        k = int(torch.randint(2, target + 1, (1,), generator=g))
        labels[i, k:] = -100
        mask[i, source - 1 - i % 2:] = 0
    return Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "labels": labels}).with_format("torch")


def with_decoder_inputs(data: Dataset, model) -> Dataset:
    """The labels shifted right as ``DataCollatorForSeq2Seq(model=...)`` adds them: Trainer's label smoother pops
    the labels before calling the model, which then needs its decoder inputs."""
    shifted = model.prepare_decoder_input_ids_from_labels(labels=torch.stack(list(data["labels"])))
    return data.add_column("decoder_input_ids", shifted.tolist()).with_format("torch")


def update(method: str, kind: str, tmp_path, **overrides):
    model = seq2seq_model(kind)
    update, _ = train_update(method, model, with_decoder_inputs(seq2seq_data(), model), tmp_path / method,
                             ep_trainer=EPSeq2SeqTrainer, backprop_trainer=Seq2SeqTrainer,
                             ep_args=EPSeq2SeqTrainingArguments, backprop_args=Seq2SeqTrainingArguments,
                             per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2, **overrides)
    return update


@pytest.mark.parametrize("kind, arguments", [("t5", {}), ("bart", {}), ("t5", dict(label_smoothing_factor=0.1))],
                         ids=["T5", "BART", "T5 label smoothing"])
def test_ep_update_equals_seq2seq_trainers_backprop_update(tmp_path, kind, arguments):
    ep = update("ep", kind, tmp_path, ep_beta=1e-5, **arguments)
    difference = relative_difference(ep, update("backprop", kind, tmp_path, **arguments))
    print(f"EPSeq2SeqTrainer vs Seq2SeqTrainer ({kind}, {arguments}): relative update difference {difference:.3g}")
    assert difference <= BOUND


def test_negative_control_one_sided_large_beta_misses_the_bound(tmp_path):
    ep = update("ep", "t5", tmp_path, ep_beta=0.05, ep_nudging="positive", ep_settle_steps=1)
    difference = relative_difference(ep, update("backprop", "t5", tmp_path))
    print(f"one-sided beta=0.05 vs Seq2SeqTrainer (t5): relative update difference {difference:.3g}")
    assert difference > BOUND


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_trains_by_ep_and_evaluates_with_generate(tmp_path, kind):
    model = seq2seq_model(kind, torch.float32)
    seen = {}

    def compute_metrics(prediction):
        seen["predictions"] = prediction.predictions
        return {"gen_len": float((prediction.predictions != 0).sum(-1).mean())}

    args = EPSeq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=8, learning_rate=3e-3, per_device_train_batch_size=8, logging_steps=4,
        eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        predict_with_generate=True, generation_max_length=6, generation_num_beams=1,
    )
    data = seq2seq_data(16, seed=2)
    trainer = EPSeq2SeqTrainer(model=model, args=args, train_dataset=data, eval_dataset=seq2seq_data(4, seed=3),
                               compute_metrics=compute_metrics)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert all("ep_energy" in h and "ep_beta" in h for h in trainer.state.log_history if "loss" in h)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_gen_len"} <= metrics.keys()
    predictions = seen["predictions"]  # generated ids (logits would be 3-D), padded past generation_max_length
    assert predictions.ndim == 2 and predictions.shape[0] == 4
    assert (predictions[:, 6:] == model.config.pad_token_id).all() and (predictions[:, 1:6] != -100).all()


class LossSeq2SeqTrainer(Seq2SeqTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class WrongOrder(LossSeq2SeqTrainer, EPTrainer):
    pass


def test_wrong_order_and_arguments_are_refused(tmp_path):
    args = EPSeq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match=r"would train by backprop.*mep_hf\.EPSeq2SeqTrainer"):
        WrongOrder(model=seq2seq_model("t5"), args=args)
    with pytest.raises(TypeError, match="EPSeq2SeqTrainer needs EPSeq2SeqTrainingArguments, got EPTrainingArguments"):
        EPSeq2SeqTrainer(model=seq2seq_model("t5"), args=EPTrainingArguments(output_dir=str(tmp_path), use_cpu=True))
