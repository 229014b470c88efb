"""Shared pieces of the Trainer-parity tests: tiny float64 models, padded variable-length data, and one training
run by ``Trainer`` (backprop) or ``EPTrainer`` (EP) with identical arguments, returning the parameter update.

Imported by ``tests/test_trainer_parity.py`` and by ``tests/scripts/parity_ddp.py`` (under torchrun).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from mep_hf import EPTrainer, EPTrainingArguments
from mep_hf.models import EPCharTransformerConfig, EPCharTransformerForCausalLM
from tests.conftest import toy_model

VOCAB, LENGTH = 24, 12
# Small β, centered nudging, settled: EP's gradient equals backprop's to about 1e-7 in float64 (O(β²) bias).
EP_EXACT = dict(ep_beta=1e-4, ep_nudging="centered", ep_settle_steps=3)


def padded_lm_data(n: int = 10, seed: int = 0, min_len: int = 2, max_len: int = LENGTH) -> Dataset:
    """Right-padded token rows of random lengths in [min_len, max_len]: padding masked out, labels -100 there."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        k = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (k,), generator=g).tolist()
        pad = LENGTH - k
        rows["input_ids"].append(ids + [0] * pad)
        rows["attention_mask"].append([1] * k + [0] * pad)
        rows["labels"].append(ids + [-100] * pad)
    return Dataset.from_dict(rows).with_format("torch")


def char_lm(seed: int = 0) -> EPCharTransformerForCausalLM:
    torch.manual_seed(seed)
    config = EPCharTransformerConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=LENGTH
    )
    return EPCharTransformerForCausalLM(config).double()


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=LENGTH,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # backprop must be deterministic too
    return GPT2LMHeadModel(config).double()


def mlp(seed: int = 0):
    return toy_model(seed).double()


MODELS = {"char_lm": char_lm, "gpt2": gpt2, "mlp": mlp}


def train_update(method: str, model, dataset, out, trainer_kwargs=None, ep_trainer=EPTrainer, setup=None,
                 backprop_trainer=Trainer, ep_args=EPTrainingArguments, backprop_args=TrainingArguments, **overrides):
    """Train ``model`` by ``method`` ("ep": ``ep_trainer`` with ``ep_args``, or "backprop": ``backprop_trainer``
    with ``backprop_args``; by default ``EPTrainer`` and ``Trainer``) with plain SGD and no clipping; return the
    parameter update (after − before, by name) and the Trainer's log history. ``ep_*`` overrides reach the EP run
    only; ``setup(trainer)`` runs before ``train()``. ``model`` may be a ``model_init`` function instead of a model
    (the update is then from the parameters it returns)."""
    common = dict(
        output_dir=str(out),
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        num_train_epochs=1,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    common.update({k: v for k, v in overrides.items() if not k.startswith("ep_")})
    if method == "ep":
        ep_settings = {k: v for k, v in overrides.items() if k.startswith("ep_")}
        trainer_cls, args = ep_trainer, ep_args(**{**EP_EXACT, **ep_settings, **common})
    else:
        trainer_cls, args = backprop_trainer, backprop_args(**common)
    model_init = None if isinstance(model, torch.nn.Module) else model
    source = {"model": model} if model_init is None else {"model_init": model_init}
    before = {k: v.detach().clone() for k, v in (model if model_init is None else model_init()).named_parameters()}
    trainer = trainer_cls(**source, args=args, train_dataset=dataset, **(trainer_kwargs or {}))
    if setup is not None:
        setup(trainer)
    trainer.train()
    update = {k: (v.detach() - before[k]) for k, v in trainer.model.named_parameters()}
    return update, trainer.state.log_history


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors together."""
    assert a.keys() == b.keys()
    diff = torch.sqrt(sum((a[k] - b[k]).double().pow(2).sum() for k in a))
    size = torch.sqrt(sum(b[k].double().pow(2).sum() for k in b))
    assert size > 0, "the reference update is zero: the comparison would be empty"
    return float(diff / size)
