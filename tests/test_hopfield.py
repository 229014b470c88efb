"""The Hopfield energy family (classic EP): float64 checks of EP's gradient against implicit differentiation and
BPTT, the closed-form kernels, and training through EPTrainer.

The reference (``tests/hopfield_reference.py``) writes Φ with plain torch ops and differentiates it by autograd; the
engine under test settles with closed forms (``mep_hf.kernels.linear_maps``) and no autograd graph.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageClassification, Trainer, TrainingArguments

from mep_hf import (
    EPHopfieldConvNetConfig,
    EPHopfieldConvNetForImageClassification,
    EPHopfieldMLPConfig,
    EPHopfieldMLPForImageClassification,
    EPMLPConfig,
    EPMLPForImageClassification,
    EPTrainer,
    EPTrainingArguments,
    SettleConfig,
)
from mep_hf.energies import ENERGIES, get_energy, register_energy
from mep_hf.energies.hopfield import HopfieldSettings, dynamics_step, free_phase, loss_gradient
from mep_hf.kernels.linear_maps import ConvPoolLinearization, LinearMapLinearization
from tests.conftest import toy_args, toy_images
from tests.hopfield_reference import block_params, implicit_gradient, transition, zero_states
from tests.parity import relative_difference

COS_MIN, REL_MAX = 0.9999, 1e-3
HOPFIELD = get_energy("hopfield")


def pmlp(loss: str, seed: int = 0, **kw) -> EPHopfieldMLPForImageClassification:
    torch.manual_seed(seed)
    config = EPHopfieldMLPConfig(input_size=20, hidden_sizes=[16, 12], num_labels=5, loss=loss, **kw)
    return EPHopfieldMLPForImageClassification(config).double()


def pcnn(loss: str, pool: str = "max", seed: int = 0, **kw) -> EPHopfieldConvNetForImageClassification:
    torch.manual_seed(seed)
    config = EPHopfieldConvNetConfig(num_channels=2, image_size=8, channels=[4, 6], kernel_size=3, padding=1,
                                     pool=pool, num_labels=5, loss=loss, **kw)
    return EPHopfieldConvNetForImageClassification(config).double()


MODELS = {
    "pmlp-mse": lambda: pmlp("mse"),
    "pmlp-ce": lambda: pmlp("cross_entropy"),
    "pcnn-max-mse": lambda: pcnn("mse"),
    "pcnn-max-ce": lambda: pcnn("cross_entropy"),
    "pcnn-avg-mse": lambda: pcnn("mse", pool="avg"),
}


def batch(model, n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    features = model.config.input_size if hasattr(model.config, "input_size") else model.config.num_channels * 64
    return torch.rand(n, features, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


def ep_gradient(model, x, y, free_steps, nudged_steps, beta=1e-4, nudging="centered"):
    """EP's parameter gradient as EPTrainer computes it (free phase, nudged phases, contrast through forward)."""
    stack = model.ep_stack(pixel_values=x, labels=y)
    config = HopfieldSettings(free_steps=free_steps, nudged_steps=nudged_steps)
    free = HOPFIELD.free_phase(stack, config)
    phases = HOPFIELD.nudged_phases(stack, free, beta, nudging, config)
    contrast = HOPFIELD.contrast(free, phases, config, 1.0, None)
    grads = torch.autograd.grad(model(pixel_values=x, labels=y, ep_contrast=contrast), list(model.parameters()))
    return grads, HOPFIELD.diagnostics(contrast)


def compare(a, b):
    cos = [F.cosine_similarity(u.flatten(), v.flatten(), dim=0).item() for u, v in zip(a, b)]
    rel = [((u - v).norm() / v.norm()).item() for u, v in zip(a, b)]
    return min(cos), max(rel)


