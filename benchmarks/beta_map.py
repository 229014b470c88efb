"""The β stability map: where each nudging scheme trains, diverges or is biased (docs/research.md, question 3).

Two measurements, each over β × nudging scheme (positive, centered, random_sign, five_point):

* ``bias``: EP's gradient against backprop's at initialization, in float64 (relative L2 error and cosine over all
  parameters), for the layered EP MLP on MNIST (one sweep, the library default, and settled with 20 sweeps), a tiny
  stock Llama (one sweep) and the Hopfield P-MLP (classic EP, phases settled 200 steps; reference: implicit
  differentiation at the free fixed point, tests/hopfield_reference.py). A phase that diverges is marked.
* ``train``: the layered MLP (784-256-10, Adam 1e-3, batch 64) trained by ``mep_hf.ep_backward`` for a fixed budget of
  300 steps on MNIST in float32, and the Hopfield P-MLP (784-256-10, MSE) for 100; test accuracy on 2,000 images;
  backprop (BPTT for the P-MLP) on the same budget as the reference.

    python benchmarks/beta_map.py            # writes docs/research.json's beta_map
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import mep_hf  # noqa: E402
from mep_hf.data import load_mnist  # noqa: E402
from mep_hf.energies import get_energy  # noqa: E402
from mep_hf.energies.hopfield import HopfieldSettings  # noqa: E402
from mep_hf.energies.layered import Contrast, SettleConfig, free_phase, nudged_phases  # noqa: E402
from mep_hf.equilibrium import SettlingDivergedError  # noqa: E402
from tests.adapter_models import tiny_batch, tiny_model  # noqa: E402
from research_record import record  # noqa: E402
from tests.hopfield_reference import implicit_gradient  # noqa: E402

BETAS = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
SCHEMES = ("positive", "centered", "random_sign", "five_point")


def agreement(ep, reference) -> tuple[float, float]:
    a = torch.cat([g.flatten() for g in ep])
    b = torch.cat([g.flatten() for g in reference])
    return float((a - b).norm() / b.norm()), float(a @ b / (a.norm() * b.norm()))


def layered_gradient(model, batch, beta, scheme, sweeps):
    params = [p for p in model.parameters() if p.requires_grad]
    stack = model.ep_stack(**batch)
    phases = nudged_phases(stack, free_phase(stack), beta, scheme, SettleConfig(steps=sweeps))
    return torch.autograd.grad(model(**batch, ep_contrast=Contrast(phases)), params, allow_unused=True)


def hopfield_gradient(model, batch, beta, scheme):
    energy = get_energy("hopfield")
    stack = model.ep_stack(**batch)
    settings = HopfieldSettings(free_steps=200, nudged_steps=200)
    free = energy.free_phase(stack, settings)
    contrast = energy.contrast(free, energy.nudged_phases(stack, free, beta, scheme, settings), settings, 1.0, None)
    return torch.autograd.grad(model(**batch, ep_contrast=contrast), list(model.parameters()))


def bias_map(mnist) -> list[dict]:
    torch.manual_seed(0)
    rows = mnist["train"].with_format("torch")[:64]
    mlp_batch = {"pixel_values": rows["pixel_values"].double(), "labels": rows["labels"]}
    mlp = mep_hf.EPMLPForImageClassification(mep_hf.EPMLPConfig(hidden_sizes=[256], num_labels=10)).double()
    llama = mep_hf.prepare_ep_model(tiny_model("llama", "causal-lm").double()).eval()
    llama_batch = tiny_batch("llama", "causal-lm", llama)
    torch.manual_seed(0)
    pmlp = mep_hf.EPHopfieldMLPForImageClassification(mep_hf.EPHopfieldMLPConfig(
        hidden_sizes=[64], num_labels=10, loss="mse")).double()
    pmlp_batch = {"pixel_values": rows["pixel_values"][:16].double(), "labels": rows["labels"][:16]}
    models = {
        "EP MLP, 1 sweep": (mlp, mlp_batch, lambda m, b, beta, s: layered_gradient(m, b, beta, s, 1)),
        "EP MLP, 20 sweeps": (mlp, mlp_batch, lambda m, b, beta, s: layered_gradient(m, b, beta, s, 20)),
        "stock Llama, 1 sweep": (llama, llama_batch, lambda m, b, beta, s: layered_gradient(m, b, beta, s, 1)),
        "Hopfield P-MLP": (pmlp, pmlp_batch, hopfield_gradient),
    }
    out = []
    for name, (model, batch, gradient) in models.items():
        if name == "Hopfield P-MLP":
            reference = implicit_gradient(model, model._pixels(batch["pixel_values"]), batch["labels"])
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            reference = torch.autograd.grad(model(**batch).loss, params, allow_unused=True)
        for scheme in SCHEMES:
            for beta in BETAS:
                torch.manual_seed(1)  # random_sign: the same draw for every β
                try:
                    rel, cos = agreement(gradient(model, batch, beta, scheme), reference)
                    row = {"model": name, "scheme": scheme, "beta": beta, "rel_error": rel, "cosine": cos}
                except SettlingDivergedError:
                    row = {"model": name, "scheme": scheme, "beta": beta, "diverged": True}
                out.append(row)
                print(row, flush=True)
    return out


def layered_mlp():
    return mep_hf.EPMLPForImageClassification(mep_hf.EPMLPConfig(hidden_sizes=[256], num_labels=10))


def hopfield_pmlp():
    """The zoo P-MLP's recipe, smaller: one hidden layer of 256, MSE, the family's settling (20 free / 10 nudged
    steps by default)."""
    return mep_hf.EPHopfieldMLPForImageClassification(mep_hf.EPHopfieldMLPConfig(hidden_sizes=[256], num_labels=10))


def train_map(mnist, steps: int, model_of, betas, lr: float) -> list[dict]:
    """``model_of()`` trained for ``steps`` by EP at each β and scheme (and by backprop: BPTT for a Hopfield model,
    whose forward settles differentiably)."""
    train = mnist["train"].with_format("torch")
    test = mnist["test"].with_format("torch")[:2000]
    out = []
    for scheme in ("backprop", *SCHEMES):
        for beta in ((None,) if scheme == "backprop" else betas):
            torch.manual_seed(0)
            model = model_of()
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            order = torch.randperm(len(train))
            status, losses = "trained", []
            for step in range(steps):
                rows = train[order[step * 64: (step + 1) * 64]]
                batch = {"pixel_values": rows["pixel_values"], "labels": rows["labels"]}
                try:
                    if scheme == "backprop":
                        loss = model(**batch).loss
                        loss.backward()
                    else:
                        loss = mep_hf.ep_backward(model, batch, ep_beta=beta, ep_nudging=scheme)
                except SettlingDivergedError:
                    status = f"settling diverged at step {step}"
                    break
                if not math.isfinite(float(loss.detach())):
                    status = f"loss non-finite at step {step}"
                    break
                losses.append(float(loss.detach()))
                optimizer.step()
                optimizer.zero_grad()
            with torch.no_grad():
                accuracy = float((model(pixel_values=test["pixel_values"]).logits.argmax(-1) == test["labels"])
                                 .float().mean())
            row = {"model": model_of.__name__, "scheme": scheme, "beta": beta, "status": status, "test_accuracy": accuracy,
                   "last_loss": losses[-1] if losses else None}
            out.append(row)
            print(row, flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mnist = load_mnist()
    result = {"bias": bias_map(mnist),
              "train": train_map(mnist, args.steps, layered_mlp, BETAS[1:], 1e-3)
              + train_map(mnist, args.steps // 3, hopfield_pmlp, (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), 1e-3),
              "command": "python benchmarks/beta_map.py"}
    record("beta_map", result)


if __name__ == "__main__":
    main()
