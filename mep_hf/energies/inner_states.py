"""Inner states: an EP state at the output of every parameterized module inside a block (``ep_memory="fast"``).

With one state per block, a block whose parameters sit behind other products of the block (a decoder layer: the
attention projections under the MLP, the norm weights under q, k, v, gate and up) needs a full backward of the
block at the nudged state for its contrast. Giving each module that owns trainable parameters (a linear layer, a
norm, an embedding) a state of its own makes the energy finer::

    s_{l,m} = m(x_{l,m}) + e_{l,m}        E = 1/B Σ_l Σ_m ½‖e_{l,m}‖²

where ``x_{l,m}`` is what the block computes from its input state and the inner states before ``m``. The block's
output ``s_l`` is then a function of its input and inner states, with no error of its own (the sweep's error at
``s_l`` is only the message to the block below). The rest of the algorithm is unchanged and costs no extra product:

* a sweep sets each inner error to the adjoint at its module's output, read off the block's backward at its state;
* placing a phase runs the block with each module's error added to its output;
* the layer-local contrast of module ``m`` is ``−J_θm(x^β_{l,m})ᵀ e_{l,m}``: the module alone, at its own input
  (for a linear layer the one product ``eᵀx``), taken while the state is placed.

As β → 0 the contrast tends to ∇θ L as the block-state energy's does. The inner errors live from the sweep to the
contrast, about as much memory as backprop's activations: ``ep_memory="low"`` keeps block states only.

A normalization is scale-invariant in its input, so a state whose only way up is a normalization's input would be
displaced relative to its own, possibly tiny, scale (a post-norm's o_proj, a per-head q_norm's q_proj, a conv under a
batch norm) and leave the linear regime EP's estimate needs. Such a module is folded into the normalization's state,
and so is every module below it down to the nearest normalization outputs: that state's contrast runs all of them
(their backward inside the fold, then each folded module's parameter product). A normalization's input that adds a
well-scaled state (a pre-norm's residual stream) folds nothing.

Assumption, checked on every free pass: a module's parameters are used by its own forward only, modules with
parameters do not nest, their outputs are not modified in place, and a folded module feeds its normalization's
state only. A block that breaks it keeps block states, and so does a block with one state (nothing to save).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from ..equilibrium import parameter_grads


@dataclass
class InnerErrors:
    """One block's inner errors, one per parameterized module call in call order (``None``: the output was unused,
    or the module is folded into the state of call ``fold_into[k]``). ``owned[k]``: no other inner error shares
    that storage (autograd hands one gradient to both sides of a sum), so the placed state may go into it."""

    modules: list[nn.Module]
    errors: list[Tensor | None]
    fold_into: dict[int, int]
    owned: list[bool]

    @classmethod
    def read_off(cls, modules, errors: list[Tensor | None], fold_into: dict[int, int], message: Tensor) -> InnerErrors:
        """The inner errors of a backward whose input gradient is ``message``."""
        storages = Counter(t.untyped_storage().data_ptr() for t in (message, *errors) if t is not None)
        owned = [e is not None and storages[e.untyped_storage().data_ptr()] == 1 for e in errors]
        return cls(modules, errors, fold_into, owned)

    def tensors(self) -> list[Tensor]:
        return [e for e in self.errors if e is not None]

    def __mul__(self, factor: float) -> InnerErrors:
        """New tensors, each owned: a scaled sweep starts a phase of its own."""
        return InnerErrors(self.modules, [None if e is None else e * factor for e in self.errors], self.fold_into,
                           [e is not None for e in self.errors])


def own_parameters(module: nn.Module) -> list[Tensor]:
    """The trainable parameters a module holds itself (not its children's)."""
    return [p for p in module._parameters.values() if p is not None and p.requires_grad]


def is_normalization(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm (every model's own class), GroupNorm, BatchNorm...: by the naming all of them share."""
    return "norm" in type(module).__name__.lower()


class ModuleCalls:
    """While active, every call of a module that owns trainable parameters goes through ``on_output(k, module,
    args, output)`` (``k``: the call's index), which may replace the output. Records whether such calls nested.

    ``freeze``: each module runs with its own parameters out of autograd (restored when it returns), so the graph
    keeps what input VJPs need and not what only parameter gradients would (a linear layer's input): a free pass
    whose graphs serve the sweep alone holds far less. A parameter used outside its module's forward stays in the
    graph, which is how :meth:`FreeRun.finish` finds it.
    """

    def __init__(self, on_output: Callable | None = None, freeze: bool = False):
        self.on_output, self.freeze, self.modules, self.frames, self.nested = on_output, freeze, [], [], False

    def __enter__(self) -> ModuleCalls:
        self._handles = [register_module_forward_pre_hook(self._enter_module),
                         register_module_forward_hook(self._leave_module)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        while self.frames:  # a forward that raised: give every parameter back
            self._thaw(self.frames.pop())

    def _thaw(self, params: list[Tensor]) -> None:
        if self.freeze:
            for p in params:
                p.requires_grad_(True)

    def _enter_module(self, module, args):
        params = own_parameters(module)
        self.nested |= bool(params) and any(self.frames)
        self.frames.append(params)
        if self.freeze:
            for p in params:
                p.requires_grad_(False)

    def _leave_module(self, module, args, output):
        params = self.frames.pop()
        self._thaw(params)
        if not params:
            return None
        self.modules.append(module)
        return None if self.on_output is None else self.on_output(len(self.modules) - 1, module, args, output)


class FreeRun:
    """The ``on_output`` of a block's run with a kept graph: records each module's output (placed from ``inner``
    when given); :meth:`finish` then finds the folds and checks the assumption on the graph."""

    def __init__(self, inner: InnerErrors | None):
        self.inner, self.outputs, self.norm_inputs, self.tensors_only = inner, [], {}, True
        self.fold_into: dict[int, int] = {}

    def __call__(self, k: int, module: nn.Module, args: tuple, output):
        if not isinstance(output, Tensor):
            self.tensors_only = False
            return None
        if self.inner is not None:
            check_call_order(k, module, self.inner)
        if is_normalization(module) and args and isinstance(args[0], Tensor):
            self.norm_inputs[k] = args[0]
        e = None if self.inner is None else self.inner.errors[k]
        if e is not None:
            output = output + e.to(output.dtype)
        self.outputs.append((output, output._version))
        return output

    def finish(self, output: Tensor, input: Tensor, calls: ModuleCalls) -> bool:
        """Set :attr:`fold_into` from the block's graph; whether the block can have inner states."""
        if not self.tensors_only or calls.nested or output.grad_fn is None:
            return False
        uses, consumers = _graph(output)
        if any(p is not input for p in uses):
            return False  # a parameter used outside its module's forward (inside, they were frozen)
        produced = {t.grad_fn: k for k, (t, _) in enumerate(self.outputs) if t.grad_fn is not None}
        if len(produced) != len(self.outputs):
            return False
        for j, x in self.norm_inputs.items():
            below = _sole_producer(x.grad_fn, produced)
            if below is not None:
                self._fold_down(below, j, produced, calls.modules)
        if len(self.outputs) - len(self.fold_into) < 2:
            return False  # one state: its contrast is the block's own, so an inner state would only cost memory
        return all(self._only_feeds(k, j, produced, consumers) for k, j in self.fold_into.items())

    def _only_feeds(self, k: int, j: int, produced: dict, consumers: dict) -> bool:
        """Every use of folded call ``k``'s output reaches call ``j``'s state through modules folded into it only:
        never another state (whose contrast would miss ``k``'s parameters) or the block's output."""
        target, pending, seen = self.outputs[j][0].grad_fn, [self.outputs[k][0].grad_fn], set()
        while pending:
            node = pending.pop()
            if node is target or node in seen:
                continue
            seen.add(node)
            m = produced.get(node)
            if m is not None and self.fold_into.get(m) != j:
                return False  # another state
            above = consumers.get(node, [])
            if not above:
                return False  # the block's output, not through the state
            pending.extend(above)
        return True

    def _fold_down(self, k: int, j: int, produced: dict, modules: list) -> None:
        """Fold call ``k`` into call ``j``'s state, and every module below it down to normalization outputs."""
        self.fold_into[k], pending, seen = j, [self.outputs[k][0].grad_fn], set()
        while pending:
            node = pending.pop()
            for child, _ in node.next_functions:
                if child is None or child in seen:
                    continue
                seen.add(child)
                m = produced.get(child)
                if m is not None and is_normalization(modules[m]):
                    continue  # a normalization's output is well scaled: it stays a state
                if m is not None:
                    self.fold_into.setdefault(m, j)
                pending.append(child)

    def unchanged(self) -> bool:
        return all(t._version == v for t, v in self.outputs)

    def states(self) -> list[Tensor | None]:
        """The outputs that are states (``None`` for folded modules)."""
        return [None if k in self.fold_into else t for k, (t, _) in enumerate(self.outputs)]


def _graph(output: Tensor) -> tuple[set, dict]:
    """The leaves ``output``'s graph reaches, and each graph node's consumers."""
    uses, consumers, seen, pending = set(), {}, set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            variable = getattr(child, "variable", None)  # AccumulateGrad nodes hold their leaf
            if variable is not None:
                uses.add(variable)
            consumers.setdefault(child, []).append(node)
            pending.append(child)
    return uses, consumers


def _sole_producer(node, produced: dict) -> int | None:
    """The module call whose output alone a normalization's input is computed from (through single-input ops), or
    ``None`` when the input mixes in anything else (a residual stream)."""
    for _ in range(16):
        if node is None:
            return None
        if node in produced:
            return produced[node]
        inputs = [child for child, _ in node.next_functions if child is not None]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


def check_call_order(k: int, module: nn.Module, inner: InnerErrors) -> None:
    if k >= len(inner.modules) or inner.modules[k] is not module:
        raise RuntimeError(
            f"the block's parameterized modules ran in a different order than in the free phase (call {k}: "
            f"{type(module).__name__}); EP's inner states need a block that computes the same way in every phase"
        )


def place_and_contrast(run: Callable[[], Tensor], inner: InnerErrors, scale: float) -> tuple[Tensor, list]:
    """Run a block (``run``) with each module's inner error added to its output, and take each state's contrast
    ``scale · J_θ(x)ᵀ e`` at its own input as it runs: a graph of that module (and the module folded into it)
    alone, freed at once.

    Returns the block's output and the ``(parameter, gradient)`` pairs.
    """
    pairs = []

    def on_output(k: int, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        check_call_order(k, module, inner)
        if k in inner.fold_into:  # no state: its graph runs on into the state it is folded into
            return output
        e = inner.errors[k]
        if e is None:
            return output.detach()
        folded = [inner.modules[m] for m, j in inner.fold_into.items() if j == k]
        params = own_parameters(module) + [p for m in folded for p in own_parameters(m)]
        pairs.extend((p, g) for p, g in parameter_grads(output, params, e, scale) if g is not None)
        if inner.owned[k] and e.dtype == output.dtype:
            return e.add_(output.detach())  # the error dies here: its storage takes the state (no allocation)
        return output.detach() + e.to(output.dtype)

    with torch.enable_grad(), ModuleCalls(on_output) as calls:
        output = run()
    if len(calls.modules) != len(inner.modules):
        raise RuntimeError(f"the block ran {len(calls.modules)} parameterized modules, {len(inner.modules)} in the "
                           "free phase; EP's inner states need a block that computes the same way in every phase")
    return output.detach(), pairs