@pytest.mark.parametrize("name", list(MODELS))
def test_ep_gradient_equals_implicit_differentiation_at_the_free_fixed_point(name):
    """Centered β = 1e-4, both phases settled to a residual below 1e-12: EP's gradient is the gradient of the loss
    at the free fixed point (recurrent backprop on the reference Φ)."""
    model = MODELS[name]()
    x, y = batch(model)
    reference = implicit_gradient(model, model._pixels(x), y)
    ep, diag = ep_gradient(model, x, y, free_steps=300, nudged_steps=300)
    assert diag["ep_free_residual"] < 1e-12 and diag["ep_nudged_residual"] < 1e-12, diag
    cos, rel = compare(ep, reference)
    print(f"{name}: min cosine {cos:.12f}, max relative error {rel:.3g}")
    assert cos >= COS_MIN and rel <= REL_MAX


@pytest.mark.parametrize("name", ["pmlp-mse", "pcnn-max-mse"])
def test_negative_control_too_few_settling_steps_fail_the_bounds(name):
    """The same comparison with T_free = 10, T_nudged = 3 (unconverged phases) fails the bounds."""
    model = MODELS[name]()
    x, y = batch(model)
    reference = implicit_gradient(model, model._pixels(x), y)
    ep, diag = ep_gradient(model, x, y, free_steps=10, nudged_steps=3)
    cos, rel = compare(ep, reference)
    print(f"{name}, T_free=10, T_nudged=3: residuals {diag['ep_free_residual']:.3g} / "
          f"{diag['ep_nudged_residual']:.3g}, min cosine {cos:.6f}, max relative error {rel:.3g}")
    assert cos < COS_MIN or rel > REL_MAX


def test_one_sided_and_random_sign_nudging_are_first_order_biased():
    """Positive nudging's error halves with β; the random-sign phase with β < 0 has the opposite bias, so the mean
    of the two signs is far closer (the O(β) terms cancel). At β = −0.05 one unit per layer already crosses a kink of
    the hard sigmoid here, and the expansion in β no longer holds."""
    model = MODELS["pmlp-ce"]()
    x, y = batch(model)
    reference = implicit_gradient(model, model._pixels(x), y)

    def grads(beta):
        return ep_gradient(model, x, y, 300, 300, beta=beta, nudging="positive")[0]

    def error(g):
        return max(((u - v).norm() / v.norm()).item() for u, v in zip(g, reference))

    big, small, negative = grads(0.02), grads(0.01), grads(-0.01)
    mean = error([(a + b) / 2 for a, b in zip(small, negative)])
    print(f"one-sided: beta 0.02 {error(big):.3g}, 0.01 {error(small):.3g}, -0.01 {error(negative):.3g}, mean of ±0.01 "
          f"{mean:.3g}")
    assert 1.8 < error(big) / error(small) < 2.2
    assert mean < 0.01 * error(small)


