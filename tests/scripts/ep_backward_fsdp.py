"""Under torchrun (2 gloo processes): ``mep_hf.ep_backward`` of a model sharded by ``mep_hf.shard_for_ep`` (FSDP2)
on this rank's half of the batch; each rank saves the full gradients (gathered from the DTensor shards), its local
shard sizes and the most FSDP units it held gathered at once. The helper of
``tests/test_fsdp.py::test_fsdp2_equals_one_process_on_the_doubled_batch``.

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/ep_backward_fsdp.py --out DIR

``MEP_FSDP_DEVICE=cuda``: one GPU per rank, nccl (``benchmarks/gpu_checks.sh``; the reference stays on the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup  # noqa: E402

import mep_hf  # noqa: E402
from tests.scripts.ep_backward_ddp import launched  # noqa: E402
from tests.test_fsdp import CASES, SETTINGS, llama_case  # noqa: E402


class GatherCount:
    """The most FSDP parameter groups unsharded at once while active (FSDP2's own state, read at each gather)."""

    def __init__(self):
        self.groups, self.most = [], 0

    def __enter__(self):
        self._wait = FSDPParamGroup.wait_for_unshard

        def wait_for_unshard(group, *args, **kwargs):
            out = self._wait(group, *args, **kwargs)
            self.most = max(self.most, sum(g.is_unsharded for g in self.groups))
            return out

        FSDPParamGroup.wait_for_unshard = wait_for_unshard
        return self

    def __exit__(self, *exc):
        FSDPParamGroup.wait_for_unshard = self._wait


DEVICE = os.environ.get("MEP_FSDP_DEVICE", "cpu")


def on_device(case):
    """The case's model and batch on this rank's device (a GPU per rank under ``MEP_FSDP_DEVICE=cuda``)."""
    model, batch = case()
    device = "cpu" if DEVICE == "cpu" else f"cuda:{dist.get_rank()}"
    return model.to(device), {k: v.to(device) for k, v in batch.items()}


def groups(model) -> list:
    """Each FSDP parameter group once (the modules of one ``fully_shard([a, b])`` unit share it)."""
    found = [g for m in model.modules() if hasattr(m, "_get_fsdp_state") for g in m._get_fsdp_state()._fsdp_param_groups]
    return list({id(g): g for g in found}.values())


def resume(out: Path, rank: int, world: int) -> dict:
    """Step, save a sharded checkpoint, step again; then a fresh model and optimizer (another init) load it and
    take that second step: the parameters must be the ones of the run that went on. A changed shard is refused."""
    def run(seed):
        model = mep_hf.shard_for_ep(on_device(lambda: llama_case(seed))[0])
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step(model, optimizer, batch):
        mep_hf.ep_backward(model, {k: v.chunk(world)[rank] for k, v in batch.items()}, **SETTINGS)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def full(model):
        return [p.full_tensor() for p in model.parameters()]

    batch = on_device(llama_case)[1]
    second = {k: v.roll(1, 0) for k, v in batch.items()}
    model, optimizer = run(0)
    step(model, optimizer, batch)
    mep_hf.save_sharded_checkpoint(str(out / "ckpt"), model, optimizer, step=1)
    step(model, optimizer, second)
    went_on = full(model)
    resumed, optimizer = run(1)
    manifest = mep_hf.load_sharded_checkpoint(str(out / "ckpt"), resumed, optimizer)
    step(resumed, optimizer, second)
    fresh, fresh_optimizer = run(1)  # the negative control: no checkpoint loaded
    step(fresh, fresh_optimizer, second)
    if rank == 0:
        shutil.copytree(out / "ckpt", out / "ckpt_bad")
        shard = next((out / "ckpt_bad").glob("*.distcp"))
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 1
        shard.write_bytes(bytes(data))
    dist.barrier()
    try:
        mep_hf.load_sharded_checkpoint(str(out / "ckpt_bad"), *run(1))
        refused = None
    except mep_hf.CheckpointIntegrityError as error:
        refused = str(error)
    return {"step": manifest["step"], "files": len(manifest["files"]),
            "max_diff": max(float((a - b).abs().max()) for a, b in zip(full(resumed), went_on)),
            "fresh_max_diff": max(float((a - b).abs().max()) for a, b in zip(full(fresh), went_on)),
            "changed_shard": refused}


def trainer_refusal(out: Path) -> str | None:
    """EPTrainer given Trainer's own ``fsdp`` arguments under this CPU launch (accelerate: MULTI_CPU, no FSDP)."""
    from tests.conftest import toy_args, toy_images, toy_model

    args = toy_args(out, fsdp=True, fsdp_config={"fsdp_version": 2}, use_cpu=True)
    try:
        mep_hf.EPTrainer(model=toy_model(), args=args, train_dataset=toy_images(32))
    except ValueError as error:
        return str(error)
    return None


def main() -> None:
    out, rank, world = launched("gloo" if DEVICE == "cpu" else "nccl")
    if DEVICE != "cpu":
        torch.cuda.set_device(rank)
    saved, report = {}, {}
    for name, (case, memory) in CASES.items():
        model, batch = on_device(case)
        half = {k: v.chunk(world)[rank] for k, v in batch.items()}
        mep_hf.shard_for_ep(model)
        with GatherCount() as count:
            count.groups = groups(model)
            mep_hf.ep_backward(model, half, **SETTINGS, ep_memory=memory)
        params = list(model.named_parameters())
        saved.update({f"{name}.{n}": q.grad.full_tensor().cpu() for n, q in params})
        report[name] = {
            "grads_sharded": all(type(q.grad).__name__ == "DTensor" for _, q in params),
            "local_numel": sum(q.to_local().numel() + q.grad.to_local().numel() for _, q in params),
            "full_numel": sum(2 * q.numel() for _, q in params),
            "units": len(count.groups), "most_gathered": count.most,
            "idle_gathered": sum(g.is_unsharded for g in count.groups),
        }
    report["resume"] = resume(out, rank, world)
    # The usual FSDP2 recipe (layers + root) leaves the embeddings and head to the root: refused by name.
    model, batch = on_device(CASES["llama"][0])
    mep_hf.prepare_ep_model(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    try:
        mep_hf.ep_backward(model, {k: v.chunk(world)[rank] for k, v in batch.items()}, **SETTINGS)
        report["root_refusal"] = None
    except ValueError as error:
        report["root_refusal"] = str(error)
    report["trainer_fsdp"] = trainer_refusal(out)
    save_file(saved, str(out / f"grads_rank{rank}.safetensors"))
    (out / f"report_rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
