"""The MEP optimizer family: the numbers each piece promises, presets, checkpoints, errors."""

import copy
import io

import pytest
import torch
from torch import nn

from mep_hf.optim import (
    PRESETS,
    DiagonalNaturalGradient,
    Dion,
    Muon,
    accumulate,
    build_optimizer,
    constrain_spectral_norm,
    newton_schulz_orthogonalize,
    subtract_sent,
)
from mep_hf.optim.dion import low_rank_approximation
from mep_hf.optim.muon import lr_scale
from mep_hf.optim.newton_schulz import MUON_COEFFICIENTS

NS_BAND = (0.68, 1.21)  # documented in mep_hf/optim/newton_schulz.py, for singular values >= 2e-3 ||G||_F


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with 2 OpenMP threads on a busy 2-core machine, thread hand-offs made the same
    steps ~100x slower. One thread keeps the module fast; the previous setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _matrix_with_spectrum(rows, cols, singular_values, g):
    dtype = singular_values.dtype
    U = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=dtype)).Q[:, : len(singular_values)]
    V = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=dtype)).Q[:, : len(singular_values)]
    return U @ torch.diag(singular_values) @ V.T


# --- Newton-Schulz -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(256, 64), (64, 256), (96, 96), (300, 7)])
def test_newton_schulz_singular_values_in_band(shape):
    g = torch.Generator().manual_seed(sum(shape))
    rows, cols = shape
    if rows == cols:  # square Gaussians have near-null directions: give a spectrum down to 2e-3 relative
        k = min(shape)
        G = _matrix_with_spectrum(rows, cols, torch.logspace(0, -2.0, k) * 3.0, g)
    else:
        G = torch.randn(rows, cols, generator=g) * 5.0
    rel = torch.linalg.svdvals(G) / G.norm()
    assert rel.min() >= 2e-3 / 1.5  # the band's precondition holds (up to the relative float32 error)
    s = torch.linalg.svdvals(newton_schulz_orthogonalize(G))
    assert s.min() >= NS_BAND[0] and s.max() <= NS_BAND[1], (s.min(), s.max())


def test_newton_schulz_is_the_scalar_polynomial_on_singular_values():
    g = torch.Generator().manual_seed(0)
    sv = torch.tensor([4.0, 2.0, 1.0, 0.3, 1e-3], dtype=torch.float64)
    G = _matrix_with_spectrum(12, 5, sv, g)
    out = newton_schulz_orthogonalize(G, steps=5)
    x = sv / sv.norm()
    a, b, c = MUON_COEFFICIENTS
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    expected = torch.linalg.svdvals(out)
    assert out.dtype == torch.float64
    torch.testing.assert_close(expected, x.sort(descending=True).values, rtol=1e-10, atol=1e-12)
    assert x[-1] < NS_BAND[0]  # a near-null direction (1e-3/||G||_F < 2e-3) stays below the band


def test_muon_matches_torch_muon_in_bfloat16():
    torch.manual_seed(0)
    w = torch.randn(32, 16)
    ours, ref = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt = Muon([ours], lr=0.02, weight_decay=0.1, ns_dtype="bfloat16", adjust_lr="original")
    ref_opt = torch.optim.Muon([ref], lr=0.02, weight_decay=0.1)
    for _ in range(3):
        grad = torch.randn(32, 16)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    # Two implementations: their bfloat16 Newton-Schulz products may round an element differently on another CPU's
    # kernels (float32 accumulation, bfloat16 results), so the updates agree in norm, not bit for bit. The bound
    # still fails for an lr 1% off (relative difference 1e-2).
    delta, ref_delta = ours.detach() - w, ref.detach() - w
    assert float((delta - ref_delta).norm() / ref_delta.norm()) <= 3e-3


def test_adamw_fallback_matches_torch_adamw():
    torch.manual_seed(0)
    w = torch.randn(7)
    ours, ref = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt = Muon([ours], lr=0.01, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1)
    assert opt.param_groups[0]["algorithm"] == "adamw"
    for _ in range(3):
        grad = torch.randn(7)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    # Two implementations of the same float32 update: equal to float32 rounding (an lr 1% off fails this).
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


def test_muon_orthogonalizes_conv_kernels_as_matrices():
    conv = nn.Conv2d(3, 8, 3)
    before = conv.weight.detach().clone()
    opt = Muon([conv.weight], lr=0.01)
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    step = (before - conv.weight.detach()).reshape(8, 27) / (0.01 * lr_scale(8, 27, 8, "match_rms_adamw"))
    s = torch.linalg.svdvals(step)
    assert s.min() >= NS_BAND[0] and s.max() <= NS_BAND[1]


