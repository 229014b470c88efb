"""Under torchrun (2 gloo processes): ``mep_hf.ep_backward`` of the float64 EP MLP on this rank's half of the batch of
``tests/test_ep_backward.py``, through DDP and (the negative control) on the unwrapped module; each rank saves both
gradients. The helper of ``test_ep_backward.py::test_two_gloo_processes_equal_one_process_on_the_doubled_batch``.

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/ep_backward_ddp.py --out DIR
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import mep_hf  # noqa: E402
from tests.test_ep_backward import EXACT, mlp_case  # noqa: E402


def launched(backend: str = "gloo") -> tuple[Path, int, int]:
    """``--out``, this process's rank and the world size, with its process group started (one thread per process)."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    torch.set_num_threads(1)
    dist.init_process_group(backend)
    return out, dist.get_rank(), dist.get_world_size()


def main() -> None:
    out, rank, world = launched()
    model, batch = mlp_case()
    half = {k: v.chunk(world)[rank] for k, v in batch.items()}
    ddp = DistributedDataParallel(model)
    saved = {}
    for name, wrapper in (("bypass", model), ("ddp", ddp)):  # the bypass first: it leaves DDP's reducer unarmed
        mep_hf.ep_backward(wrapper, half, **EXACT)
        saved.update({f"{name}.{n}": p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    save_file(saved, str(out / f"grads_rank{rank}.safetensors"))
    # Clean teardown: the DDP reducer goes before its process group, and the group before the interpreter exits.
    del ddp
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
