"""Summarise zoo training runs from their own json files (never typed by hand): a Markdown table on stdout.

    python examples/zoo_summary.py runs/zoo                     # every run directory with a run_info.json
    python examples/zoo_summary.py runs/zoo mnist_mlp char_lm   # some of them

For each run: the metric (``test_accuracy`` from ``test_results.json``, or ``eval_bits_per_char`` from
``eval_results.json``), the best validation value of its ``trainer_state.json``, the training wall time and the
exact command from ``run_info.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(run: Path) -> dict:
    info, test, ev = read(run / "run_info.json"), read(run / "test_results.json"), read(run / "eval_results.json")
    history = read(run / "trainer_state.json").get("log_history", [])
    if "test_accuracy" in test or "eval_bits_per_char" not in ev:
        metric = f"test accuracy {100 * test['test_accuracy']:.2f}%" if "test_accuracy" in test else "?"
        val = [h["eval_accuracy"] for h in history if "eval_accuracy" in h]
        best = f"{100 * max(val):.2f}% (last {100 * val[-1]:.2f}%)" if val else ""
    else:
        metric = f"validation {ev['eval_bits_per_char']:.4f} bits/char ({ev.get('eval_blocks', '?')} blocks)"
        best = ""
    machine = info.get("machine", {})
    if isinstance(machine, dict):  # run_info.json of examples/run_utils.py; other writers may store a string
        machine = f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('threads')} thread(s)"
    return {
        "run": run.name,
        "metric": metric,
        "validation (best)": best,
        "train wall": f"{info.get('train_seconds', float('nan')):.0f} s" + (" (resumed)" if info.get("resumed_from") else ""),
        "machine": machine,
        "command": f"`{info.get('command', '?')}`",
    }


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "runs/zoo")
    names = set(argv[1:])  # optional: only these runs
    rows = [summarise(d) for d in sorted(root.iterdir())
            if (d / "run_info.json").is_file() and (not names or d.name in names)]
    if not rows:
        raise SystemExit(f"no run directories with run_info.json under {root}")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