def test_named_parameters_are_routed_by_shape():
    model = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 2))
    opt = Dion(model.named_parameters(), lr=0.01, rank=4)
    names = {g["algorithm"]: g["param_names"] for g in opt.param_groups}
    assert names == {"dion": ["0.weight"], "adamw": ["0.bias", "1.bias"], "muon": ["1.weight"]}


# --- Dion and error feedback -------------------------------------------------------------------------------


def test_dion_updates_have_rank_at_most_r():
    torch.manual_seed(0)
    rank = 3
    w = nn.Parameter(torch.randn(40, 24, dtype=torch.float64))
    opt = Dion([w], lr=0.01, rank=rank)
    assert opt.param_groups[0]["algorithm"] == "dion"
    for _ in range(5):
        before = w.detach().clone()
        w.grad = torch.randn(40, 24, dtype=torch.float64)
        opt.step()
        delta = w.detach() - before
        # rtol: subtracting O(1) weights leaves O(1e-16) rounding in the O(1e-2) delta
        assert torch.linalg.matrix_rank(delta, rtol=1e-10) == rank  # <= r, and not trivially lower


def test_dion_error_feedback_sums_to_the_gradients():
    """What Dion transmits each step is rank <= r, yet the transmitted sum tracks the gradient sum: the
    relative error of the running sums falls like 1/T (1.6% after 200 steps), while compressing
    each gradient alone (no feedback) keeps a constant error of about 80%."""
    g = torch.Generator().manual_seed(0)
    rows, cols, rank = 32, 24, 4
    mean = torch.randn(rows, cols, generator=g)  # full rank: rank-4 snapshots cannot represent it
    w = nn.Parameter(torch.zeros(rows, cols))
    opt = Dion([w], lr=1e-3, rank=rank, momentum=0.0)
    sent_sum, grad_sum, q = torch.zeros(rows, cols), torch.zeros(rows, cols), None
    no_feedback_sum = torch.zeros(rows, cols)
    errors = {}
    for t in range(1, 201):
        grad = mean + 0.5 * torch.randn(rows, cols, generator=g)
        buffer_before = opt.state[w]["buffer"].clone() if t > 1 else torch.zeros(rows, cols)
        w.grad = grad
        opt.step()
        sent = buffer_before + grad - opt.state[w]["buffer"]
        assert torch.linalg.matrix_rank(sent, rtol=1e-4) <= rank  # rtol: float32 rounding of the buffer
        sent_sum += sent
        grad_sum += grad
        q = opt.state[w]["q"] if q is None else q
        P, R = low_rank_approximation(grad, q)
        no_feedback_sum += P @ R.T
        if t in (25, 50, 100, 200):
            errors[t] = ((sent_sum - grad_sum).norm() / grad_sum.norm()).item()
    assert errors[25] > errors[50] > errors[100] > errors[200]
    assert errors[200] < 0.025, errors  # measured: 0.142, 0.066, 0.034, 0.016 at T = 25, 50, 100, 200
    assert ((no_feedback_sum - grad_sum).norm() / grad_sum.norm()) > 0.5


def test_error_feedback_with_top_k_compressor():
    g = torch.Generator().manual_seed(1)
    state, sent_sum, true_sum = {}, torch.zeros(50), torch.zeros(50)
    for _ in range(400):
        grad = torch.randn(50, generator=g) + 1.0
        buffer = accumulate(state, "residual", grad)
        sent = torch.zeros(50)
        top = buffer.abs().topk(5).indices  # transmit 10% of the coordinates
        sent[top] = buffer[top]
        subtract_sent(buffer, sent)
        sent_sum += sent
        true_sum += grad
    torch.testing.assert_close(sent_sum + state["residual"], true_sum)  # nothing lost, only delayed
    assert (sent_sum - true_sum).norm() / true_sum.norm() < 0.02


# --- spectral constraint -----------------------------------------------------------------------------------


