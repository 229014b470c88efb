"""EP under a sharded engine: FSDP2 (``torch.distributed.fsdp.fully_shard``), one unit per EP layer.

Why units per module: EP calls its blocks one at a time outside the model's ``forward`` (settling, the sweep's
VJPs) and inside it (the contrast), so every parameter must be gathered by the call of the module that uses it.
FSDP2 does exactly that for a sharded module (a forward pre-hook all-gathers, the post-hook frees; a VJP through a
kept graph re-gathers in its pre-backward hook), provided no parameter is left to the root, whose hooks run only in
``model.forward``. :func:`shard_for_ep` therefore shards each layer of the model's layer lists and each other module
that owns parameters (embeddings, final norm, head; modules sharing a tied weight as one unit), then the root.

The gradients: the contrast forms each layer's parameter gradient on the gathered (unsharded) parameter and hands
it to autograd through :class:`~mep_hf.equilibrium.LayerGradients`; the backward of the contrast accumulates them into
the unsharded parameters' ``.grad`` and FSDP2's post-backward reduce-scatters them into the sharded ``p.grad``
(DTensor, averaged over ranks as DDP averages), so the optimizer steps on shards. ``docs/sharded_memory.md``.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict

from torch import nn

from .adapters import prepare_ep_model
from .checkpointing import STAGING_PREFIX, CheckpointIntegrityError, publish, verify_checkpoint, write_manifest


def shard_for_ep(model: nn.Module, **fully_shard_kwargs) -> nn.Module:
    """Adapt ``model`` for EP (:func:`~mep_hf.prepare_ep_model`) and shard it with FSDP2 in place, one unit per
    layer / parameter-owning module, then the root; return it. ``fully_shard_kwargs`` (``mesh``, ``mp_policy``,
    ``reshard_after_forward``, ...) go to every ``fully_shard`` call. Needs an initialized process group.
    """
    from torch.distributed.fsdp import fully_shard

    prepare_ep_model(model)
    for unit in _units(model):
        fully_shard(unit if len(unit) > 1 else unit[0], **fully_shard_kwargs)
    if any(p is not None for p in model._parameters.values()):
        raise ValueError(f"{type(model).__name__} holds parameters itself, not in a submodule; EP's settling calls "
                         "the blocks outside model.forward, where FSDP2 does not gather a root's parameters")
    fully_shard(model, **fully_shard_kwargs)
    ready_for_ep(model)
    return model


def _units(model: nn.Module) -> list[list[nn.Module]]:
    """The modules to shard, deepest first: each entry of a layer list (an ``nn.ModuleList`` whose entries hold
    parameters), then every other module that owns parameters directly; modules sharing a parameter form one unit."""
    units, covered = [], set()
    for lst in (m for m in model.modules() if isinstance(m, nn.ModuleList)):
        for layer in lst:
            if id(layer) not in covered and any(True for _ in layer.parameters()):
                units.append([layer])
                covered |= {id(m) for m in layer.modules()}
    rest = [m for m in _post_order(model) if m is not model and id(m) not in covered]
    owners = defaultdict(list)  # parameter -> the modules holding it directly (a tied weight: several)
    for module in rest:
        for p in module._parameters.values():
            if p is not None:
                owners[p].append(module)
    group: dict[int, list[nn.Module]] = {}  # module -> its unit: the owners of shared parameters merged
    for mods in owners.values():
        merged = list({id(m): m for x in mods for m in group.get(id(x), [x])}.values())
        for m in merged:
            group[id(m)] = merged
    for module in rest:
        unit = group.get(id(module))
        if unit is not None and unit[0] is module:
            units.append(unit)
    return units


def _post_order(module: nn.Module):
    for child in module.children():
        yield from _post_order(child)
    yield module


def ready_for_ep(model: nn.Module) -> None:
    """Make an FSDP2 ``model`` its own root before EP calls a sharded layer outside ``model.forward`` (FSDP2 takes
    the first sharded module to run as root, and a layer run by settling must not become it), and refuse a root
    that holds parameters: FSDP2 gathers those only inside ``model.forward``, while EP's settling runs outside it."""
    get_state = getattr(model, "_get_fsdp_state", None)
    if get_state is None:
        return
    state = get_state()
    state._lazy_init()
    held = [fp._param_fqn for group in state._fsdp_param_groups for fp in group.fsdp_params]
    if held:
        raise ValueError(
            f"the FSDP2 root holds parameters {held[:4]}{' ...' if len(held) > 4 else ''}: FSDP2 gathers a root's "
            "parameters only inside model.forward, but EP also calls the blocks outside it (settling). Shard every "
            "module that owns parameters as a unit of its own: mep_hf.shard_for_ep(model) does"
        )


def save_sharded_checkpoint(folder: str, model: nn.Module, optimizer=None, **metadata) -> None:
    """Save ``model`` (and ``optimizer``) shard by shard with ``torch.distributed.checkpoint``: every rank writes its
    own shards, no rank gathers the model. Published as EPTrainer publishes checkpoints: written into a staging
    folder, then rank 0 adds the manifest (each file's size and SHA-256, ``metadata``) last and renames the folder
    into place, so a save killed midway leaves no ``folder``. Call it on every rank."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    folder = os.path.abspath(folder)
    staged = os.path.join(os.path.dirname(folder), STAGING_PREFIX + os.path.basename(folder))
    if dist.get_rank() == 0:
        shutil.rmtree(staged, ignore_errors=True)
    dist.barrier()
    dcp.save(_state(model, optimizer), checkpoint_id=staged)
    dist.barrier()
    if dist.get_rank() == 0:
        write_manifest(staged, sharded="torch.distributed.checkpoint", world_size=dist.get_world_size(),
                       optimizer=optimizer is not None, **metadata)
        publish(staged, folder)
    dist.barrier()


def load_sharded_checkpoint(folder: str, model: nn.Module, optimizer=None) -> dict:
    """Verify ``folder`` against its manifest (refusing, by name, a file missing, changed or unlisted), then load
    each rank's shards of ``model`` (and ``optimizer``) in place; return the manifest. Call it on every rank."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    manifest = verify_checkpoint(folder, without_optimizer_state=True)  # the DCP files are the state
    if optimizer is not None and not manifest.get("optimizer"):
        raise CheckpointIntegrityError(f"checkpoint {folder} was saved without optimizer state; load the model "
                                       "alone (optimizer=None) to start a fresh optimizer")
    state = _state(model, optimizer)
    load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return manifest


def _state(model: nn.Module, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


__all__ = ["load_sharded_checkpoint", "ready_for_ep", "save_sharded_checkpoint", "shard_for_ep"]
