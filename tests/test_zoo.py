"""The model zoo as committed (``model_zoo/``): each packaged folder's remote code is what mep_hf generates today
(as ``tests/test_docs.py`` checks ``docs/api.md``) and carries only what the model runs; Hopfield models' pipeline
scores are their output states; the char-LM card's example stays within the model's context."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mep_hf.hub import zoo

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = zoo.packaged_folders(ROOT / "model_zoo")


def test_the_zoo_has_folders():
    assert {f.name for f in FOLDERS} >= {"mnist_mlp", "mnist_hopfield_pmlp", "mnist_hopfield_pcnn", "char_lm"}


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_remote_code_is_what_mep_hf_generates(folder):
    stale = zoo.regenerate(folder, check=True)
    assert not stale, (f"{folder.name}: {stale} differ from what mep_hf generates now; regenerate them (weights "
                       f"untouched): mep-hf-zoo regenerate model_zoo/{folder.name}")


def test_regenerate_finds_and_rewrites_drift(tmp_path):
    """The check can fail: an edited file and a stray one are reported, then rewritten and removed."""
    folder = tmp_path / "mnist_mlp"
    shutil.copytree(ROOT / "model_zoo" / "mnist_mlp", folder, ignore=shutil.ignore_patterns("*.safetensors", "*.png"))
    (folder / "modeling_ep_mlp.py").write_text((folder / "modeling_ep_mlp.py").read_text() + "# edited\n")
    (folder / "modeling_old.py").write_text("")
    stale = ["modeling_ep_mlp.py", "modeling_old.py", "zoo_manifest.json"]  # the record lists the weights left out
    assert zoo.regenerate(folder, check=True) == stale
    assert zoo.regenerate(folder) == stale
    assert zoo.regenerate(folder, check=True) == [] and not (folder / "modeling_old.py").exists()
    zoo.check_files(folder)


def flattened_from(path: Path) -> set[str]:
    """The mep_hf modules a generated file names as its sources (its header)."""
    header = path.read_text().split('"""', 2)[1]
    return set(re.findall(r"`(mep_hf[\w.]*)`", header.split("Flattened from", 1)[1].split("\n\n", 1)[0]))


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_generated_code_carries_no_engine(folder):
    """No generated file holds the EP engine (its stand-ins instead); only settling models keep closed forms."""
    for path in folder.glob("*.py"):
        sources = flattened_from(path)
        engine = {"mep_hf.equilibrium", "mep_hf.energies.layered", "mep_hf.energies.inner_states", "mep_hf.kernels.dense"}
        assert sources and not sources & engine, path
        text = path.read_text()
        assert "torch.autograd.grad" not in text and "register_module_forward_hook" not in text, path
    modeling = next(folder.glob("modeling_*.py"))
    settles = "hopfield" in folder.name
    assert ("def ep_linearize" in modeling.read_text()) == settles
    assert ("mep_hf.energies.hopfield" in flattened_from(modeling)) == settles


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_generated_model_code_carries_the_block_stack_itself(folder):
    """The BlockStack a flat model returns is generated from mep_hf.block_stack, not kept as a hand-made twin."""
    modeling = next(folder.glob("modeling_*.py"))
    assert "mep_hf.block_stack" in flattened_from(modeling)
    assert "class BlockStack" in modeling.read_text()


# --------------------------------------------------------------------------- Hopfield scores
def mnist_test_images(n: int):
    mnist = pytest.importorskip("mep_hf.data")
    try:
        data = mnist.load_mnist()["test"].select(range(n))
    except FileNotFoundError as err:
        pytest.skip(str(err))
    rows = data.with_format("numpy")[:]
    u8 = np.rint(rows["pixel_values"].reshape(n, 28, 28) * 256).astype(np.uint8)  # the bundled MNIST is uint8 / 256
    return [Image.fromarray(x, "L") for x in u8], rows["labels"]


def zoo_remote_code(folder: Path, directory: Path):
    """The folder's own remote code (its committed .py files), imported: ``{auto_map key: class}``. In a process
    where mep_hf is imported, transformers prefers the registered mep_hf classes even with trust_remote_code."""
    from mep_hf.hub.remote_code import import_flat_sources

    package = import_flat_sources({p.name: p.read_text() for p in folder.glob("*.py")}, directory)
    auto_map = {}
    for file in ("config.json", "preprocessor_config.json"):
        auto_map.update(json.loads((folder / file).read_text()).get("auto_map", {}))
    return {key: getattr(getattr(package, entry.split(".")[0]), entry.split(".")[1]) for key, entry in auto_map.items()}