def gdd_errors(model, T: int, K: int, beta: float = 1e-5, shift: int = 0) -> list[float]:
    """Per nudged step t < K, the largest relative difference between EP's updates and −B × BPTT's gradients at
    step ``T − t − shift`` (``shift = 0`` is the GDD pairing).

    EP: from the free state after T steps (the engine), centered in ±β, neural updates ``(s_{t+1} − s_t)/β`` and
    parameter updates ``(∂Φ/∂θ(s_{t+1}) − ∂Φ/∂θ(s_t))/β``. BPTT (reference dynamics, one parameter copy per step):
    gradients of the loss after T free steps from zero with respect to the pre-activations ``u_{T−t}`` and to the
    parameter copy used at step ``T−t``."""
    x, y = batch(model, n=4)
    x = model._pixels(x)
    B = x.shape[0]
    copies = [[(w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
               for w, b in block_params(model)] for _ in range(T)]
    states, pre = zero_states(model, x), []
    for t in range(T):
        u, states = transition(model, x, states, params=copies[t])
        pre.append(u)
    loss = model.ep_output(states[-1], labels=y).loss
    steps = [T - 1 - t - shift for t in range(K)]  # 0-based index of step T − t − shift
    wanted = [u for i in steps for u in pre[i]] + [p for i in steps for wb in copies[i] for p in wb]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)  # u_T of lower layers does not reach s_N(T)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads)]
    n_s, n_p = len(pre[0]), 2 * len(model.blocks)
    bptt = [list(grads[k * n_s:(k + 1) * n_s]) + list(grads[K * n_s + k * n_p: K * n_s + (k + 1) * n_p])
            for k in range(K)]

    stack = model.ep_stack(pixel_values=x, labels=y)
    with torch.no_grad():
        free = free_phase(stack, steps=T)
        force = loss_gradient(stack.loss, B)
        paths = {}
        for b in (beta, -beta):
            paths[b] = [free.states]
            for _ in range(K):
                paths[b].append(dynamics_step(stack, free.first_block, paths[b][-1], b, force))

    def dphi_dtheta(states):
        return [g for block, s_below, s in zip(model.blocks, [x, *states[:-1]], states)
                for _, g in block.ep_linearize(s_below).parameter_grads(s, 1.0)]

    def update(quantity, t):
        p1, p0, m1, m0 = (quantity(paths[b][i]) for b, i in ((beta, t + 1), (beta, t), (-beta, t + 1), (-beta, t)))
        return [((a - b) - (c - d)) / (2 * beta) for a, b, c, d in zip(p1, p0, m1, m0)]

    errors = []
    for t in range(K):
        with torch.no_grad():
            ep = update(lambda s: s, t) + update(dphi_dtheta, t)
        worst = 0.0
        for e, g in zip(ep, bptt[t]):
            scale = float((B * g).norm())
            worst = max(worst, float((e + B * g).norm()) / scale if scale > 0 else float(e.norm()))
        errors.append(worst)
    return errors


@pytest.mark.parametrize("name", ["pmlp-mse", "pmlp-ce", "pcnn-max-mse", "pcnn-max-ce"])
def test_gdd_ep_updates_equal_bptt_gradients_step_by_step(name):
    """GDD (Ernoult et al. 2019): in each of the first 12 nudged steps from the free fixed point, EP's neural and
    parameter updates equal BPTT's gradients of the same convergent RNN (float64, T = 120 free steps)."""
    errors = gdd_errors(MODELS[name](), T=120, K=12)
    print(f"{name}: worst relative difference per step " + " ".join(f"{e:.2g}" for e in errors))
    assert max(errors) < 1e-6


def test_gdd_negative_controls():
    """The comparison fails when the pairing is off by one step, and when the free phase has not converged
    (T = 6: EP starts away from the fixed point, so its updates are not BPTT's)."""
    shifted = gdd_errors(MODELS["pmlp-mse"](), T=120, K=6, shift=1)
    unsettled = gdd_errors(MODELS["pmlp-mse"](), T=6, K=4)
    print(f"shifted by one step: {max(shifted):.3g}; T_free = 6: {max(unsettled):.3g}")
    assert min(shifted[1:]) > 1e-2 and max(unsettled) > 1e-2


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
def test_closed_form_kernels_equal_autograd(pool):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).double()
    s = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    lin = ConvPoolLinearization(conv, pool, 2, s.detach())
    z = F.conv2d(s, conv.weight, conv.bias, padding=1)
    ref = {"max": lambda: F.max_pool2d(z, 2), "avg": lambda: F.avg_pool2d(z, 2), "none": lambda: z}[pool]()
    torch.testing.assert_close(lin.output, ref.detach())
    e = torch.randn_like(ref)
    grads = torch.autograd.grad(ref, [s, conv.weight, conv.bias], e)
    torch.testing.assert_close(lin.vjp(e), grads[0])
    pairs = lin.parameter_grads(e, 0.5)
    torch.testing.assert_close(pairs[0][1], 0.5 * grads[1])
    torch.testing.assert_close(pairs[1][1], 0.5 * grads[2])

    linear = torch.nn.Linear(3 * 36, 7).double()
    dense = LinearMapLinearization(linear, s.detach())
    out = linear(s.flatten(1))
    e = torch.randn_like(out)
    grads = torch.autograd.grad(out, [s, linear.weight, linear.bias], e)
    torch.testing.assert_close(dense.vjp(e), grads[0])
    torch.testing.assert_close([g for _, g in dense.parameter_grads(e, 1.0)], list(grads[1:]))


