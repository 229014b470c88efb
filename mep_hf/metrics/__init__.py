"""The project's metrics as ``evaluate`` modules shipped inside the package, loaded by path so they work offline.

    accuracy = mep_hf.metrics.load("accuracy")          # online, evaluate.load("accuracy") works as well
    accuracy.compute(predictions=[...], references=[...])

``next_token_log_probs`` is the ``preprocess_logits_for_metrics`` of a causal LM whose metric is
``bits_per_character``: it keeps only the log-probability of each true next token, not the whole logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["METRICS", "load", "next_token_log_probs"]

METRICS = ("accuracy", "bits_per_character")
_HERE = Path(__file__).resolve().parent


def load(name: str, **kwargs):
    """``evaluate.load`` of the shipped module ``name`` (one of :data:`METRICS`), by path: no Hub access."""
    import evaluate

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; mep_hf ships {METRICS} (other ids: evaluate.load, online)")
    return evaluate.load(str(_HERE / name / f"{name}.py"), **kwargs)


def next_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token (position t predicts ``labels[t + 1]``), NaN where the label is -100."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == -100, float("nan"))
