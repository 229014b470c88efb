"""The family-neutral core of Equilibrium Propagation: what every energy family settles and contrasts with.

EP trains a network whose state ``s`` minimizes an energy ``E(s; θ)``. The loss ``L`` of the output state nudges
that minimum: ``F(s; θ, β) = E(s; θ) + β·L(s)``. With ``s^β`` a stationary point of ``F`` (a *phase*), the
gradient of the loss at the free state (β = 0) is a derivative in β (Scellier & Bengio 2017)::

    ∇θ L(s^0) = d/dβ ∂F/∂θ(s^β; θ, β) |_{β=0}

so EP estimates it from a few settled phases ``β_k`` as a finite difference ``Σ_k w_k ∂F/∂θ(s^{β_k})``, where
the states are held constant and each block's gradient is local. An *energy family*
(:mod:`mep_hf.energies`: the layered prediction-error energy, the Hopfield energy of classic EP) decides what ``E``
is and how a phase settles. Everything else is here:

* the nudging schemes (:func:`register_nudging`): which β each phase is settled at, and the finite-difference
  weights of its contrast (:func:`contrast_weights`, computed once for every scheme and family);
* one block at one state, kept ready for the two products EP needs (:class:`BlockLinearization`): the input VJP
  ``J_f(s)ᵀ e`` (settling) and the parameter product ``J_θ f(s)ᵀ e`` (the contrast), by autograd
  (:class:`AutogradBlock`) or a block's own closed form (:mod:`mep_hf.kernels`);
* how a contrast hands its parameter gradients to autograd (:class:`LayerGradients`), so the scalar a model's
  ``forward(ep_contrast=...)`` returns is backpropagated like any loss (DDP hooks included);
* the divergence rule (:func:`energy_diverged`, :class:`SettlingDivergedError`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without torch.distributed
    DTensor = None


class SettlingDivergedError(RuntimeError):
    """Settling made the energy non-finite or grow: the nudged phase has no usable equilibrium."""


def energy_diverged(energy: float, start: float, threshold: float) -> bool:
    """The divergence rule every family uses: the energy is non-finite, or grew past ``start + threshold·|start|``."""
    return not math.isfinite(energy) or energy - start > threshold * max(abs(start), 1e-12)


# ---- nudging schemes -------------------------------------------------------------------------------------------

NUDGING_SCHEMES: dict[str, Callable[[float], tuple[float, ...]]] = {}


def register_nudging(name: str):
    """Register a nudging scheme: a function ``β ↦`` the β of each nudged phase (nonzero, distinct). The contrast's
    weights follow from them (:func:`contrast_weights`), so a scheme is this one function."""

    def register(betas: Callable[[float], tuple[float, ...]]):
        if name in NUDGING_SCHEMES:
            raise ValueError(f"nudging scheme {name!r} is already registered")
        NUDGING_SCHEMES[name] = betas
        return betas

    return register


@register_nudging("positive")
def _positive(beta: float) -> tuple[float, ...]:
    """One phase at β: the contrast against the free state, bias O(β)."""
    return (beta,)


@register_nudging("centered")
def _centered(beta: float) -> tuple[float, ...]:
    """±β: the free state's term cancels and the O(β) bias with it, leaving O(β²) (Laborieux et al. 2021)."""
    return (beta, -beta)


@register_nudging("random_sign")
def _random_sign(beta: float) -> tuple[float, ...]:
    """One phase at ±β, the sign drawn from torch's global RNG: the O(β) bias changes sign from step to step and
    averages out over training at the cost of one phase (Laborieux et al. 2021)."""
    return (-beta,) if torch.randint(0, 2, ()).item() == 1 else (beta,)


@register_nudging("five_point")
def _five_point(beta: float) -> tuple[float, ...]:
    """±β and ±2β: the fourth-order centered difference (the five-point stencil, whose centre weight is zero), bias
    O(β⁴) for four phases. Where float rounding, not the bias, limits a small β, it reaches a given accuracy at a
    larger, better-conditioned β than ``centered``."""
    return (2 * beta, beta, -beta, -2 * beta)


def nudging_betas(beta: float, nudging: str) -> tuple[float, ...]:
    """The β of each nudged phase of the scheme ``nudging`` (:data:`NUDGING_SCHEMES`)."""
    if nudging not in NUDGING_SCHEMES:
        raise ValueError(f"unknown nudging scheme {nudging!r}; expected one of {tuple(NUDGING_SCHEMES)}")
    return NUDGING_SCHEMES[nudging](beta)


