"""An EP step holds about what a backprop step holds, at any depth (``benchmarks/memory.py``'s exact tensor peaks).

The contrast frees each layer before the next, so EP's peak is backprop's plus a few activations of one layer,
whatever the depth. A regression that keeps something per layer (a graph over the whole contrast, the phases'
errors, the free pass) makes the overhead grow with depth and fails here. These are allocation records, not
timings: the numbers are exact and repeatable.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
WIDTH, BATCH = 64, 32
ACTIVATION_MIB = BATCH * WIDTH * 4 / 2**20


def peak_tensors(method: str, depth: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1])}
    cmd = [sys.executable, str(BENCH), "--width", str(WIDTH), "--batch_size", str(BATCH), "--repeats", "1"]
    out = subprocess.run([*cmd, "--measure", f"{method}:{depth}"], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["tensors"]


def test_ep_memory_overhead_is_a_few_activations_whatever_the_depth():
    overhead = {depth: peak_tensors("ep", depth) - peak_tensors("backprop", depth) for depth in (4, 32)}
    assert all(o <= 4 * ACTIVATION_MIB + 0.01 for o in overhead.values()), (overhead, ACTIVATION_MIB)
    assert abs(overhead[32] - overhead[4]) <= 0.01, overhead  # constant: nothing is kept per layer
