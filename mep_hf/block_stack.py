"""The model contract: a :class:`BlockStack` is what a model shows EP (its ``ep_stack`` returns one), and its
``forward``, decorated with :func:`routes_ep_contrast`, runs EP's contrast when the trainer asks for it.

It has no dependencies beyond torch, so generated remote code (:mod:`mep_hf.hub.remote_code`) carries it as it is,
without the engine that trains it (:mod:`mep_hf.equilibrium`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class BlockStack:
    """What a model shows EP: the input state, the blocks ``s_l = f_l(s_{l−1})``, and the task loss of ``s_L``.

    ``loss`` is the scalar EP nudges with, any function of the output state (a batch mean, a sum over tokens
    divided by the accumulation window's token count, ...); EP's gradient tends to ``∇θ loss``. The engine scales
    it by the batch size ``B`` only to keep each sample's error O(β).

    ``output`` (models set it; the bare engine does not need it) is the tail of the model's ``forward`` at an
    output state: ``output(s_L, labels=None, **loss_kwargs)`` gives the model output (``logits``, and ``loss`` when
    ``labels`` are given, computed as ``forward`` computes it, e.g. with ``num_items_in_batch``). ``EPTrainer``
    evaluates ``Trainer.compute_loss`` on it, so EP nudges with exactly the loss Trainer would backpropagate.
    Models validate ``inputs`` (shape, NaN/inf) where they can name the argument.
    """

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


def routes_ep_contrast(forward: Callable) -> Callable:
    """Decorate a model's ``forward`` so that ``model(**batch, ep_contrast=c)`` returns ``c(model.ep_stack(**batch))``.

    EP's contrast must run inside the (possibly DDP- or peft-wrapped) model's forward, so that gradient hooks fire
    as for any loss; this is the one place that routes it. Without ``ep_contrast`` the forward runs unchanged, and
    its signature is the undecorated one (the Trainer reads it to drop unused dataset columns). A model whose
    contrast call needs a setting (the stock-model adapters replay the step's dropout masks) offers it as the
    context manager ``ep_contrast_context()``.
    """

    @functools.wraps(forward)
    def routed(self, *args, ep_contrast=None, **kwargs):
        if ep_contrast is None:
            return forward(self, *args, **kwargs)
        context = getattr(self, "ep_contrast_context", contextlib.nullcontext)
        with context():
            stack = self.ep_stack(*args, **kwargs)
        return ep_contrast(stack)

    return routed
