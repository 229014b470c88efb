"""The README's snippets, run as written (each in a fresh process and folder): "Use it" evaluates, logs and leaves a
model that a new session loads and classifies with; "Use a zoo model" prints the zoo model's labels. The demo's list
of outputs is checked against the example's run in ``tests/test_train_image_classification.py``."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoModelForImageClassification

import mep_hf  # noqa: F401  (registers the EP models with the Auto classes)

ROOT = Path(__file__).resolve().parents[1]


def readme_snippets(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``heading``, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    section = section[: section.find("\n## ", len(heading))]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_snippet(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def printed(proc: subprocess.CompletedProcess):
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def demo_outputs() -> list[str]:
    """The files and folders the README says the main job writes into its output folder."""
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Run the main job"): text.index("make demo")]
    names = []
    for name in re.findall(r"`([^`]+)`", paragraph):
        if name.startswith("{"):  # {train,eval,test,all}_results.json
            parts, rest = name[1:].split("}", 1)
            names += [part + rest for part in parts.split(",")]
        elif name.startswith("runs/mnist_ep/") and name != "runs/mnist_ep/":
            names.append(name.removeprefix("runs/mnist_ep/").rstrip("/"))
        elif "." in name and not name.startswith(".") and "(" not in name and " " not in name:
            names.append(name)
    return names


def test_demo_outputs_are_listed():
    assert {"preprocessor_config.json", "trainer_state.json", "test_results.json", "run_info.json",
            "training_curve.png", "runs"} <= set(demo_outputs())


def test_use_it_snippet_evaluates_logs_and_saves(tmp_path):
    train, load = readme_snippets("## Use it")
    results = printed(run_snippet(train, tmp_path))
    print(f"README snippet: {results}")
    assert results["test_accuracy"] > 0.95
    out = tmp_path / "out"
    state = (out / "trainer_state.json").read_text()
    assert '"eval_accuracy"' in state and '"loss"' in state
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    model = AutoModelForImageClassification.from_pretrained(out)
    assert type(model).__name__ == "EPMLPForImageClassification"

    # The second snippet, in a new session: loads "out" and classifies a test digit through pipeline().
    from mep_hf.data import load_mnist

    digit = load_mnist()["test"].with_format("numpy")[0]
    pixels = np.rint(digit["pixel_values"].reshape(28, 28) * 256).astype(np.uint8)  # the bundled MNIST: uint8 / 256
    Image.fromarray(pixels, "L").save(tmp_path / "digit.png")
    top = printed(run_snippet(load, tmp_path))
    expected = model.config.id2label[int(digit["labels"])]  # the snippet's config names no labels: LABEL_<digit>
    assert len(top) == 5 and top[0]["label"] == expected and top[0]["score"] > 0.5, top


def test_zoo_snippet_prints_the_labels(tmp_path):
    """Run where the README runs it (model_zoo/ beside it), on the first Fashion-MNIST test image (an ankle boot,
    as the README's comment says), or a drawn one without Fashion-MNIST; the snippet imports no mep_hf."""
    from mep_hf.data import fashion_mnist

    (snippet,) = readme_snippets("## Use a zoo model")
    (tmp_path / "model_zoo").symlink_to(ROOT / "model_zoo")
    real = fashion_mnist.find_fashion_mnist_dir() is not None
    if real:
        x = fashion_mnist.load_fashion_mnist()["test"].with_format("numpy")[0]["pixel_values"]
        image = np.rint(x.reshape(28, 28) * 255).astype(np.uint8)  # Fashion-MNIST: uint8 / 255
    else:
        image = np.zeros((28, 28), dtype=np.uint8)
        image[14:24, 4:24], image[4:14, 14:24] = 200, 160
    Image.fromarray(image, "L").save(tmp_path / "image.png")
    top = printed(run_snippet(snippet, tmp_path))
    labels = set(AutoModelForImageClassification.from_pretrained(ROOT / "model_zoo" / "fashion_mlp").config
                 .id2label.values())
    assert len(top) == 5 and {r["label"] for r in top} <= labels
    assert all(0 <= r["score"] <= 1 for r in top) and top == sorted(top, key=lambda r: -r["score"])
    if real:  # the README's comment: [{'label': 'Ankle boot', 'score': 0.999}, ...]
        assert top[0]["label"] == "Ankle boot" and round(top[0]["score"], 3) == 0.999, top


def test_ep_outside_the_trainer_snippets_train(tmp_path):
    """The plain PyTorch loop (``ep_backward``) and the Lightning module (``EPMixin``), each on 3000 MNIST images:
    the loss they print has fallen well below chance's ln 10 ≈ 2.3."""
    plain, lightning = readme_snippets("## EP outside the Trainer")
    for snippet in (plain, lightning):
        loss = printed(run_snippet(snippet, tmp_path))
        print(f"README snippet's last loss: {loss:.3f}")
        assert loss < 1.0