def test_settling_uses_no_autograd_graph():
    """The engine's phases run under no_grad with closed forms: no tensor of a phase carries a graph."""
    model = MODELS["pcnn-max-ce"]()
    x, y = batch(model)
    stack = model.ep_stack(pixel_values=x, labels=y)
    config = HopfieldSettings(free_steps=5, nudged_steps=3)
    free = HOPFIELD.free_phase(stack, config)
    phases = HOPFIELD.nudged_phases(stack, free, 0.1, "centered", config)
    assert all(s.grad_fn is None and not s.requires_grad for p in [free, *phases] for s in p.states)


def test_early_stop_on_the_residual():
    model = pmlp("mse", settle_tol=1e-6, free_steps=500)
    x, _ = batch(model)
    out = model(pixel_values=x, output_hidden_states=True)
    stack = model._stack(x, None)
    free = free_phase(stack, 500, 1e-6)
    assert 1 < free.steps < 500 and free.residual < 1e-6
    torch.testing.assert_close(out.hidden_states[-1], free.states[-1])


def test_forward_is_bptt_when_autograd_is_on():
    """``forward`` with autograd records the unrolled settling: its gradient is BPTT's, which tends to the implicit
    gradient once the free phase has converged."""
    model = pmlp("cross_entropy", free_steps=200)
    x, y = batch(model)
    bptt = torch.autograd.grad(model(pixel_values=x, labels=y).loss, list(model.parameters()))
    cos, rel = compare(bptt, implicit_gradient(model, x, y))
    assert cos > 1 - 1e-10 and rel < 1e-8


def test_configs_declare_the_family_and_auto_classes_load_them(tmp_path):
    for model in (pmlp("mse"), pcnn("cross_entropy")):
        assert type(model.config).ep_energy == "hopfield"
        model.save_pretrained(tmp_path / model.config.model_type)
        config = AutoConfig.from_pretrained(tmp_path / model.config.model_type)
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / model.config.model_type,
                                                                 dtype=torch.float64)
        assert type(loaded) is type(model) and config.free_steps == model.config.free_steps
        x, _ = batch(model)
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    assert set(ENERGIES) >= {"layered", "hopfield"}
    with pytest.raises(ValueError, match="already registered"):
        register_energy(HOPFIELD)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(free_steps=0), "free_steps must be an integer >= 1"),
        (dict(nudged_steps=2.5), "nudged_steps must be an integer >= 1"),
        (dict(settle_tol=-1.0), "settle_tol must be >= 0"),
        (dict(loss="hinge"), "unknown loss"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(Exception, match=message):
        EPHopfieldMLPConfig(**kwargs)


def test_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"ep_energy must be one of \('layered', 'hopfield'\)|ep_energy must be one"):
        toy_args(tmp_path, ep_energy="ising")
    with pytest.raises(ValueError, match="ep_free_steps must be an integer >= 1"):
        toy_args(tmp_path, ep_free_steps=0)
    with pytest.raises(ValueError, match="ep_nudged_steps must be an integer >= 1"):
        toy_args(tmp_path, ep_nudged_steps=True)
    with pytest.raises(ValueError, match="ep_nudging must be one of"):
        toy_args(tmp_path, ep_nudging="symmetric")


def _hopfield_toy(seed=0, **kw):
    torch.manual_seed(seed)
    config = dict(dict(input_size=64, hidden_sizes=[32], num_labels=4, free_steps=20, nudged_steps=8), **kw)
    return EPHopfieldMLPForImageClassification(EPHopfieldMLPConfig(**config))


