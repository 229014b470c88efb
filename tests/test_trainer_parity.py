"""EPTrainer makes the update Trainer makes: same model, data and arguments, EP's gradient in place of backprop's.

Every case trains the same float64 model twice, once with ``Trainer`` (backprop) and once with ``EPTrainer`` (small
β, centered nudging, settled), plain SGD without clipping, and compares the parameter updates:
``‖Δ_EP − Δ_backprop‖ / ‖Δ_backprop‖ ≤ 1e-4`` (measured: about 1e-8 to 1e-7). The data are padded rows of uneven
length, so a loss that ignored Trainer's ``num_items_in_batch`` normalization, its label smoother, a user's
``compute_loss_func`` or its accumulation scaling would be off by percents (the negative controls show it is).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mep_hf import EPTrainer, EPTrainingArguments
from tests.parity import MODELS, padded_lm_data, relative_difference, train_update
from tests.conftest import toy_images

BOUND = 1e-4
ROOT = Path(__file__).resolve().parents[1]


def parity(tmp_path, model_name: str, dataset, trainer_kwargs=None, **overrides) -> tuple[float, list, list]:
    ep, ep_log = train_update("ep", MODELS[model_name](), dataset, tmp_path / "ep", trainer_kwargs, **overrides)
    bp, bp_log = train_update("backprop", MODELS[model_name](), dataset, tmp_path / "bp", trainer_kwargs, **overrides)
    difference = relative_difference(ep, bp)
    print(f"{model_name} {overrides}: relative update difference EP vs Trainer {difference:.3g}")
    return difference, ep_log, bp_log


def losses(log: list[dict]) -> list[float]:
    return [h["loss"] for h in log if "loss" in h]


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("model_name", ["char_lm", "gpt2"])
def test_padded_causal_lm_update_and_logged_loss_equal_trainers(tmp_path, model_name, memory):
    """One step on a padded batch of uneven rows: Trainer normalizes by the batch's token count. Both memory modes."""
    difference, ep_log, bp_log = parity(tmp_path, model_name, padded_lm_data(4), max_steps=1, ep_memory=memory)
    assert difference <= BOUND
    assert losses(ep_log) == pytest.approx(losses(bp_log), rel=1e-6)