@pytest.mark.parametrize("code", ["mep_hf", "remote"])
def test_hopfield_pipeline_scores_are_the_output_states(code, tmp_path):
    """An MSE P-MLP's outputs are states in [0, 1] trained towards the one-hot target: the pipeline reports them as
    they are (problem_type "regression"), with mep_hf's classes and with the zoo's remote code. The softmax it
    applied before caps every score at e/(e + 9) = 0.232."""
    from transformers import pipeline

    folder = ROOT / "model_zoo" / "mnist_hopfield_pmlp"
    images, labels = mnist_test_images(32)
    if code == "remote":
        classes = zoo_remote_code(folder, tmp_path / "code")
        model = classes["AutoModelForImageClassification"].from_pretrained(folder)
        processor = classes["AutoImageProcessor"].from_pretrained(folder)
        assert type(model).__module__.startswith("_mep_hf_remote_")
        classify = pipeline("image-classification", model=model, image_processor=processor)
    else:
        classify = pipeline("image-classification", model=str(folder))
        assert type(classify.model).__module__.startswith("mep_hf.models.")
    assert classify.model.config.problem_type == "regression"
    results = classify(images, top_k=10, batch_size=32)
    pixels = classify.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        states = classify.model(pixel_values=pixels).logits
    assert ((states >= 0) & (states <= 1)).all()
    top = []
    for result, state, label in zip(results, states, labels):
        scores = torch.tensor([r["score"] for r in sorted(result, key=lambda r: int(r["label"]))])
        assert torch.allclose(scores, state, atol=1e-6)
        if result[0]["label"] == str(label):
            top.append(result[0]["score"])
    # 31 of these 32 are right (the card: 98.14%), each with its output state at 1.0 (measured): the hard sigmoid
    # saturates. A confident, correct model must read as one: mean above 0.8, where a softmax over its states cannot
    # pass 0.232.
    assert len(top) >= 28 and np.mean(top) > 0.8
    softmax = classify(images[:4], top_k=1, function_to_apply="softmax")
    assert max(r[0]["score"] for r in softmax) <= math.e / (math.e + 9) + 1e-6  # the old scores, for contrast


def test_cross_entropy_hopfield_keeps_softmax():
    from mep_hf.models import EPHopfieldConvNetConfig, EPHopfieldMLPConfig

    assert EPHopfieldMLPConfig(loss="cross_entropy").problem_type is None
    assert EPHopfieldConvNetConfig(loss="mse").problem_type == "regression"
    assert EPHopfieldMLPConfig(problem_type="single_label_classification").problem_type == "single_label_classification"
    saved = EPHopfieldMLPConfig.from_dict(EPHopfieldMLPConfig().to_dict())
    assert saved.problem_type == "regression"


def test_flat_hopfield_model_backpropagates_like_mep_hf(tmp_path):
    """The flat P-MLP settles through the same closed forms as mep_hf's, so backprop through its unrolled settling
    (BPTT, fine-tuning with a plain Trainer) gives mep_hf's gradient; the autograd stand-in it had before cut the
    graph at every step."""
    from mep_hf.hub.remote_code import flat_classes
    from mep_hf.models import EPHopfieldMLPConfig, EPHopfieldMLPForImageClassification

    torch.manual_seed(0)
    config = EPHopfieldMLPConfig(input_size=16, hidden_sizes=[8], num_labels=3, free_steps=6)
    model = EPHopfieldMLPForImageClassification(config)
    model.save_pretrained(tmp_path / "m")
    twin = flat_classes([EPHopfieldMLPConfig, EPHopfieldMLPForImageClassification], tmp_path / "flat")
    twin = twin[EPHopfieldMLPForImageClassification].from_pretrained(tmp_path / "m")
    x, labels = torch.rand(4, 16), torch.tensor([0, 1, 2, 1])
    grads = []
    for m in (model, twin):
        m.zero_grad()
        m(pixel_values=x, labels=labels).loss.backward()
        grads.append([p.grad for p in m.parameters()])
    # Two code paths (mep_hf's modules, the generated file) doing the same float32 ops: equal to rounding; the
    # graph cut at every settling step that this guards against changes the gradient at O(1).
    assert all(g is not None for g in grads[1])
    for g, h in zip(*grads):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- cards
@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_card_example_is_the_generators(folder):
    """Each card's example is what `mep-hf-zoo package` writes now: it prints its result, and image cards say how
    to classify many images at once."""
    from huggingface_hub import ModelCard
    from transformers import AutoConfig, AutoTokenizer

    card = ModelCard.load(folder / "README.md")
    task = card.data.pipeline_tag
    tokenizer = AutoTokenizer.from_pretrained(folder) if task == "text-generation" else None
    usage = zoo.card_usage(task, card.data.mep_hf["repo_id"], AutoConfig.from_pretrained(folder), tokenizer)
    assert f"```python\n{usage}\n```" in card.text
    assert "print(" in usage


def test_char_lm_card_generates_within_the_context():
    """The card's example asks for no more tokens than the model's context holds after the prompt, and runs."""
    from transformers import pipeline

    folder = ROOT / "model_zoo" / "char_lm"
    card = (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    call = re.search(r'generate\((".*?"), max_new_tokens=(\d+)', card)
    prompt, new_tokens = json.loads(call.group(1)), int(call.group(2))
    generate = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    assert len(generate.tokenizer(prompt)["input_ids"]) + new_tokens <= config["max_position_embeddings"]
    torch.manual_seed(0)
    text = generate(prompt, max_new_tokens=new_tokens, do_sample=True, top_k=20)[0]["generated_text"]
    assert text.startswith(prompt) and len(text) == len(prompt) + new_tokens
