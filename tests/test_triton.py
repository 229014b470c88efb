"""The fused Triton dense kernels against the torch path (``benchmarks/triton_check.py``).

On the CPU the kernels run in Triton's interpreter, in a subprocess (``TRITON_INTERPRET=1`` must be set before a
kernel is defined); on CUDA they run compiled, and ``auto`` mode must pick them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton): the fused kernels cannot run")

CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_check.py"
SMALL = ["--batch_size", "16", "--input_size", "40", "--hidden_sizes", "24", "24", "--num_labels", "5"]


def run_check(device: str, *args: str, **env: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(CHECK.parents[1]), **env}
    cmd = [sys.executable, str(CHECK), "--device", device, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_fused_kernels_match_torch_in_the_interpreter():
    """Every product of every activation, and a whole EP gradient, agree to float32 rounding."""
    result = run_check("cpu", *SMALL, TRITON_INTERPRET="1")
    assert result["max_abs_diff"] <= 1e-5, result
    assert result["ep_gradient"] <= 1e-5 * result["ep_gradient_scale"], result


def test_triton_mode_is_validated(monkeypatch):
    from mep_hf.kernels.dense import triton_enabled

    monkeypatch.setenv("MEP_HF_TRITON", "yes")
    with pytest.raises(ValueError, match="MEP_HF_TRITON"):
        triton_enabled(torch.zeros(1))
    monkeypatch.setenv("MEP_HF_TRITON", "auto")
    assert not triton_enabled(torch.zeros(1))  # auto: CUDA only
    monkeypatch.setenv("MEP_HF_TRITON", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="MEP_HF_TRITON=1 .* run on CUDA, but the state is on cpu"):
        triton_enabled(torch.zeros(1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter runs them on the CPU (the tests' way)
    assert triton_enabled(torch.zeros(1)) and not triton_enabled(torch.zeros(1, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compiled Triton kernels run on CUDA only")
def test_fused_kernels_match_torch_on_cuda():
    from mep_hf.kernels.dense import DenseLinearization
    from mep_hf.kernels.triton_dense import TritonDenseLinearization
    from mep_hf.models.mlp.modeling_ep_mlp import EPDenseBlock

    block = EPDenseBlock(8, 4, "tanh").cuda()
    assert isinstance(DenseLinearization.maybe(block.linear, "tanh", torch.rand(2, 8, device="cuda")),
                      TritonDenseLinearization)  # fmt: skip
    result = run_check("cuda")
    assert result["max_abs_diff"] <= 1e-4, result
