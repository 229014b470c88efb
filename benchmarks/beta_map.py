"""The β stability map: where each nudging scheme trains, diverges or is biased (docs/research.md, question 3).

Two measurements, each over β × nudging scheme (positive, centered, random_sign, five_point):

* ``bias``: EP's gradient against backprop's at initialization, in float64 (relative L2 error and cosine over all
  parameters), for the layered EP MLP on MNIST (one sweep, the library default, and settled with 20 sweeps), a tiny
  stock Llama (one sweep) and the Hopfield P-MLP (classic EP, phases settled 200 steps; reference: implicit
  differentiation at the free fixed point, tests/hopfield_reference.py). A phase that diverges is marked.
* ``train``: the layered MLP (784-256-10, Adam 1e-3, batch 64) trained by ``mep_hf.ep_backward`` for a fixed budget of
  300 steps on MNIST in float32, the Hopfield P-MLP (784-256-10, MSE) for 100, and a stock decoder (a 2-layer
  ``LlamaForCausalLM``, width 64, on Shakespeare's bytes) for 150; test accuracy on 2,000 images (the decoder: loss on
  held-out plays); backprop (BPTT for the P-MLP) on the same budget as the reference; every run once per seed (the
  seed draws the initialization and the batch order).

    python benchmarks/beta_map.py                      # writes docs/research.json's beta_map
    python benchmarks/beta_map.py --parts train        # re-runs the training map only, keeping the recorded bias
    python benchmarks/beta_map.py --tables             # research.md's tables (mean ± spread over seeds)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
from research_record import RESEARCH_JSON, record  # noqa: E402
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


def stock_decoder():
    """A stock 2-layer Llama (width 64, 4 heads, grouped-query attention) over bytes: the decoder family at a size
    this map can train a hundred times."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def shakespeare_windows(length: int = 64) -> dict:
    """Shakespeare's training and held-out plays as rows of ``length`` bytes (the held-out loss uses 64 fixed rows)."""
    from mep_hf.data import load_shakespeare

    plays = load_shakespeare()

    def rows(split):
        data = torch.tensor(list("\n".join(plays[split]["text"]).encode()), dtype=torch.long)
        return data[: len(data) // length * length].view(-1, length)

    return {"train": rows("train"), "test": rows("validation")[::97][:64]}


def image_batches(mnist):
    """(batch of 64 training images for step ``i``, test accuracy of a model): the MNIST protocol."""
    train = mnist["train"].with_format("torch")
    test = mnist["test"].with_format("torch")[:2000]
    order = torch.randperm(len(train))

    def batch(step):
        rows = train[order[step * 64: (step + 1) * 64]]
        return {"pixel_values": rows["pixel_values"], "labels": rows["labels"]}

    def evaluate(model):
        logits = model(pixel_values=test["pixel_values"]).logits
        return {"test_accuracy": float((logits.argmax(-1) == test["labels"]).float().mean())}

    return batch, evaluate


def text_batches(windows):
    """The decoder's protocol: 16 random byte windows a step, held-out next-byte loss."""
    order = torch.randperm(len(windows["train"]))

    def batch(step):
        ids = windows["train"][order[step * 16: (step + 1) * 16]]
        return {"input_ids": ids, "labels": ids}

    def evaluate(model):
        return {"test_loss": float(model(input_ids=windows["test"], labels=windows["test"]).loss)}

    return batch, evaluate


def train_map(data, protocol, steps: int, model_of, betas, lr: float, seed: int) -> list[dict]:
    """``model_of()`` trained for ``steps`` by EP at each β and scheme (and by backprop: BPTT for a Hopfield model,
    whose forward settles differentiably); ``protocol(data)`` gives the batches and the evaluation."""
    out = []
    for scheme in ("backprop", *SCHEMES):
        for beta in ((None,) if scheme == "backprop" else betas):
            torch.manual_seed(seed)
            model = model_of()
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            batch, evaluate = protocol(data)
            status, losses = "trained", []
            for step in range(steps):
                try:
                    if scheme == "backprop":
                        loss = model(**batch(step)).loss
                        loss.backward()
                    else:
                        loss = mep_hf.ep_backward(model, batch(step), ep_beta=beta, ep_nudging=scheme)
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
                scores = evaluate(model)
            row = {"model": model_of.__name__, "scheme": scheme, "beta": beta, "seed": seed, "status": status,
                   **scores, "last_loss": losses[-1] if losses else None}
            out.append(row)
            print(row, flush=True)
    return out


def train_maps(mnist, steps: int, seeds) -> list[dict]:
    windows = shakespeare_windows()
    out = []
    for seed in seeds:
        out += train_map(mnist, image_batches, steps, layered_mlp, BETAS[1:], 1e-3, seed)
        out += train_map(mnist, image_batches, steps // 3, hopfield_pmlp, (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), 1e-3,
                         seed)
        out += train_map(windows, text_batches, steps // 2, stock_decoder, BETAS[1:], 3e-3, seed)
    return out


def tables(result: dict) -> str:
    """research.md's training tables: per model, scheme × β, the mean over seeds and (±) half the range."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in result["train"]):
        rows = [row for row in result["train"] if row["model"] == model]
        metric = "test_accuracy" if "test_accuracy" in rows[0] else "test_loss"
        betas = sorted({row["beta"] for row in rows if row["beta"] is not None})
        lines += [f"{model} ({metric}, {len({r['seed'] for r in rows})} seeds)", "",
                  "| scheme | " + " | ".join(f"β={b:g}" for b in betas) + " |", "|---" * (len(betas) + 1) + "|"]
        for scheme in dict.fromkeys(row["scheme"] for row in rows):
            cells = []
            for beta in (betas if scheme != "backprop" else [None]):
                values = [r[metric] for r in rows if r["scheme"] == scheme and r["beta"] == beta]
                cells.append(f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}")
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", choices=("bias", "train"), default=["bias", "train"])
    parser.add_argument("--tables", action="store_true", help="print the recorded training tables and exit")
    args = parser.parse_args(argv)
    recorded = json.loads(RESEARCH_JSON.read_text()).get("beta_map", {}) if RESEARCH_JSON.exists() else {}
    if args.tables:
        print(tables(recorded))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mnist = load_mnist()
    result = dict(recorded)
    if "bias" in args.parts:
        result["bias"] = bias_map(mnist)
    if "train" in args.parts:
        result["train"] = train_maps(mnist, args.steps, args.seeds)
    result["command"] = "python benchmarks/beta_map.py"
    record("beta_map", result)


if __name__ == "__main__":
    main()
