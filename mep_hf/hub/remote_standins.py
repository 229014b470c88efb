"""What generated remote code carries in place of the EP engine (:mod:`mep_hf.equilibrium`).

A model file reaches a few engine names: every model's ``ep_stack`` returns a :class:`BlockStack`, and the Hopfield
models' ``forward`` settles their free phase through :func:`linearize_block`. The engine's own definitions bring in
the layered energy's machinery (autograd linearizations, inner states, the contrast), which no flat model runs.
:func:`mep_hf.hub.remote_code.flatten_sources` takes these definitions instead, so a generated file holds only what
the model runs and no generated file changes when the engine does. Every name a model file takes from
``mep_hf.equilibrium`` must be defined here (the flattener refuses the others).

``BlockStack`` has the engine's fields and methods (``tests/test_hub.py`` checks that they agree), so a flat model
still hands ``EPTrainer`` a stack it can train when mep_hf is installed. ``linearize_block`` takes a block's closed
form (``ep_linearize``), which the files of settling models keep: the Hopfield blocks' closed forms are plain torch
ops, the very ones mep_hf's own ``forward`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass
class BlockStack:
    """What a model shows EP: the input state, the blocks ``s_l = f_l(s_{l−1})``, the task loss of the output state,
    and ``output`` (the tail of the model's ``forward`` at an output state). Install mep-hf to train by EP."""

    inputs: Tensor
    blocks: Sequence[Callable[[Tensor], Tensor]]
    loss: Callable[[Tensor], Tensor]
    output: Callable[..., Any] | None = None

    def __post_init__(self):
        if len(self.blocks) == 0:
            raise ValueError("an EP block stack needs at least one block; the model exposed none")

    @classmethod
    def with_output(cls, inputs: Tensor, blocks: Sequence, output: Callable[..., Any], labels: Tensor) -> BlockStack:
        """A stack whose loss is the one the model's ``output`` reports for ``labels``."""
        return cls(inputs, blocks, loss=lambda s: output(s, labels=labels)["loss"], output=output)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]


class BlockLinearization(Protocol):
    """One block run at one input state: ``output = f(s)`` and the state VJP ``vjp(e) = J_f(s)ᵀ e``."""

    output: Tensor

    def vjp(self, e: Tensor) -> Tensor: ...


def linearize_block(block, state: Tensor, feed_dtype: torch.dtype | None, input_grad: bool,
                    **_) -> BlockLinearization:
    """The block's closed form at ``state`` (``block.ep_linearize``): how a flat settling model runs its blocks."""
    analytic = getattr(block, "ep_linearize", None)
    lin = analytic(state) if analytic is not None and feed_dtype in (None, state.dtype) else None
    if lin is None:
        raise NotImplementedError(
            f"{type(block).__name__} has no closed form at this state; this model's remote code settles only "
            "blocks that have one. Install mep-hf (`pip install mep-hf`) and `import mep_hf` to run it."
        )
    return lin
