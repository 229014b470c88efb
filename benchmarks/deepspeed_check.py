"""EP under DeepSpeed ZeRO on CPU (gloo), 2 processes: each steps on half the batch through
``engine.backward(mep_hf.ep_loss(engine, half))`` and SGD(lr=1), so the update is minus the gradient; printed per
tensor against one process's EP gradient on the whole batch (relative error). Not a test: DeepSpeed is not a
dependency of mep-hf. ``docs/scale_out.md`` reports what it printed.

    pip install deepspeed        # 0.19.8: CPU accelerator, gloo
    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 benchmarks/deepspeed_check.py --stage 2 --model mlp
    (--stage 2|3, --model mlp|llama)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deepspeed  # noqa: E402
import torch  # noqa: E402

import mep_hf  # noqa: E402
from tests.test_ep_backward import grads  # noqa: E402
from tests.test_fsdp import SETTINGS, llama_case, mlp_case  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--model", choices=["mlp", "llama"], default="mlp")
    args = p.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    case = mlp_case if args.model == "mlp" else llama_case
    reference, batch = case()
    mep_hf.ep_backward(reference, batch, **SETTINGS)
    whole = dict(zip([n for n, _ in reference.named_parameters()], grads(reference)))
    before = {n: q.detach().clone() for n, q in reference.named_parameters()}
    model = case()[0]
    config = {"train_micro_batch_size_per_gpu": len(next(iter(batch.values()))) // world,
              "optimizer": {"type": "SGD", "params": {"lr": 1.0}}, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": args.stage}, "gradient_clipping": 0.0}
    engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
    engine.backward(mep_hf.ep_loss(engine, {k: v.chunk(world)[rank] for k, v in batch.items()}, **SETTINGS))
    engine.step()
    with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=args.stage == 3):
        after = {n: q.detach().clone() for n, q in model.named_parameters()}
    if rank == 0:
        for n, g in whole.items():
            print(f"stage {args.stage} {args.model} {n}: {float((before[n] - after[n] - g).norm() / g.norm()):.2e}")


if __name__ == "__main__":
    main()
