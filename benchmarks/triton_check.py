"""The fused Triton dense kernels against the torch path: max abs difference of every product and of a whole EP
gradient, on the same block, state and batch.

    python benchmarks/triton_check.py                              # on CUDA
    TRITON_INTERPRET=1 python benchmarks/triton_check.py --device cpu --batch_size 16 --hidden_sizes 24 24

On the CPU the kernels run in Triton's interpreter (correctness only; it is slow). Prints one JSON object; its
``max_abs_diff`` is the largest difference over everything compared.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from mep_hf import EPMLPConfig, EPMLPForImageClassification, SettleConfig, free_phase, nudged_phases
from mep_hf.energies.layered import Contrast
from mep_hf.kernels import dense
from mep_hf.kernels.triton_dense import ACTIVATION_CODES, TritonDenseLinearization
from mep_hf.models.mlp.modeling_ep_mlp import EPDenseBlock


@dataclass
class CheckArguments:
    device: str = "cuda"
    batch_size: int = 128
    input_size: int = 784
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 512])
    num_labels: int = 10
    seed: int = 0


def _max_diff(a, b) -> float:
    return float((a - b).abs().max())


def block_products(args: CheckArguments) -> dict[str, float]:
    """Forward, state VJP and parameter gradients of one dense block, per activation."""
    out = {}
    width = args.hidden_sizes[0]
    for activation in ACTIVATION_CODES:
        block = EPDenseBlock(args.input_size, width, activation).to(args.device)
        s = torch.rand(args.batch_size, args.input_size, device=args.device)
        e = 1e-2 * torch.randn(args.batch_size, width, device=args.device)
        fused, plain = TritonDenseLinearization(block.linear, activation, s), dense.DenseLinearization(
            block.linear, activation, s
        )
        diffs = [_max_diff(fused.output, plain.output), _max_diff(fused.vjp(e), plain.vjp(e))]
        diffs += [_max_diff(a, b) for (_, a), (_, b) in zip(fused.parameter_grads(e, -0.7), plain.parameter_grads(e, -0.7))]
        out[f"block_{activation}"] = max(diffs)
    return out


def ep_gradient(args: CheckArguments, triton: bool) -> list[torch.Tensor]:
    """The EP gradient of an MLP (positive nudging, one sweep), every dense block on one path."""
    torch.manual_seed(args.seed)
    config = EPMLPConfig(input_size=args.input_size, hidden_sizes=args.hidden_sizes, num_labels=args.num_labels)
    model = EPMLPForImageClassification(config).to(args.device).eval()
    x = torch.rand(args.batch_size, args.input_size, device=args.device)
    y = torch.randint(0, args.num_labels, (args.batch_size,), device=args.device)
    os.environ["MEP_HF_TRITON"] = "1" if triton else "0"
    stack = model.ep_stack(pixel_values=x, labels=y)
    free = free_phase(stack)
    phases = nudged_phases(stack, free, 0.01, "positive", SettleConfig(steps=1))
    contrast = model(pixel_values=x, labels=y, ep_contrast=Contrast(phases, first_block=free.blocks[0]))
    return list(torch.autograd.grad(contrast, list(model.parameters())))


def main(argv: list[str] | None = None) -> dict[str, float]:
    (args,) = HfArgumentParser(CheckArguments).parse_args_into_dataclasses(args=argv)
    torch.manual_seed(args.seed)
    result = block_products(args)
    mode = os.environ.get("MEP_HF_TRITON")
    try:
        fused, plain = ep_gradient(args, triton=True), ep_gradient(args, triton=False)
    finally:  # leave the caller's kernel choice as it was
        if mode is None:
            del os.environ["MEP_HF_TRITON"]
        else:
            os.environ["MEP_HF_TRITON"] = mode
    result["ep_gradient"] = max(_max_diff(a, b) for a, b in zip(fused, plain))
    result["ep_gradient_scale"] = max(float(b.abs().max()) for b in plain)
    result["max_abs_diff"] = max(v for k, v in result.items() if k != "ep_gradient_scale")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
