"""The README's "Use it" snippet, run as written (in a fresh process and folder), evaluates, logs and leaves a
loadable model; its supported-settings claims stay true."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForImageClassification

import mep_hf  # noqa: F401  (registers the EP models with the Auto classes)

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_use_it_snippet_evaluates_logs_and_saves(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    print(f"README snippet: {results}")
    assert results["test_accuracy"] > 0.95
    out = tmp_path / "out"
    state = (out / "trainer_state.json").read_text()
    assert '"eval_accuracy"' in state and '"loss"' in state
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    model = AutoModelForImageClassification.from_pretrained(out)
    assert type(model).__name__ == "EPMLPForImageClassification"
