"""Bits per character of a character-level language model: ``−mean(log₂ p(true next character))``.

``predictions`` are the natural-log probabilities the model gave each true next character (positions whose label
is -100 left out); ``mep_hf.metrics.next_token_log_probs`` turns logits and labels into them (pass it to
``Trainer(preprocess_logits_for_metrics=...)``). An ``evaluate`` metric module loaded by path, offline.
"""

import math

import datasets
import evaluate
import numpy as np


class BitsPerCharacter(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean negative log2-probability of the true next character.",
            citation="",
            inputs_description="predictions: natural-log probability of each true next character.",
            features=datasets.Features({"predictions": datasets.Value("float64")}),
        )

    def _compute(self, predictions):
        log_probs = np.asarray(predictions, dtype=np.float64)
        if log_probs.size == 0:
            raise ValueError("bits per character of no characters")
        return {"bits_per_character": float(-log_probs.mean() / math.log(2))}
