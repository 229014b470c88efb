#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script: the fused Triton kernels against the torch path, their tests on
# the device, and the transformer memory/time table on the GPU. Writes into $OUT (default docs/gpu).
#     bash benchmarks/gpu_checks.sh
set -euo pipefail
out="${OUT:-docs/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python benchmarks/triton_check.py | tee "$out/triton_check.json"
python -m pytest -q tests/test_triton.py 2>&1 | tee "$out/test_triton.txt"
python benchmarks/transformer_memory.py --use_cpu false --repeats 10 --output_dir "$out" 2>&1 | tail -20
# Sharded memory (docs/sharded_memory.md) on the device: the one-process rows on one GPU; the FSDP2 rows (nccl, one
# process per GPU) and the EP-under-FSDP2 test (tests/test_fsdp.py on GPUs) only where 2 GPUs are lent.
# Not run yet: no GPU was lent to the task that wrote them.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    MEP_FSDP_DEVICE=cuda python -m pytest -q tests/test_fsdp.py 2>&1 | tee "$out/test_fsdp.txt"
    python benchmarks/sharded_memory.py --device cuda --output_dir "$out" 2>&1 | tail -30
else
    python benchmarks/sharded_memory.py --device cuda --sharded false --output_dir "$out" 2>&1 | tail -30
fi