def _mlp(seed=0, sizes=(8, 32, 32, 3)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def _toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()  # 3 classes
    return x, y


@pytest.mark.parametrize("inner", ["sgd", "smep"])
def test_spectral_constraint_holds_after_every_step(inner):
    gamma = 0.5
    model = _mlp()
    if inner == "sgd":  # the constraint wraps any torch optimizer
        opt = constrain_spectral_norm(torch.optim.SGD(model.parameters(), lr=0.5), gamma=gamma)
    else:
        opt = build_optimizer("smep", model, lr=0.05, gamma=gamma)
    x, y = _toy_data()
    for _ in range(30):
        opt.zero_grad()
        (1000.0 * nn.functional.cross_entropy(model(x), y)).backward()  # large gradients
        opt.step()
        for p in model.parameters():
            if p.ndim == 2:
                assert torch.linalg.matrix_norm(p.detach(), ord=2) <= gamma * (1 + 1e-3)


def test_spectral_constraint_only_touches_constrained_groups():
    w, b = nn.Parameter(torch.randn(6, 6) * 10), nn.Parameter(torch.randn(6) * 10)
    opt = torch.optim.SGD([{"params": [w]}, {"params": [b], "spectral_gamma": None}], lr=0.0)
    constrain_spectral_norm(opt, gamma=2.0)
    b_before = b.detach().clone()
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()
    assert torch.linalg.matrix_norm(w.detach(), ord=2) == pytest.approx(2.0, rel=1e-3)
    assert torch.equal(b.detach(), b_before)
    with pytest.raises(ValueError, match="already has a spectral constraint"):
        constrain_spectral_norm(opt)


# --- natural gradient --------------------------------------------------------------------------------------


def test_natural_gradient_matches_reference():
    lr, beta, damping, eps = 0.1, 0.9, 1e-2, 1e-12
    w0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    grads = [torch.tensor(v, dtype=torch.float64) for v in ([0.1, -1.0, 2.0, 0.0], [0.3, 0.5, -1.0, 1e-3])]
    p = nn.Parameter(w0.clone())
    opt = DiagonalNaturalGradient([p], lr=lr, beta=beta, damping=damping, eps=eps)
    expected = w0.clone()
    fisher = torch.zeros(4, dtype=torch.float64)
    for t, grad in enumerate(grads, start=1):
        p.grad = grad.clone()
        opt.step()
        fisher = beta * fisher + (1 - beta) * grad**2
        f_hat = fisher / (1 - beta**t)
        natural = grad / (f_hat + damping * f_hat.mean() + eps)
        expected = expected - lr * natural / natural.pow(2).mean().sqrt()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)


# --- presets -----------------------------------------------------------------------------------------------


def test_every_preset_has_a_one_line_description():
    assert set(PRESETS) == {"smep", "sdmep", "local_ep", "natural_ep", "muon_backprop"}
    assert all(d and "\n" not in d for d in PRESETS.values())


PRESET_LR = {"smep": 0.02, "sdmep": 0.02, "local_ep": 0.01, "natural_ep": 0.01, "muon_backprop": 0.02}
PRESET_OPTIONS = {"sdmep": {"rank": 4, "gamma": 3.0}, "smep": {"gamma": 3.0}, "natural_ep": {"gamma": 3.0}}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_a_small_mlp(name):
    """Loss at least halves in 60 full-batch steps. gamma=3: with the default 1 every layer is 1-Lipschitz and
    the logits of this 3-layer net stay too small to fit the labels (the loss stalls near 0.6)."""
    model = _mlp()
    opt = build_optimizer(name, model, lr=PRESET_LR[name], weight_decay=0.01, **PRESET_OPTIONS.get(name, {}))
    x, y = _toy_data()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    if "gamma" in PRESET_OPTIONS.get(name, {}):
        assert max(torch.linalg.matrix_norm(p.detach(), ord=2) for p in model.parameters() if p.ndim == 2) <= 3.003