def contrast_weights(betas: tuple[float, ...] | list[float]) -> tuple[list[float], float]:
    """The weights ``w_k`` of the phases settled at ``betas`` and ``w_0`` of the free state (β = 0) such that
    ``Σ w_k G(β_k) + w_0 G(0)`` is ``G'(0)`` of the polynomial through those points: the derivative in β that EP's
    theorem asks for. Positive: ``(1/β; −1/β)``; centered: ``(1/2β, −1/2β; 0)``.

    These are the Lagrange basis derivatives at a node ``0``: ``L_k'(0) = 1/β_k · Π_{m≠k} β_m / (β_m − β_k)`` and
    ``L_0'(0) = −Σ_k 1/β_k``.
    """
    if len(set(betas)) != len(betas) or 0 in betas:
        raise ValueError(f"nudged phases need distinct nonzero betas, got {tuple(betas)}")
    weights = []
    for k, b in enumerate(betas):
        w = 1 / b
        for m, other in enumerate(betas):
            if m != k:
                w *= other / (other - b)
        weights.append(w)
    free = -sum(1 / b for b in sorted(betas, key=abs))  # symmetric schemes cancel exactly, pair by pair
    return weights, free


# ---- one block at one state --------------------------------------------------------------------------------------


class BlockLinearization(Protocol):
    """One block run at one input state, kept ready for the two products EP needs at that state.

    ``output`` is ``f(s)``. ``vjp(e)`` is ``J_f(s)ᵀ e`` into the input state (settling).
    ``parameter_grads(e, scale)`` is ``scale · J_θ f(s)ᵀ e`` as ``(parameter, gradient)`` pairs (the contrast); it
    is the linearization's last use and leaves ``e`` unchanged (the contrast then builds the state in its storage).
    Blocks get :class:`AutogradBlock` unless they offer a closed form through ``ep_linearize(state)``
    (see :mod:`mep_hf.kernels`).
    """

    output: Tensor

    def vjp(self, e: Tensor) -> Tensor: ...

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]: ...


