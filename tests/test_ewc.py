"""EWCCallback: the penalty gradient, the Fisher estimate (against direct per-example gradients, and EP's against
backprop's), and checkpoints with EWC state (exact resume; missing or corrupt state refused by name)."""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import toy_args, toy_images, toy_model
from transformers import Trainer

from mep_hf import CheckpointIntegrityError, EPTrainer, EWCCallback
from mep_hf.callbacks import EWC_STATE_NAME, estimate_fisher


def _consolidated(model, ewc_lambda=0.7, seed=1) -> EWCCallback:
    """A callback with a random positive Fisher and an anchor near the model's parameters."""
    g = torch.Generator().manual_seed(seed)
    ewc = EWCCallback(ewc_lambda)
    for name, p in model.named_parameters():
        ewc.fisher[name] = torch.rand(p.shape, generator=g, dtype=p.dtype)
        ewc.anchor[name] = p.detach() + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype)
    return ewc


def test_penalty_gradient_equals_autograd_of_the_penalty():
    model = toy_model().double()
    ewc = _consolidated(model)
    params = dict(model.named_parameters())
    expected = torch.autograd.grad(ewc.penalty(model), list(params.values()))
    model.zero_grad(set_to_none=True)
    ewc.add_penalty_grad(model)
    for (name, p), ref in zip(params.items(), expected):
        assert torch.allclose(p.grad, ref, rtol=1e-12, atol=1e-15), name
    # Negative control: the same check catches a gradient that misses the ½ of the penalty's derivative.
    wrong = 2 * ewc.ewc_lambda * ewc.fisher["blocks.0.linear.weight"] * (
        params["blocks.0.linear.weight"] - ewc.anchor["blocks.0.linear.weight"])
    assert not torch.allclose(wrong, expected[list(params).index("blocks.0.linear.weight")], rtol=1e-12, atol=1e-15)


def test_penalty_gradient_adds_to_the_data_gradient_before_the_optimizer_step(tmp_path):
    """One SGD step of a Trainer with the callback moves θ by −lr·(g_data + λF(θ−θ*))."""
    data = toy_images(16)  # one batch: its order does not change the mean loss
    model = toy_model()
    ewc = _consolidated(model)
    args = toy_args(tmp_path, max_steps=1, optim="sgd", learning_rate=0.1, lr_scheduler_type="constant",
                    max_grad_norm=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = toy_model()
    torch.autograd.backward(probe(**data[:]).loss)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[ewc]).train()
    for (name, p), q in zip(model.named_parameters(), probe.parameters()):
        step = q.grad + ewc.ewc_lambda * ewc.fisher[name] * (before[name] - ewc.anchor[name])
        assert torch.allclose(p.detach(), before[name] - 0.1 * step, atol=1e-6), name


def _per_example_fisher(model, batch, labels):
    """The definition, by loop: mean over examples of the squared per-example gradient of the mean loss."""
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(labels)):
        logits = model(pixel_values=batch[i:i + 1]).logits
        grads = torch.autograd.grad(F.cross_entropy(logits, labels[i:i + 1]), list(model.parameters()))
        for (n, _), g in zip(model.named_parameters(), grads):
            fisher[n] += g ** 2
    return {n: f / len(labels) for n, f in fisher.items()}


@pytest.mark.parametrize("estimator", ["empirical", "true"])
def test_fisher_equals_a_direct_computation(tmp_path, estimator):
    data = toy_images(24)
    model = toy_model().double()
    trainer = Trainer(model=model, args=toy_args(tmp_path, per_device_eval_batch_size=64))
    fisher = estimate_fisher(trainer, data, estimator=estimator, seed=3)
    rows = data[:]
    x, labels = rows["pixel_values"].double().reshape(24, -1), rows["labels"]
    if estimator == "true":  # one draw per example from the model's softmax, the same generator and order
        with torch.no_grad():
            probs = torch.softmax(model(pixel_values=x).logits, -1)
        labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(1)
        assert not torch.equal(labels, rows["labels"])  # the sampled labels are not the data's
    expected = _per_example_fisher(model, x, labels)
    for name, ref in expected.items():
        assert torch.allclose(fisher[name], ref, rtol=1e-10, atol=1e-14), name