def test_trainer_refuses_a_family_the_model_does_not_declare(tmp_path):
    with pytest.raises(ValueError, match="ep_energy='layered' but EPHopfieldMLPForImageClassification is a 'hopfield'"):
        EPTrainer(model=_hopfield_toy(), args=toy_args(tmp_path, ep_energy="layered"))
    with pytest.raises(ValueError, match="ep_energy='hopfield' but EPMLPForImageClassification is a 'layered'"):
        EPTrainer(model=EPMLPForImageClassification(EPMLPConfig(input_size=64, hidden_sizes=[8], num_labels=4)),
                  args=toy_args(tmp_path, ep_energy="hopfield"))
    with pytest.raises(ValueError, match="ep_free_steps=5 is not read by the layered energy"):
        EPTrainer(model=EPMLPForImageClassification(EPMLPConfig(input_size=64, hidden_sizes=[8], num_labels=4)),
                  args=toy_args(tmp_path, ep_free_steps=5))


@pytest.mark.parametrize("flag, value", [("ep_settle_steps", 5), ("ep_settle_mode", "gradient"),
                                         ("ep_settle_lr", 0.5), ("ep_memory", "low")])
def test_hopfield_refuses_the_layered_only_knobs_it_would_ignore(tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"{flag}={value!r} is not read by the hopfield energy"):
        EPTrainer(model=_hopfield_toy(), args=toy_args(tmp_path, **{flag: value}))
    EPTrainer(model=_hopfield_toy(), args=toy_args(tmp_path))  # the defaults pass


