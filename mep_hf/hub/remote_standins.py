"""What generated remote code carries in place of the EP engine (:mod:`mep_hf.equilibrium`).

A model file reaches few engine names: the Hopfield models' ``forward`` settles their free phase through
:func:`linearize_block` (the :class:`~mep_hf.block_stack.BlockStack` every ``ep_stack`` returns has a module of its
own, which generated files carry as it is). The engine's own definitions bring in the layered energy's machinery
(autograd linearizations, inner states, the contrast), which no flat model runs.
:func:`mep_hf.hub.remote_code.flatten_sources` takes these definitions instead, so a generated file holds only what
the model runs and no generated file changes when the engine does. Every name a model file takes from
``mep_hf.equilibrium`` must be defined here (the flattener refuses the others).

``linearize_block`` takes a block's closed form (``ep_linearize``), which the files of settling models keep: the
Hopfield blocks' closed forms are plain torch ops, the very ones mep_hf's own ``forward`` runs.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


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
