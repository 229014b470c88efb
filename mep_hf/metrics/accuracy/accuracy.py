"""Accuracy: the fraction of predicted class ids equal to the references.

An ``evaluate`` metric module shipped inside mep_hf and loaded by path (``mep_hf.metrics.load("accuracy")``), so it
works offline; online, ``evaluate.load("accuracy")`` gives the Hub's equivalent.
"""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the references.",
            citation="",
            inputs_description="predictions: predicted class ids; references: true class ids.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.size == 0:
            raise ValueError("accuracy of an empty set of predictions")
        return {"accuracy": float((predictions == references).mean())}
