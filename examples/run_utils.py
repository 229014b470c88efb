"""Small helpers the example scripts share: the ``run_info.json`` record of a run."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (argv[0] is the script path), with the environment variables that change a run."""
    argv = sys.argv if argv is None else argv
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("OMP_NUM_THREADS", "MEP_HF_TRITON") if k in os.environ]
    return " ".join([*env, "python", shlex.join(argv)])


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes outside ``docs/``, which benchmarks rewrite as
    they run), so a recorded number names the code that made it; ``None`` outside a git checkout. Read once per
    process: ask at its start, when it imports the code."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ":(top,exclude)docs").stdout.strip() else "")


def write_run_info(output_dir: str | os.PathLike, train_seconds: float, **extra) -> dict:
    """Write ``run_info.json``: command, training wall time, machine, library versions, date (and ``extra``)."""
    import transformers

    info = {
        "command": command_line(),
        "train_seconds": round(train_seconds, 1),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        },
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        **extra,
    }
    path = Path(output_dir) / "run_info.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info