class _Mixed(nn.Module):
    """Every kind of parameter the presets route: conv kernel, matrices, embedding, norm, biases."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.hidden = nn.Linear(64, 48)
        self.embed = nn.Embedding(5, 48)
        self.norm = nn.LayerNorm(48)
        self.head = nn.Linear(48, 3)

    def forward(self, x, tok):
        h = self.hidden(torch.tanh(self.conv(x)).flatten(1)) + self.embed(tok)
        return self.head(torch.tanh(self.norm(h)))


def _mixed_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    images = torch.randn(16, 1, 6, 6, generator=g)
    return images, torch.randint(0, 5, (16,), generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(model, opt, steps, start):
    for s in range(start, start + steps):
        x, tok, y = _mixed_batch(s)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x, tok), y).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_state_dict_round_trip_is_exact(name):
    options = {"rank": 4} if name == "sdmep" else {}
    torch.manual_seed(0)
    model_a = _Mixed()
    opt_a = build_optimizer(name, model_a, lr=0.01, weight_decay=0.01, **options)
    if name == "sdmep":  # conv (4, 9) and head (3, 48) are too small for rank 4: Muon; embedding, vectors: AdamW
        algorithm = {id(p): g["algorithm"] for g in opt_a.param_groups for p in g["params"]}
        assert algorithm[id(model_a.hidden.weight)] == "dion"
        assert algorithm[id(model_a.conv.weight)] == algorithm[id(model_a.head.weight)] == "muon"
        assert algorithm[id(model_a.embed.weight)] == algorithm[id(model_a.norm.weight)] == "adamw"
    _train(model_a, opt_a, 3, start=0)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    model_b = copy.deepcopy(model_a)
    opt_b = build_optimizer(name, model_b, lr=0.01, weight_decay=0.01, **options)
    opt_b.load_state_dict(state)
    _train(model_a, opt_a, 3, start=3)
    _train(model_b, opt_b, 3, start=3)
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), n


# --- bad input ---------------------------------------------------------------------------------------------


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer preset 'adam'.*smep.*sdmep.*local_ep"):
        build_optimizer("adam", _mlp(), lr=0.01)


def test_unknown_option_names_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown option 'rnak' for optimizer preset 'sdmep'.*rank"):
        build_optimizer("sdmep", _mlp(), lr=0.01, rnak=4)
    with pytest.raises(ValueError, match=r"unknown option 'gamma' for optimizer preset 'muon_backprop'"):
        build_optimizer("muon_backprop", _mlp(), lr=0.01, gamma=1.0)


def test_invalid_option_values_are_refused():
    with pytest.raises(ValueError, match="rank must be a positive int"):
        build_optimizer("sdmep", _mlp(), lr=0.01, rank=0)
    with pytest.raises(ValueError, match="adjust_lr must be one of"):
        build_optimizer("smep", _mlp(), lr=0.01, adjust_lr="rms")
    with pytest.raises(ValueError, match="need gamma > 0"):
        build_optimizer("natural_ep", _mlp(), lr=0.01, gamma=-1.0)
    with pytest.raises(ValueError, match="lr and weight_decay must be >= 0"):
        build_optimizer("local_ep", _mlp(), lr=-0.01)


def test_matrix_presets_need_a_weight_matrix():
    norms_only = nn.Sequential(nn.LayerNorm(4), nn.LayerNorm(4))
    for name in ("smep", "sdmep", "natural_ep", "muon_backprop"):
        with pytest.raises(ValueError, match=rf"preset '{name}' needs at least one weight matrix"):
            build_optimizer(name, norms_only, lr=0.01)
    build_optimizer("local_ep", norms_only, lr=0.01)  # the local rule has no such need


def test_unsupported_parameters_are_refused():
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("smep", nn.Sequential(nn.Linear(2, 2).requires_grad_(False)), lr=0.01)
    complex_model = nn.Linear(3, 3)
    complex_model.weight = nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))
    for name in PRESETS:
        with pytest.raises(TypeError, match="complex parameters"):
            build_optimizer(name, complex_model, lr=0.01)
    with pytest.raises(TypeError, match="sparse=True"):
        build_optimizer("smep", nn.Sequential(nn.Embedding(4, 3, sparse=True), nn.Linear(3, 2)), lr=0.01)


def test_sparse_gradients_are_refused_at_step():
    emb = nn.Embedding(4, 3, sparse=True)
    opt = Muon([{"params": [emb.weight], "algorithm": "adamw"}], lr=0.01)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse gradients"):
        opt.step()


def test_matrix_algorithm_refuses_vectors():
    with pytest.raises(ValueError, match="'muon' needs parameters with >= 2 dims"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "algorithm": "muon"}])


# --- inside the Trainer ------------------------------------------------------------------------------------


def test_trainer_resume_with_a_preset_continues_exactly(tmp_path, dataset):
    """sdmep carries every kind of state (Dion basis and buffer, Muon momentum, AdamW moments, spectral vectors):
    a run interrupted at a checkpoint and resumed ends with the same parameters as one straight run."""
    from mep_hf import EPTrainer
    from tests.conftest import toy_args, toy_model

    common = dict(
        max_steps=8, save_strategy="steps", save_steps=4, mep_optimizer="sdmep",
        mep_optimizer_options={"rank": 4, "gamma": 2.0},
    )
    straight = EPTrainer(model=toy_model(), args=toy_args(tmp_path / "a", **common), train_dataset=dataset)
    straight.train()
    EPTrainer(model=toy_model(), args=toy_args(tmp_path / "b", **common), train_dataset=dataset).train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-4"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert {"q", "buffer", "momentum_buffer", "exp_avg", "spectral_v"} <= {k for s in state.values() for k in s}

    resumed = EPTrainer(model=toy_model(seed=123), args=toy_args(tmp_path / "b", **common), train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