@pytest.mark.parametrize("model_name", ["char_lm", "gpt2"])
def test_gradient_accumulation_with_uneven_tokens_and_a_short_last_window(tmp_path, model_name):
    """10 rows of 2–12 tokens, batches of 2, accumulation 2: windows of 2, 2 and 1 batches. Trainer divides each
    window's summed token loss by the window's token count; EP must nudge with that same loss."""
    data = padded_lm_data(10, seed=1)
    difference, ep_log, bp_log = parity(
        tmp_path, model_name, data, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    assert len(losses(bp_log)) == 3, "expected three optimizer steps, the last over a one-batch window"
    assert difference <= BOUND
    assert losses(ep_log) == pytest.approx(losses(bp_log), rel=1e-6)


def test_gradient_accumulation_of_a_batch_mean_loss_is_divided_by_the_window(tmp_path):
    """The MLP's loss is a batch mean (``accepts_loss_kwargs = False``): Trainer divides it by the window."""
    difference, *_ = parity(
        tmp_path, "mlp", toy_images(40), per_device_train_batch_size=8, gradient_accumulation_steps=2
    )
    assert difference <= BOUND


@pytest.mark.parametrize("model_name, data", [("mlp", lambda: toy_images(32)), ("gpt2", lambda: padded_lm_data(8))])
def test_label_smoothing(tmp_path, model_name, data):
    difference, *_ = parity(tmp_path, model_name, data(), label_smoothing_factor=0.2, max_steps=2)
    assert difference <= BOUND


def margin_loss(outputs, labels, num_items_in_batch=None):
    """A user's loss: cross-entropy plus a logit penalty, each summed and divided by Trainer's item count."""
    logits = outputs["logits"]
    if logits.dim() == 3:  # causal LM: position t predicts token t + 1
        logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    keep = labels != -100
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    return (ce + 0.05 * logits[keep].pow(2).sum()) / count


@pytest.mark.parametrize("model_name, data", [("mlp", lambda: toy_images(32)), ("char_lm", lambda: padded_lm_data(8))])
def test_custom_compute_loss_func(tmp_path, model_name, data):
    difference, ep_log, bp_log = parity(
        tmp_path, model_name, data(), trainer_kwargs={"compute_loss_func": margin_loss},
        max_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=2,
    )
    assert difference <= BOUND
    assert losses(ep_log) == pytest.approx(losses(bp_log), rel=1e-6)


def test_bf16_autocast_update_is_close_to_trainers(tmp_path):
    """bf16 autocast on the CPU, float32 weights: both methods compute the blocks in bf16, so the bound is bf16's
    (measured: 1.5e-3), not float64's."""
    data = padded_lm_data(4)
    updates = {}
    for method in ("ep", "backprop"):
        model = MODELS["char_lm"]().float()
        updates[method], _ = train_update(method, model, data, tmp_path / method, bf16=True, max_steps=1, ep_beta=0.05)
    difference = relative_difference(updates["ep"], updates["backprop"])
    print(f"bf16 autocast: relative update difference EP vs Trainer {difference:.3g}")
    assert difference <= 1e-2


def test_fp16_loss_scale_is_divided_out(tmp_path):
    """fp16 training multiplies the loss by the GradScaler's scale before backward. accelerate runs neither fp16
    autocast nor a scaler on the CPU, so the scaler is installed by hand (float32 model, scale 2**12, two steps):
    EP's update must equal Trainer's, which unscales before the optimizer step."""

    def scaled(trainer):
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    data = padded_lm_data(8)
    updates = {}
    for method in ("ep", "backprop"):
        model = MODELS["char_lm"]().float()
        updates[method], _ = train_update(method, model, data, tmp_path / method, setup=scaled, max_steps=2,
                                          ep_beta=0.01)
    difference = relative_difference(updates["ep"], updates["backprop"])
    print(f"fp16 loss scale 2**12, float32: relative update difference EP vs Trainer {difference:.3g}")
    assert difference <= 1e-3


def test_positive_nudging_at_large_beta_fails_the_bound(tmp_path):
    """Negative control: the comparison detects a biased gradient (one-sided nudging, β = 0.5)."""
    difference, *_ = parity(tmp_path, "char_lm", padded_lm_data(4), max_steps=1, ep_nudging="positive", ep_beta=0.5)
    assert difference > 10 * BOUND


def test_negative_control_the_models_own_mean_loss_is_not_trainers_loss(tmp_path):
    """What EP nudged with before: the model's per-batch token mean, blind to Trainer's window token count.
    Under accumulation with uneven rows it is percents away from Trainer's update, so the tests above can fail."""

    class OwnLossEPTrainer(EPTrainer):
        def _trainer_loss(self, model, stack, inputs, num_items_in_batch):
            steps = self.current_gradient_accumulation_steps
            return lambda s: stack.output(s, labels=inputs["labels"])["loss"] / steps

    data = padded_lm_data(10, seed=1)
    kwargs = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    bp, _ = train_update("backprop", MODELS["char_lm"](), data, tmp_path / "bp", **kwargs)
    ep, _ = train_update("ep", MODELS["char_lm"](), data, tmp_path / "ep", ep_trainer=OwnLossEPTrainer, **kwargs)
    difference = relative_difference(ep, bp)
    print(f"model's own mean loss under accumulation: relative difference {difference:.3g}")
    assert difference > 100 * BOUND


def test_unsupported_trainer_features_are_refused_at_init(tmp_path):
    model = MODELS["mlp"]()
    cases = {
        "use_liger_kernel": dict(use_liger_kernel=True),
        # transformers 5.24's name for it (the old one still works, with a FutureWarning)
        "gradient_checkpointing": dict(activation_checkpointing=True) if "activation_checkpointing" in
        EPTrainingArguments.__dataclass_fields__ else dict(gradient_checkpointing=True),
        "lomo": dict(optim="lomo"),
    }
    for name, flags in cases.items():
        args = EPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **flags)
        with pytest.raises(ValueError, match=f"EPTrainer cannot (honour|use).*{name}"):
            EPTrainer(model=model, args=args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_with_uneven_tokens_per_rank(tmp_path):
    """2 gloo processes, each rank's batches with a different token count; Trainer all-reduces the window's token
    count and scales the loss by the world size (``average_tokens_across_devices``). EP nudges with that loss."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "scripts" / "parity_ddp.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ep, bp = load_file(tmp_path / "ep_update.safetensors"), load_file(tmp_path / "backprop_update.safetensors")
    difference = relative_difference(ep, bp)
    print(f"DDP, 2 ranks, uneven tokens: relative update difference EP vs Trainer {difference:.3g}")
    assert difference <= BOUND
    tokens = dict(re.findall(r"tokens_rank(\d)=(\d+)", proc.stdout))  # the ranks' lines may interleave
    assert len(tokens) == 2 and len(set(tokens.values())) == 2, f"the ranks should see different token counts: {tokens}"