@pytest.mark.parametrize("nudging", ["centered", "random_sign"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_eptrainer_trains_a_pmlp_and_logs_settling_diagnostics(tmp_path, nudging, loss):
    dataset = toy_images(256)
    model = _hopfield_toy(loss=loss)
    args = toy_args(tmp_path, ep_nudging=nudging, ep_beta=0.5, learning_rate=3e-3, max_steps=48, logging_steps=16,
                    ep_nudged_steps=6)
    trainer = EPTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for h in logs:
        assert h["ep_free_steps"] == 20 and h["ep_settle_steps"] == 6
        assert 0 <= h["ep_free_residual"] < 1 and 0 <= h["ep_nudged_residual"] < 1 and math.isfinite(h["ep_energy"])
    assert logs[-1]["loss"] < 0.8 * logs[0]["loss"], [h["loss"] for h in logs]
    x, y = dataset[:]["pixel_values"], dataset[:]["labels"]
    with torch.no_grad():
        accuracy = (model(pixel_values=x).logits.argmax(-1) == y).float().mean().item()
    assert accuracy > 0.6, accuracy


def test_random_sign_draws_both_signs():
    from mep_hf.equilibrium import nudging_betas

    torch.manual_seed(0)
    signs = {nudging_betas(0.3, "random_sign")[0] for _ in range(40)}
    assert signs == {0.3, -0.3}


def _train_update(method, model, dataset, out, **overrides):
    common = dict(output_dir=str(out), optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0,
                  max_grad_norm=0.0, num_train_epochs=1, per_device_train_batch_size=4, logging_steps=1,
                  save_strategy="no", report_to="none", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True)
    common.update(overrides)
    if method == "ep":
        args = EPTrainingArguments(**common, ep_beta=1e-4, ep_nudging="centered", ep_nudged_steps=200)
        trainer = EPTrainer(model=model, args=args, train_dataset=dataset)
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=dataset)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    return {k: v.detach() - before[k] for k, v in trainer.model.named_parameters()}, trainer.state.log_history


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_eptrainer_update_equals_trainers_bptt_update(tmp_path, loss):
    """Float64, SGD, label smoothing on (Trainer's loss, not the model's): EPTrainer's update equals plain Trainer's
    backprop through the unrolled free phase (200 steps: converged), and the logged losses agree."""
    dataset = toy_images(12)
    extra = dict(label_smoothing_factor=0.1) if loss == "cross_entropy" else {}
    updates, logs = {}, {}
    for method in ("ep", "backprop"):
        model = _hopfield_toy(loss=loss, free_steps=200).double()
        updates[method], logs[method] = _train_update(method, model, dataset, tmp_path / method, max_steps=2, **extra)
    difference = relative_difference(updates["ep"], updates["backprop"])
    print(f"{loss}: relative update difference EP vs Trainer (BPTT) {difference:.3g}")
    assert difference <= 1e-4
    losses = {m: [h["loss"] for h in log if "loss" in h] for m, log in logs.items()}
    assert losses["ep"] == pytest.approx(losses["backprop"], rel=1e-8)


def test_two_process_ddp_equals_one_process_on_the_doubled_batch(tmp_path):
    """2 gloo ranks with batch 4 each train like 1 process with batch 8 (see tests/test_distributed.py for why the
    batches coincide): the block gradients (handed over by the contrast) and the read-out's (an autograd graph inside
    the contrast) are all-reduced because the contrast runs through the DDP-wrapped forward."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    script = str(root / "tests" / "scripts" / "train_hopfield_toy.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {
        "one": [sys.executable, script, "--out", str(tmp_path / "one"), "--batch", "8"],
        "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(port), script, "--out", str(tmp_path / "two"),
                "--batch", "4"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    one = load_file(tmp_path / "one" / "params_rank0.safetensors")
    ranks = [load_file(tmp_path / "two" / f"params_rank{r}.safetensors") for r in range(2)]
    torch.manual_seed(0)  # the script's initial weights
    start = dict(EPHopfieldMLPForImageClassification(EPHopfieldMLPConfig(
        input_size=64, hidden_sizes=[24, 16], num_labels=4, loss="cross_entropy")).named_parameters())
    worst = max((ranks[r][k] - one[k]).abs().max().item() for r in range(2) for k in one)
    moved = min((one[k] - start[k].detach()).abs().max().item() for k in one)
    print(f"DDP 2 ranks vs 1 process: max parameter difference {worst:.3g}; every tensor moved by >= {moved:.3g}")
    assert "readout.weight" in one and worst < 1e-5 and moved > 1e-3


def test_random_sign_nudging_serves_the_layered_family_too():
    """Nudging is shared: a layered MLP nudged with −β has the opposite O(β) bias of +β (one-sided contrast), so the
    mean of the two is far closer to backprop."""
    from mep_hf import free_phase as layered_free_phase
    from mep_hf import nudged_phases as layered_nudged_phases
    from mep_hf import Contrast

    torch.manual_seed(4)
    model = EPMLPForImageClassification(EPMLPConfig(input_size=20, hidden_sizes=[16], num_labels=3)).double()
    x, y = torch.rand(8, 20, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = list(model.parameters())
    bp = torch.autograd.grad(model(pixel_values=x, labels=y).loss, params)

    def grads(beta):
        stack = model.ep_stack(pixel_values=x, labels=y)
        phases = layered_nudged_phases(stack, layered_free_phase(stack), beta, "positive", SettleConfig(steps=20))
        return torch.autograd.grad(Contrast(phases)(stack), params)

    def error(g):
        return max(((a - b).norm() / b.norm()).item() for a, b in zip(g, bp))

    plus, minus = grads(0.05), grads(-0.05)
    mean = error([(a + b) / 2 for a, b in zip(plus, minus)])
    print(f"layered one-sided: +0.05 {error(plus):.3g}, -0.05 {error(minus):.3g}, mean {mean:.3g}")
    assert error(minus) == pytest.approx(error(plus), rel=0.3) and mean < 0.1 * error(plus)


def test_five_point_nudging_settles_four_phases_and_beats_centered():
    """The registry's fourth-order scheme (±β, ±2β) in the Hopfield family: four settled phases weighted by
    ``contrast_weights``; at the same β its error against the implicit gradient is far below centered's O(β²)
    (measured: 3.0e-13 against 8.4e-7). At β = 0.01 a unit crosses a kink of the hard sigmoid within ±2β and the
    expansion in β no longer holds (0.009 against 9.3e-6)."""
    model = MODELS["pmlp-ce"]()
    x, y = batch(model)
    reference = implicit_gradient(model, model._pixels(x), y)

    def error(nudging):
        ep, _ = ep_gradient(model, x, y, 300, 300, beta=0.003, nudging=nudging)
        return compare(ep, reference)[1]

    centered, five = error("centered"), error("five_point")
    print(f"beta 0.003: centered {centered:.3g}, five_point {five:.3g}")
    assert five <= REL_MAX and five < 1e-3 * centered
