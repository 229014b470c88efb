"""``notebooks/ep_introduction.ipynb`` runs top to bottom (nbclient, a fresh kernel) and teaches what it says: the
free state has zero energy, EP's gradient approaches backprop's (centered nudging closer than positive), the
MLP it trains classifies MNIST, and the model it pushes to the local Hub loads back with the same predictions."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_the_introduction_notebook_runs_and_teaches_what_it_says():
    nb = nbformat.read(NOTEBOOKS / "ep_introduction.ipynb", as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    print(f"notebook executed in {time.perf_counter() - start:.1f} s")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    number = r"([-+0-9.e]+)"
    assert float(re.search(rf"E at the free state: {number}", text)[1]) == 0.0
    positive, centered = map(float, re.search(rf"positive nudging: {number}\s+centered nudging: {number}", text).groups())
    assert centered < positive / 100 and positive < 1e-2
    assert float(re.search(rf"EP vs backprop: relative error {number}\n(?!.*EP vs backprop)", text, re.S)[1]) < 1e-6
    floors = dict(re.findall(rf"^(.+?)\s+lowest error {number} at", text, re.M))
    assert float(floors["mep_hf centered, float64"]) < 1e-12 < 1e-8 < float(floors["mep_hf centered, float32"]) < 1e-6
    assert float(floors["naive positive, float32"]) > 1e-5  # rounding takes over long before float32's precision
    assert any(o.output_type == "display_data" and "image/png" in o.data for c in nb.cells for o in c.get("outputs", []))
    assert float(re.search(rf"test accuracy after 2 epochs on 10000 images: {number}", text)[1]) > 0.85
    assert "pushed: ['README.md', 'config.json', 'model.safetensors']" in text
    assert "loaded back from the Hub: EPMLPForImageClassification same predictions: True" in text
