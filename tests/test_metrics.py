"""The project's metrics are ``evaluate`` modules loaded by path (offline): they compute what they claim."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from mep_hf import EPTrainer, metrics
from mep_hf.models import EPCharTransformerConfig, EPCharTransformerForCausalLM
from tests.conftest import toy_args


def test_accuracy_module_matches_numpy():
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    result = metrics.load("accuracy").compute(predictions=predictions, references=references)
    assert result == {"accuracy": float((predictions == references).mean())}


def test_bits_per_character_equals_the_trainers_eval_loss_in_bits(tmp_path):
    """Through Trainer.evaluate with preprocess_logits_for_metrics: bits/char = eval_loss / ln 2 (equal-length rows,
    so the batch means and the token mean agree)."""
    torch.manual_seed(0)
    config = EPCharTransformerConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=10)
    ids = torch.randint(0, 12, (24, 10))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}).with_format("torch")
    bpc = metrics.load("bits_per_character")

    def compute_metrics(eval_pred):
        log_probs = eval_pred.predictions
        return bpc.compute(predictions=log_probs[~np.isnan(log_probs)])

    trainer = EPTrainer(model=EPCharTransformerForCausalLM(config), args=toy_args(tmp_path, per_device_eval_batch_size=8),
                        eval_dataset=data, compute_metrics=compute_metrics,
                        preprocess_logits_for_metrics=metrics.next_token_log_probs)
    result = trainer.evaluate()
    assert result["eval_bits_per_character"] == pytest.approx(result["eval_loss"] / math.log(2), rel=1e-5)


def test_unknown_metric_is_refused_with_the_shipped_list():
    with pytest.raises(ValueError, match="mep_hf ships"):
        metrics.load("f1")
