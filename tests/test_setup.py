"""The set-up prints nothing alarming: the Makefile installs mep_hf in editable mode with a warning filter that
hides setuptools' `!!` banner ("Editable installation ... be careful with folders in your working directory with the
same name as your package"), harmless here since that folder is the package itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def makefile_filter() -> str:
    """The PYTHONWARNINGS value the Makefile's ``pip install -e`` runs with."""
    text = (ROOT / "Makefile").read_text()
    install = next(line for line in text.splitlines() if "pip install" in line and "-e " in line)
    assert "PYTHONWARNINGS=" in install, install
    return re.search(r"^EDITABLE_BANNER := (.*)$", text, re.M).group(1)


def build_editable(folder: Path, env: dict[str, str]) -> str:
    """setuptools' ``build_editable`` (what ``pip install -e`` runs) on a copy of the project; its output."""
    pytest.importorskip("setuptools")
    folder.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "mep_hf", folder / "mep_hf", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import setuptools.build_meta as b; b.build_editable('wheel')"
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env={**full_env, **env}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_editable_install_prints_no_banner(tmp_path):
    assert "!!" in build_editable(tmp_path / "plain", {})  # setuptools prints it (else the filter is obsolete)
    output = build_editable(tmp_path / "filtered", {"PYTHONWARNINGS": makefile_filter()})
    assert "!!" not in output and "Editable installation" not in output, output[-2000:]
