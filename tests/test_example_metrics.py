"""Every example's compute_metrics goes through an `evaluate` module (mep_hf.metrics, loaded by path, offline)."""

import math

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

@pytest.mark.parametrize("name", ["train_image_classification", "finetune_minilm"])
def test_accuracy_examples(load_example, name):
    example = load_example(name)
    assert isinstance(example.ACCURACY, evaluate.EvaluationModule)
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert example.accuracy((logits, np.array([1, 0, 0]))) == {"accuracy": 2 / 3}


def test_char_lm_bits_per_char(load_example):
    example = load_example("train_char_lm")
    assert isinstance(example.BITS_PER_CHARACTER, evaluate.EvaluationModule)
    log_probs = np.array([[math.log(0.5), math.log(0.25), np.nan]])  # NaN: a -100 position
    result = example.bits_per_char(EvalPrediction(predictions=log_probs, label_ids=None))
    assert result == pytest.approx({"bits_per_char": 1.5})
