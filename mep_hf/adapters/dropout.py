"""Dropout under EP: one mask per step, shared by every phase and by the contrast.

EP's gradient is a difference of energies of several phases divided by β, so every phase (free, ±β nudged) and the
contrast that re-evaluates them must see the *same* network. A fresh dropout mask at every block call would make
each phase a different network, and the O(β) signal would drown in O(p/β) noise. One mask per step, on the other
hand, is exactly what backprop does: one random sub-network per step, differentiated exactly.

Here each block call replays a random-number state fixed per step and block: the block runs inside
``torch.random.fork_rng`` after seeding the generators with its own seed, so every call of block ``l`` in one step
draws the same dropout masks (``nn.Dropout``, attention-probability dropout inside SDPA, functional dropout,
LoRA dropout, ...), whatever the order of the calls, and the global random stream is left as it was. The EP
gradient is then the exact backprop gradient of the step's sub-network (``tests/test_adapters.py`` checks it).

Seeds: :func:`step_seeds` draws one base seed from the global generator per EP step (so Trainer's ``seed`` and its
RNG checkpointing make runs reproducible) and keeps it on the model; the contrast's second ``ep_stack`` call replays
it (``replay=True``). Replay costs nothing in eval mode, where no block is wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

_SEED_ATTR = "_ep_dropout_seed"
# Config fields of dropout applied functionally (no nn.Dropout module shows it); classifier dropout is a module.
_DROPOUT_CONFIG_KEYS = ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop", "embedding_dropout",
                        "residual_dropout", "hidden_dropout")


def step_seeds(model: nn.Module, n_blocks: int, replay: bool) -> list[int] | None:
    """Per-block seeds for this EP step, or ``None`` when ``model`` is in eval mode (dropout is off).

    ``replay``: reuse the seeds of the last fresh call (the contrast re-evaluates the phases of that step).
    """
    if not model.training:
        return None
    base = getattr(model, _SEED_ATTR, None)
    if not replay or base is None:
        base = int(torch.randint(0, 2**62, (1,)).item())
        setattr(model, _SEED_ATTR, base)
    return [(base + 0x9E3779B97F4A7C15 * (l + 1)) % 2**63 for l in range(n_blocks)]


def shared_mask_blocks(blocks: Sequence[Callable[[Tensor], Tensor]], seeds: Sequence[int] | None, device):
    """``blocks``, each wrapped to replay its seed (unchanged when ``seeds`` is ``None``)."""
    if seeds is None:
        return list(blocks)
    return [_Replayed(block, seed, torch.device(device)) for block, seed in zip(blocks, seeds)]


class _Replayed:
    """A block that runs with the random generators seeded by ``seed``, restoring them afterwards."""

    def __init__(self, block: Callable[[Tensor], Tensor], seed: int, device: torch.device):
        self.block, self.seed, self.device = block, seed, device

    def __call__(self, s: Tensor) -> Tensor:
        accelerator = self.device.type != "cpu"
        devices = [self.device.index if self.device.index is not None else _current(self.device)] if accelerator else []
        kwargs = {"device_type": self.device.type} if accelerator else {}
        with torch.random.fork_rng(devices=devices, **kwargs):
            torch.random.default_generator.manual_seed(self.seed)
            if accelerator:
                getattr(torch, self.device.type).manual_seed(self.seed)  # the current device only
            return self.block(s)


def _current(device: torch.device) -> int:
    return getattr(torch, device.type).current_device()


def active_dropout(model: nn.Module) -> dict[str, float]:
    """Dropout probabilities > 0 that train mode would apply: ``nn.Dropout`` modules and config fields."""
    found = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0}
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            if key in _DROPOUT_CONFIG_KEYS and isinstance(value, float) and value > 0:
                found[f"config.{key}"] = value
    return found
