"""EP under FSDP2 (``mep_hf.shard_for_ep``): 2 gloo processes, each on half the batch with its parameters and
gradients sharded, give one process's EP gradient on the whole batch (float32, ≤ 1e-5 relative per tensor), for an
EP MLP and a stock Llama in both memory modes, holding half the parameter + gradient memory each and never more than
a few units gathered. A sharded checkpoint (``save_sharded_checkpoint``) resumes exactly, and a changed shard is
refused by its manifest. Negative controls: one process's gradient on its half alone is not the whole batch's; a
model that skips loading the checkpoint steps elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import mep_hf
from mep_hf.adapters.check import mismatches
from tests.adapter_models import tiny_batch, tiny_model
from tests.conftest import toy_images, toy_model
from tests.test_distributed import _env, _free_port

ROOT = Path(__file__).resolve().parents[1]
# A fixed β: the scale-free one is resolved from each rank's own half, so it would differ from the whole batch's.
SETTINGS = dict(ep_beta=1e-3, ep_nudging="centered", ep_settle_steps=2)


def mlp_case():
    data = toy_images(12)[:]
    return toy_model(), {"pixel_values": data["pixel_values"], "labels": data["labels"]}


def llama_case(seed: int = 0, **overrides):
    """Unpadded, so each rank's token mean is half the batch's (with uneven tokens per rank, nudge with a loss
    normalized by the global token count, as EPTrainer's ``average_tokens_across_devices`` does)."""
    model = tiny_model("llama", "causal-lm", seed, **overrides)
    batch = tiny_batch("llama", "causal-lm", model, batch=4, dtype=torch.float32)
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    batch["labels"] = batch["input_ids"].clone()
    return model, batch


CASES = {"mlp": (mlp_case, "fast"), "llama": (llama_case, "fast"), "llama_low": (llama_case, "low"),
         "llama_tied": (lambda: llama_case(tie_word_embeddings=True), "fast")}  # embeddings + head: one unit


def ep_grads(model, batch, memory):
    mep_hf.ep_backward(model, batch, **SETTINGS, ep_memory=memory)
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def test_fsdp2_equals_one_process_on_the_doubled_batch(tmp_path):
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port())]
    cmd = [sys.executable, *launcher, str(ROOT / "tests" / "scripts" / "ep_backward_fsdp.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    reports = [json.loads((tmp_path / f"report_rank{r}.json").read_text()) for r in (0, 1)]
    for name, (case, memory) in CASES.items():
        model, batch = case()
        whole = ep_grads(model, batch, memory)
        names = [n for n, _ in model.named_parameters()]
        for rank in (0, 1):
            saved = load_file(tmp_path / f"grads_rank{rank}.safetensors")
            assert mismatches(model, [saved[f"{name}.{n}"] for n in names], whole, rel_max=1e-5) == [], name
            report = reports[rank][name]
            assert report["grads_sharded"], "p.grad should stay a DTensor shard for the optimizer"
            assert report["local_numel"] <= 0.52 * report["full_numel"], report
            # Gathered per unit (one at a time here; FSDP's prefetch may add the next), never the model; nothing
            # left gathered after the step.
            assert report["units"] >= 3 and 1 <= report["most_gathered"] <= 2, report
            assert report["idle_gathered"] == 0, report
        half = {k: v.chunk(2)[0] for k, v in batch.items()}
        assert mismatches(model, ep_grads(model, half, memory), whole, rel_max=1e-5), "one half alone, yet equal?"
    for report in reports:  # sharded checkpoint: resumed into another init, the next step is the same step
        resume = report["resume"]
        assert resume["step"] == 1 and resume["files"] == 3, resume  # two shards + DCP's metadata, in the manifest
        assert resume["max_diff"] == 0.0 and resume["fresh_max_diff"] > 1e-3, resume
        assert "__0_0.distcp changed since it was saved" in resume["changed_shard"], resume
    refusal = reports[0]["root_refusal"]
    assert refusal is not None and "the FSDP2 root holds parameters" in refusal and "shard_for_ep" in refusal
    # Trainer's fsdp arguments on CPU: accelerate drops the plugin (MULTI_CPU) and would wrap in DDP; refused.
    trainer = reports[0]["trainer_fsdp"]
    assert "accelerate enables FSDP only on accelerators (here: MULTI_CPU)" in trainer and "shard_for_ep" in trainer