def test_ep_fisher_equals_backprop_fisher_in_float64(tmp_path):
    data = toy_images(16)
    model = toy_model().double()
    args = toy_args(tmp_path, ep_beta=1e-4, ep_nudging="centered", ep_settle_steps=3)
    trainer = EPTrainer(model=model, args=args)
    ep = estimate_fisher(trainer, data, gradients="ep", seed=5)
    bp = estimate_fisher(trainer, data, gradients="backprop", seed=5)
    for name in bp:
        rel = float((ep[name] - bp[name]).norm() / bp[name].norm())
        assert rel <= 1e-4, (name, rel)
    # Negative control: one-sided nudging at a large β is visibly biased, and the bound sees it.
    trainer.args.ep_nudging, trainer.args.ep_beta = "positive", 0.5
    biased = estimate_fisher(trainer, data, gradients="ep", seed=5)
    assert max(float((biased[n] - bp[n]).norm() / bp[n].norm()) for n in bp) > 1e-4


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ewc_lambda"):
        EWCCallback(-1.0)
    trainer = Trainer(model=toy_model(), args=toy_args(tmp_path))
    with pytest.raises(ValueError, match="estimator"):
        estimate_fisher(trainer, toy_images(4), estimator="exact")
    with pytest.raises(TypeError, match="EPTrainer"):
        estimate_fisher(trainer, toy_images(4), gradients="ep")


def _second_task(tmp_path, name, trainer_class, ewc, max_steps=6, resume=None):
    """Train 'task 2' (another toy dataset) with ``ewc``, checkpointing every 3 steps."""
    model = toy_model(seed=7)
    args = toy_args(tmp_path / name, max_steps=max_steps, save_strategy="steps", save_steps=3,
                    ep_nudging="centered", ep_beta=0.05)
    trainer = trainer_class(model=model, args=args, train_dataset=toy_images(160, seed=2), callbacks=[ewc])
    if resume is not None and trainer_class is Trainer:
        ewc.load_checkpoint_state(resume, model)  # a plain Trainer has no checkpoint hook: the callback's own path
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _task_one_ewc(tmp_path, trainer_class) -> EWCCallback:
    """Train 'task 1' and consolidate: the EWC state the second task starts with."""
    model = toy_model(seed=7)
    trainer = trainer_class(model=model, args=toy_args(tmp_path / "task1", max_steps=5), train_dataset=toy_images())
    trainer.train()
    ewc = EWCCallback(50.0)
    ewc.consolidate(trainer, toy_images(32), seed=0)
    return ewc


@pytest.mark.parametrize("trainer_class", [EPTrainer, Trainer])
def test_resume_with_ewc_state_is_exact(tmp_path, trainer_class):
    ewc = _task_one_ewc(tmp_path, trainer_class)
    state = {k: v.clone() for k, v in ewc.fisher.items()}
    full = _second_task(tmp_path, "full", trainer_class, ewc)
    checkpoint = os.path.join(tmp_path, "full", "out", "checkpoint-3")
    assert os.path.isfile(os.path.join(checkpoint, EWC_STATE_NAME))
    fresh = EWCCallback(50.0)  # no state: everything must come from the checkpoint
    resumed = _second_task(tmp_path, "resumed", trainer_class, fresh, resume=checkpoint)
    assert fresh.num_tasks == 1 and all(torch.equal(fresh.fisher[k], v) for k, v in state.items())
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    # The penalty mattered: without the EWC state the same resume ends elsewhere.
    bare = _second_task(tmp_path, "bare", trainer_class, EWCCallback(0.0), resume=None)
    assert any(not torch.equal(p, q) for p, q in zip(full.model.parameters(), bare.model.parameters()))


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_ewc_state_is_refused(tmp_path, damage):
    ewc = _task_one_ewc(tmp_path, EPTrainer)
    _second_task(tmp_path, "full", EPTrainer, ewc, max_steps=3)
    checkpoint = os.path.join(tmp_path, "full", "out", "checkpoint-3")
    path = os.path.join(checkpoint, EWC_STATE_NAME)
    if damage == "missing":
        os.remove(path)
    else:
        with open(path, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointIntegrityError, match=EWC_STATE_NAME):
        _second_task(tmp_path, "resumed", EPTrainer, EWCCallback(50.0), resume=checkpoint)
    # A plain Trainer's resume goes through the callback's own load path, which refuses a missing file too.
    if damage == "missing":
        with pytest.raises(CheckpointIntegrityError, match=EWC_STATE_NAME):
            EWCCallback(50.0).load_checkpoint_state(checkpoint)


def test_resume_with_another_lambda_is_refused(tmp_path):
    ewc = _consolidated(toy_model(), ewc_lambda=3.0)
    ewc.save_checkpoint_state(str(tmp_path))
    with pytest.raises(CheckpointIntegrityError, match="ewc_lambda=3"):
        EWCCallback(2.0).load_checkpoint_state(str(tmp_path))
    same = EWCCallback(3.0)
    same.load_checkpoint_state(str(tmp_path), toy_model())
    assert all(torch.equal(same.anchor[k], v) for k, v in ewc.anchor.items())