class AutogradBlock:
    """Any callable block, run once with its one-block graph kept: both products by autograd.

    ``feed_dtype``: a float32 state enters the block in the dtype the previous block computed in (a bf16 model's
    own dtype; a no-op under autocast or in full precision), differentiably, so VJPs still arrive in float32.
    Subclasses change how the block runs (:meth:`run`).
    """

    def __init__(self, block: Callable[[Tensor], Tensor], state: Tensor, feed_dtype, input_grad: bool):
        with torch.enable_grad():
            self.input = state.detach().requires_grad_(input_grad)
            self.output = self.run(block, self.input if feed_dtype is None else self.input.to(feed_dtype))

    def run(self, block: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return block(x)

    def vjp(self, e: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(self.output, self.input, e, retain_graph=True)
        return g

    def parameter_grads(self, e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
        """Leaves (parameters) are found from the graph, so any callable works and tied weights add up."""
        leaves = self.leaves()
        return parameter_grads(self.output, leaves, e, scale) if leaves else []

    def leaves(self) -> list[Tensor]:
        """The parameters the block's graph reaches."""
        return [t for t in _graph_leaves([self.output.grad_fn]) if t is not self.input]

    def vjp_and_parameter_grads(self, error: list[Tensor], scale: float, input_grad: bool) -> tuple[Tensor | None, list]:
        """Both products from one backward of the graph (a sweep that is also the contrast, ``memory="low"``), the
        VJP ``None`` without ``input_grad`` (or an input that needs none); the linearization's last use. ``error``:
        a one-element list the call empties, so that the backward owns the error and frees it once the block's last
        op has used it, as backprop's backward frees a layer's output gradient. float16 keeps two backwards: its
        parameter product runs at the loss scale (:func:`parameter_grads`), the VJP at none."""
        leaves, input_grad = self.leaves(), input_grad and self.input.requires_grad
        if not input_grad or not leaves or self.output.dtype == torch.float16:
            e = error.pop()
            return (self.vjp(e) if input_grad else None), self.parameter_grads(e, scale)
        error.append(error.pop().to(self.output.dtype))
        root, self.output = _HandOver.apply(self.output, error), None  # nor is the output kept through the backward
        g, *grads = torch.autograd.grad(root, [self.input, *leaves], allow_unused=True)
        return g, [(p, g_p if g_p is None else g_p.mul_(scale)) for p, g_p in zip(leaves, grads)]


class _HandOver(torch.autograd.Function):
    """A scalar root over ``output`` whose backward hands the tensor in ``holder`` down as ``output``'s gradient:
    the engine then holds its only reference (``autograd.grad``'s ``grad_outputs`` stay referenced by the caller
    until the whole backward ends)."""

    @staticmethod
    def forward(ctx, output: Tensor, holder: list[Tensor]) -> Tensor:
        ctx.holder = holder
        return output.new_zeros(())

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.holder.pop(), None


def vjp_and_parameter_grads(block: BlockLinearization, error: list[Tensor], scale: float,
                            input_grad: bool) -> tuple[Tensor | None, list[tuple[Tensor, Tensor]]]:
    """``(J_f(s)ᵀ e or None, scale · J_θ f(s)ᵀ e)`` for ``error = [e]`` (emptied): in one backward where the block
    offers it (autograd's), else the closed form's two products."""
    fused = getattr(block, "vjp_and_parameter_grads", None)
    if fused is not None:
        return fused(error, scale, input_grad)
    e = error.pop()
    return (block.vjp(e) if input_grad else None), block.parameter_grads(e, scale)


def closed_form(block, state: Tensor, feed_dtype: torch.dtype | None) -> BlockLinearization | None:
    """The block's own analytic linearization at ``state`` (``block.ep_linearize``), where it offers one. Not for
    a block whose parameters are sharded (FSDP2, ZeRO-3): a closed form reads them outside the block's call, and only
    the call gathers them (``mep_hf.distributed``)."""
    return block.ep_linearize(state) if has_closed_form(block, state, feed_dtype) else None


def has_closed_form(block, state: Tensor, feed_dtype: torch.dtype | None) -> bool:
    """Whether ``block`` offers a closed form usable at ``state`` (checked without building it; its ``ep_linearize``
    may still decline, for :func:`linearize_block` to fall back on autograd)."""
    return getattr(block, "ep_linearize", None) is not None and feed_dtype in (None, state.dtype) and not _sharded(block)


def _sharded(block) -> bool:
    """Whether ``block`` holds a parameter as a shard: a DTensor (FSDP2 between its gathers) or a DeepSpeed ZeRO-3
    partition (``ds_tensor``)."""
    return any((DTensor is not None and isinstance(p, DTensor)) or hasattr(p, "ds_tensor") for p in block.parameters())


def linearize_block(block, state: Tensor, feed_dtype: torch.dtype | None, input_grad: bool) -> BlockLinearization:
    """The block's closed form where it has one for this state, else :class:`AutogradBlock`."""
    return closed_form(block, state, feed_dtype) or AutogradBlock(block, state, feed_dtype, input_grad)


def parameter_grads(output: Tensor, params: list[Tensor], e: Tensor, scale: float) -> list[tuple[Tensor, Tensor]]:
    """``scale · J_θ(output)ᵀ e`` as ``(parameter, gradient)`` pairs. The scale goes on the parameter-sized
    gradients (no error-sized copy), except in float16, where it goes on the error so that the backward of a
    half-precision block runs at the loss scale and does not underflow."""
    if output.dtype == torch.float16:
        return list(zip(params, torch.autograd.grad(output, params, (e * scale).to(output.dtype), allow_unused=True)))
    grads = torch.autograd.grad(output, params, e.to(output.dtype), allow_unused=True)
    return [(p, g if g is None else g.mul_(scale)) for p, g in zip(params, grads)]


def _graph_leaves(roots) -> list[Tensor]:
    """Leaf tensors (parameters) that require grad and reach ``roots``' autograd graph, in discovery order."""
    leaves, seen, stack = {}, set(), list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if variable is not None:
            leaves.setdefault(variable, None)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(leaves)


# ---- the contrast's gradients ----------------------------------------------------------------------------------------


def accumulate(grads: dict[Tensor, Tensor], pairs: list[tuple[Tensor, Tensor]]) -> None:
    """Add ``(parameter, gradient)`` pairs into ``grads`` (a parameter used by several blocks adds up)."""
    for parameter, g in pairs:
        if parameter in grads:
            grads[parameter] += g
        else:
            grads[parameter] = g


class LayerGradients(torch.autograd.Function):
    """The contrast's value, whose backward hands out the layer gradients computed while placing the states
    (times the incoming gradient, over ``grad_scale``) instead of differentiating a graph kept for the purpose.

    Consumed by one backward, like a graph without ``retain_graph``.
    """

    @staticmethod
    def forward(ctx, value: Tensor, grad_scale: float, grads: list[Tensor], *leaves: Tensor) -> Tensor:
        ctx.grads, ctx.grad_scale = grads, grad_scale
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the EP contrast was already backpropagated; its layer gradients are consumed")
        factor = float(grad) / ctx.grad_scale  # a Python number: one read-back, and no work at all when it is 1
        return (None, None, None, *(g if factor == 1 else g.mul_(factor) for g in grads))


def contrast_value(value: float, grad_scale: float, grads: dict[Tensor, Tensor], like: Tensor) -> Tensor:
    """The contrast's scalar ``value`` (a tensor of ``like``'s device, at least float32) carrying ``grads``."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    value = torch.tensor(value, dtype=dtype, device=like.device)
    return LayerGradients.apply(value, grad_scale, list(grads.values()), *grads)


__all__ = [
    "NUDGING_SCHEMES",
    "AutogradBlock",
    "BlockLinearization",
    "LayerGradients",
    "SettlingDivergedError",
    "accumulate",
    "closed_form",
    "contrast_value",
    "contrast_weights",
    "energy_diverged",
    "has_closed_form",
    "linearize_block",
    "nudging_betas",
    "parameter_grads",
    "register_nudging",
    "vjp_and_parameter_grads",
]
