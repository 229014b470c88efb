"""``mep_hf.ep_backward``, EP's ``loss.backward()``: in float64 with centered nudging and a small β its gradient is
autograd's (relative error ≤ 1e-4 per tensor, :func:`mep_hf.adapters.check.mismatches`) for an EP MLP, a stock Llama
and a LoRA-wrapped BERT; under 2-process gloo DDP it is one process's on the doubled batch. The negative controls
show the comparisons can fail: a large one-sided β (EP's O(β) bias), and a contrast that bypasses DDP's forward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import mep_hf
from mep_hf.adapters.check import mismatches
from tests.adapter_models import tiny_batch, tiny_model
from tests.conftest import toy_images, toy_model
from tests.test_adapters import lora_model
from tests.test_distributed import _env, _free_port

ROOT = Path(__file__).resolve().parents[1]
EXACT = dict(ep_beta=1e-5, ep_nudging="centered", ep_settle_steps=3)
BIASED = dict(ep_beta=0.5, ep_nudging="positive", ep_settle_steps=3)  # the negative control: O(β) bias


def mlp_case():
    data = toy_images(12)[:]
    return toy_model().double(), {"pixel_values": data["pixel_values"].double(), "labels": data["labels"]}


def llama_case():
    model = tiny_model("llama", "causal-lm").double()
    return model, tiny_batch("llama", "causal-lm", model)


def lora_bert_case():
    model = lora_model("bert", "sequence-classification")
    return model, tiny_batch("bert", "sequence-classification", model)


def grads(model, fill=None):
    """The trainable parameters' ``.grad`` (then cleared), zeros where there is none."""
    out = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return out


def autograd_grads(model, batch, loss_fn=None):
    model.zero_grad(set_to_none=True)
    output = model(**batch)
    (output.loss if loss_fn is None else loss_fn(output, batch)).backward()
    return output, grads(model)


@pytest.mark.parametrize("case", [mlp_case, llama_case, lora_bert_case], ids=["ep_mlp", "stock_llama", "lora_bert"])
def test_gradient_equals_autograd_in_float64(case):
    model, batch = case()
    model.eval()  # dropout off on both sides (BERT): the same function
    loss = mep_hf.ep_backward(model, batch, **EXACT)  # a stock or peft model is adapted on the first call
    ep = grads(model)
    reference, bp = autograd_grads(model, batch)
    # The loss is carried in the contrast's dtype, at least float32 (a BERT stack's inputs are token ids).
    assert not loss.requires_grad and float(loss) == pytest.approx(float(reference.loss.detach()), rel=1e-6)
    assert mismatches(model, ep, bp) == []
    mep_hf.ep_backward(model, batch, **BIASED)
    assert mismatches(model, grads(model), bp), "a large one-sided β should miss backprop's gradient"


def test_custom_loss_and_accumulation_into_grad():
    """``loss_fn(output, batch)`` nudges with a loss of the model output; ``.grad`` accumulates like backward's."""
    model, batch = mlp_case()

    def smoothed(output, batch):
        return F.cross_entropy(output.logits, batch["labels"], label_smoothing=0.2)

    _, bp = autograd_grads(model, batch, smoothed)
    held = [torch.ones_like(p) for p in model.parameters()]
    for p, h in zip(model.parameters(), held):
        p.grad = h.clone()
    mep_hf.ep_backward(model, batch, smoothed, **EXACT)
    ep = [g - h for g, h in zip(grads(model), held)]
    assert mismatches(model, ep, bp) == []
    _, plain = autograd_grads(model, batch)
    assert mismatches(model, ep, plain), "the smoothed loss's gradient should differ from the model loss's"


@pytest.mark.parametrize("settings, error, says", [
    (dict(ep_beta=-1.0), ValueError, "ep_beta must be a finite number > 0"),
    (dict(ep_settle_steps=0), ValueError, "ep_settle_steps must be an integer >= 1"),
    (dict(ep_free_steps=3), ValueError, "ep_free_steps=3 is not read by the layered energy"),
    (dict(beta=0.1), TypeError, "unknown EP setting(s) ['beta']"),
])
def test_settings_are_checked_as_ep_training_arguments_checks_them(settings, error, says):
    model, batch = mlp_case()
    with pytest.raises(error) as caught:
        mep_hf.ep_backward(model, batch, **settings)
    assert says in str(caught.value)
    assert all(p.grad is None for p in model.parameters())


def test_a_model_ep_cannot_split_is_refused():
    with pytest.raises(TypeError, match="cannot be split into EP blocks"):
        mep_hf.ep_backward(torch.nn.Linear(3, 2), {"input": torch.zeros(1, 3)})


def test_two_gloo_processes_equal_one_process_on_the_doubled_batch(tmp_path):
    """``tests/scripts/ep_backward_ddp.py``: each rank's ``ep_backward`` on its half of the batch, through DDP,
    against this process's on the whole batch; and the same call on the unwrapped module, which skips DDP's hooks."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port())]
    cmd = [sys.executable, *launcher, str(ROOT / "tests" / "scripts" / "ep_backward_ddp.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    model, batch = mlp_case()
    mep_hf.ep_backward(model, batch, **EXACT)
    whole = grads(model)
    names = [n for n, _ in model.named_parameters()]
    for rank in (0, 1):
        saved = load_file(tmp_path / f"grads_rank{rank}.safetensors")
        assert mismatches(model, [saved[f"ddp.{n}"] for n in names], whole, rel_max=1e-10) == []
        assert mismatches(model, [saved[f"bypass.{n}"] for n in names], whole), "no all-reduce, yet equal?"
