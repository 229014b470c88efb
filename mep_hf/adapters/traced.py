"""Models by structure: a stock model whose layers run from one ``nn.ModuleList`` becomes an EP block stack with no
row in the model-type table, and every head comes free.

Most transformers models compute ``embeddings → for layer in layers: h = layer(h, **same_kind_of_keywords) →
final norm + head + loss``. The stock ``forward`` itself is the adapter: each call runs it with the layers replaced
by stand-in modules that take their place for that call.

* block 1, ``s_0 → s_1``: the forward up to the first layer; ``s_1`` is the hidden state it hands that layer;
* block ``l + 1``: the model's own layer ``l`` called with what the forward gives it (masks, rotary tables,
  position ids: recorded once per batch by a run whose stand-ins compute nothing);
* the last block: the forward from the last layer's output to the output of the **head module** (the last module
  with parameters the forward runs: ``lm_head``, ``classifier``, ``qa_outputs``, ``score``); that output is ``s_L``;
* the loss: the forward's own tail from the head module's output on (pooling at the last token, soft-capping,
  splitting QA logits, reshaping multiple-choice scores, and the loss itself with ``num_items_in_batch``).

So QA, multiple choice and any other head are the stock code. Each block re-runs the embedding (cheap); the cost
of the generality is that work and the no-compute recording run. A model the recipe does not fit is refused when
it is adapted (``EPTrainer.__init__``), on a probe batch, naming what failed: no list of identical layers, layers
not called once each in order, layer inputs that depend on parameters, or traced blocks that do not reproduce the
forward's logits.

Encoder–decoder models (T5, BART, mBART ``*ForConditionalGeneration``) run two layer lists, and the decoder's
layers all read the encoder's last state (cross-attention): the energy is over a graph, not a chain. It is made a
chain by carrying the encoder's output through the decoder blocks as part of the state, concatenated along the
sequence axis: the block between the stacks (encoder norm, decoder embedding) maps ``h_enc ↦ [h_dec; e]``, and each
decoder layer ``[h; e] ↦ [layer(h, encoder_hidden_states=e); e]``. The sweep's VJP of a decoder block returns the
pass-through error plus that layer's cross-attention error into ``e``, so the encoder's last block receives the sum
of every decoder layer's error: what a DAG of states would give, with no change to the engine. Chosen over a
DAG-shaped ``BlockStack`` because the engine, its memory modes, the scale-free β and the audit stay the chain
code, tested once. With block states (``ep_memory="low"``) each carried copy adds an identity prediction-error
term per decoder block (the copy may move by O(β)); with inner states (``"fast"``) a block's output has no error of
its own, so the copy is exact. Both tend to backprop's gradient as β → 0 (``tests/test_structural_adapters.py``).

T5's first layer computes a relative position bias from its parameters and hands it to the others: each later
layer's block recomputes it from the first layer's bias table (``compute_bias``), so that table's gradient is the
sum of every block's contrast, as for any shared parameter.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from transformers.cache_utils import Cache
from transformers.utils import find_labels

from ..block_stack import BlockStack
from .base import bind_inputs, replaying
from .dropout import shared_mask_blocks, step_seeds

MAIN_INPUTS = ("input_ids", "pixel_values", "input_values", "input_features")


class DoesNotFit(TypeError):
    """The model's structure is not the one this adapter turns into blocks; the message says what failed."""


class _Stop(Exception):
    """Ends a traced call of the forward once it has what it came for."""

    def __init__(self, value):
        super().__init__("traced forward stopped")
        self.value = value


class _StandIn(nn.Module):
    """Takes a module's place (``real``) in the model for one traced call; ``trace`` decides what it does.
    Attributes the forward reads off the module (``attention_type``, ...) come from the real one."""

    def __init__(self, real: nn.Module, trace: _Trace, index: int | None = None):
        super().__init__()
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "trace", trace)
        object.__setattr__(self, "index", index)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "real"), name)


class _LayerStandIn(_StandIn):
    """Layer ``index`` of the layer list."""

    def forward(self, *args, **kwargs):
        return self.trace.layer_call(self.index, args, kwargs)


class _HeadStandIn(_StandIn):
    """The head module: returns ``given`` (the output state) or stops after the real head."""

    def forward(self, *args, **kwargs):
        if self.trace.mode == "output":
            return self.trace.given
        raise _Stop(self.real(*args, **kwargs))


class _Trace:
    """What the stand-ins do in one traced call.

    * ``record``: record each layer's inputs, stop at the last layer;
    * ``between``: pass each layer's hidden state through, give ``given`` as the output of layer ``after`` (none:
      the forward's own embedding), and stop at layer ``until`` with the state it would get (none: after the
      real head, with its output);
    * ``output``: pass the layers through and give ``given`` as the head module's output.
    """

    def __init__(self, structure: TracedStructure, mode: str = "record", given=None, after: int | None = None,
                 until: int | None = None):
        self.structure, self.mode, self.given, self.after, self.until = structure, mode, given, after, until
        self.calls = []
        self.last_output = None  # (shape, dtype, device) of the last layer's output, for ``output`` mode

    def layer_call(self, index: int, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.mode == "record":
            self.calls.append((index, args, kwargs))
            if index == self.structure.n_layers - 1:
                raise _Stop(None)
        elif self.mode == "between":
            if index == self.until:
                raise _Stop(self.structure.state_at(index, args, kwargs))
            if index == self.after:
                hidden = self.given
        elif self.mode == "output" and index == self.structure.n_layers - 1 and self.last_output is not None:
            # What follows the layers (a final norm) runs on a stand-in of the right shape; the head's output is
            # then replaced by the state, so nothing of it reaches the result.
            shape, dtype, device = self.last_output
            hidden = torch.zeros(shape, dtype=dtype, device=device)
        width = self.structure.tuple_output[index]
        return (hidden, *[None] * (width - 1)) if width else hidden


class _StatisticsOnce:
    """Batch-norm running statistics move once per EP step, as in backprop's one forward: the first call that runs
    a norm in a step updates it; every later call of the step (settling, re-linearizing, the contrast, the traced
    forward's re-runs of the embeddings) puts its statistics back. The normalization itself always uses the
    calling phase's batch statistics in train mode (the step's function, as backprop differentiates it)."""

    def __init__(self, model: nn.Module):
        self.norms = [m for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.moved: set[nn.Module] = set()

    def new_step(self) -> None:
        self.moved.clear()

    @contextlib.contextmanager
    def once(self):
        if not self.norms:
            yield
            return
        saved = {m: {k: b.clone() for k, b in m._buffers.items() if b is not None} for m in self.norms}
        try:
            yield
        finally:
            for m, before in saved.items():
                if m in self.moved:  # swapped back, not copied: a graph of the call may hold the moved tensors
                    m._buffers.update(before)
                elif any(not torch.equal(m._buffers[k], old) for k, old in before.items()):
                    self.moved.add(m)


_TOPK = (torch.topk, Tensor.topk)


class _RoutingOnce(TorchFunctionMode):
    """Top-k choices (a mixture of experts' routing) made once per EP step: a layer's first call of the step records
    the indices of each top-k it takes; its later calls (settling, the contrast) reuse them, taking the values at
    those indices from their own input. So every phase and the contrast run the same routed network, as dropout
    masks are shared, and the router's weights stay a smooth function of the state. Active only for models whose
    layers take a top-k (found on the probe batch), so no other model pays Python dispatch for its torch calls."""

    def __init__(self):
        super().__init__()
        self.choices: dict[int, list[Tensor]] = {}
        self.replay: list[Tensor] | None = None
        self.record: list[Tensor] | None = None

    def new_step(self) -> None:
        self.choices.clear()

    @contextlib.contextmanager
    def once(self, layer: int):
        recorded = self.choices.get(layer)
        self.record, self.replay = (None, iter(recorded)) if recorded is not None else (
            self.choices.setdefault(layer, []), None)
        with self:
            yield

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _TOPK:
            return func(*args, **kwargs)
        if self.replay is None:
            result = func(*args, **kwargs)
            self.record.append(result.indices)
            return result
        indices = next(self.replay, None)
        if indices is None:
            raise RuntimeError("a layer took more top-k choices than in the step's free pass; EP needs every phase "
                               "to run the same routed network")
        dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
        return torch.return_types.topk((args[0].gather(dim, indices), indices))


class TracedStructure:
    """A model's layer list(s) and head module, found and checked once (:func:`trace_structure`).

    Layers are numbered across the lists in call order (an encoder's, then a decoder's). A layer whose call gets
    ``encoder_hidden_states`` (a decoder layer's cross-attention) *carries* them: its block's state is
    ``[h; e]`` (:func:`state_at`).
    """

    def __init__(self, model: nn.Module, layers_paths: list[str], head_path: str, tuple_output: list[int],
                 carries: list[bool], bias_from: list[nn.Module | None], routes: bool = False):
        """``tuple_output``: per layer, the length of the tuple it returns (0: a tensor); ``carries``: per layer,
        whether it reads a carried encoder state; ``bias_from``: per layer, the module whose ``compute_bias``
        gives the position bias the layer is handed (T5: the first layer's attention), or ``None``; ``routes``: its
        layers take top-k choices (mixture of experts)."""
        self.layers_paths, self.head_path, self.tuple_output = layers_paths, head_path, tuple_output
        self.carries, self.bias_from = carries, bias_from
        self.forward = type(model).forward  # the class forward: the instance's routes EP's contrast
        self.label_names = find_labels(type(model))
        self.no_cache = _no_cache(self.forward)
        self.encoder_decoder = any(carries)
        self.statistics = _StatisticsOnce(model)
        self.routing = _RoutingOnce() if routes else None
        lists = [model.get_submodule(path) for path in layers_paths]
        self.list_index = [k for k, layers in enumerate(lists) for _ in layers]
        self.signatures = [inspect.signature(layer.forward) for layers in lists for layer in layers]

    @property
    def n_layers(self) -> int:
        return len(self.tuple_output)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return [layer for path in self.layers_paths for layer in model.get_submodule(path)]

    @contextlib.contextmanager
    def traced(self, model: nn.Module, trace: _Trace):
        """The layer lists' modules and the head module replaced by stand-ins for one call."""
        lists = [model.get_submodule(path) for path in self.layers_paths]
        parent_path, _, head_name = self.head_path.rpartition(".")
        parent = model.get_submodule(parent_path)
        real_lists, real_head = [dict(layers._modules) for layers in lists], parent._modules[head_name]
        try:
            index = 0
            for layers, real in zip(lists, real_lists):
                for name, layer in real.items():
                    layers._modules[name] = _LayerStandIn(layer, trace, index)
                    index += 1
            parent._modules[head_name] = _HeadStandIn(real_head, trace)
            yield
        finally:
            for layers, real in zip(lists, real_lists):
                layers._modules.update(real)
            parent._modules[head_name] = real_head

    def call(self, model: nn.Module, trace: _Trace, inputs: dict):
        """The stock forward under ``trace``: what a stand-in stopped it with, or its output."""
        with self.traced(model, trace), self.statistics.once():
            try:
                return self.forward(model, **inputs, **self.no_cache, return_dict=True)
            except _Stop as stop:
                return stop.value

    def state_at(self, index: int, args: tuple, kwargs: dict) -> Tensor:
        """The state layer ``index``'s block takes, from the layer's call: its hidden state, with the encoder
        state it reads appended along the sequence axis where it carries one."""
        hidden = args[0] if args else kwargs["hidden_states"]
        if not self.carries[index]:
            return hidden
        return torch.cat([hidden, self.signatures[index].bind(*args, **kwargs).arguments["encoder_hidden_states"]], 1)

    def ep_stack(self, model: nn.Module, args: tuple, kwargs: dict, need_labels: bool = True) -> BlockStack:
        kw = bind_inputs(model, args, kwargs)
        name = next((n for n in MAIN_INPUTS if kw.get(n) is not None), None)
        if name is None:
            raise ValueError(f"EP needs the model's main input in every batch (one of {', '.join(MAIN_INPUTS)})")
        batch_labels = {k: kw[k] for k in self.label_names if kw.get(k) is not None}
        if need_labels and not batch_labels:
            raise ValueError(f"EP training needs the labels in every batch ({', '.join(self.label_names)}): the "
                             "nudged phase pulls the output towards them")
        x = kw[name]
        inputs = {k: v for k, v in kw.items() if k not in self.label_names and v is not None}
        if self.encoder_decoder and inputs.get("decoder_input_ids") is None:
            inputs["decoder_input_ids"] = _decoder_inputs(model, batch_labels.get("labels"))
        if not replaying(model):  # a new step (the contrast's and the audit's calls replay this one)
            self.statistics.new_step()
            if self.routing is not None:
                self.routing.new_step()
        record = _Trace(self, "record")
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            self.call(model, record, inputs)  # dropout draws here must not move the step's random stream
        layers = self.layers(model)
        n = self.n_layers

        def between(after: int | None, until: int | None) -> Callable[[Tensor], Tensor]:
            """The forward from layer ``after``'s output (none: the main input) to layer ``until``'s input (none:
            the head module's output)."""

            def run(s: Tensor) -> Tensor:
                if after is None:
                    return self.call(model, _Trace(self, "between", until=until), {**inputs, name: s})
                h = s[:, :split[after]] if self.carries[after] else s
                if until is None:  # the tail: the output state's tail runs on a stand-in of this shape
                    last_output[:] = [(h.shape, h.dtype, h.device)]
                return self.call(model, _Trace(self, "between", h, after, until), inputs)

            return run

        split = [None] * n  # the hidden length of a carrying layer's state [h; e]
        last_output = []

        def layer(index: int, call_args: tuple, call_kwargs: dict) -> Callable[[Tensor], Tensor]:
            module, bias_from = layers[index], self.bias_from[index]
            split[index] = (call_args[0] if call_args else call_kwargs["hidden_states"]).shape[1]

            def run(s: Tensor) -> Tensor:
                given = {}
                if self.carries[index]:
                    s, given["encoder_hidden_states"] = s[:, :split[index]], s[:, split[index]:]
                if bias_from is not None:  # recomputed from the first layer's table: its gradient flows here too
                    given["position_bias"] = bias_from.compute_bias(s.shape[1], s.shape[1], device=s.device)
                bound = self.signatures[index].bind(*call_args, **call_kwargs)
                bound.arguments.update(given)
                bound.arguments[next(iter(bound.signature.parameters))] = s
                routing = self.routing.once(index) if self.routing is not None else contextlib.nullcontext()
                with self.statistics.once(), routing:
                    out = module(*bound.args, **bound.kwargs)
                out = out[0] if isinstance(out, tuple) else out
                return torch.cat([out, given["encoder_hidden_states"]], 1) if self.carries[index] else out

            return run

        def output(state: Tensor, labels: Tensor | None = None, **loss_kwargs):
            """The forward's own tail from the head module's output ``state`` on, with the batch's labels."""
            given = {"labels": labels} if labels is not None else {}
            trace = _Trace(self, "output", state)
            trace.last_output = last_output[0] if last_output else None
            return self.call(model, trace, {**inputs, **batch_labels, **given, **loss_kwargs})

        layer_blocks = [layer(i, a, k) for i, a, k in record.calls]
        # Between two layers of different lists (an encoder's last, a decoder's first): the forward in between.
        starts = [i for i in range(1, n) if self.list_index[i] != self.list_index[i - 1]]
        blocks = [between(None, 0)]
        for i, block in enumerate(layer_blocks):
            if i + 1 in starts:
                blocks += [block, between(i, i + 1)]
            else:
                blocks.append(block)
        blocks.append(between(n - 1, None))
        blocks = shared_mask_blocks(blocks, step_seeds(model, len(blocks), replaying(model)), x.device)
        return BlockStack(x, blocks, loss=lambda s: output(s)["loss"], output=output)


def _decoder_inputs(model: nn.Module, labels: Tensor | None) -> Tensor:
    """An encoder–decoder batch without ``decoder_input_ids``: the labels shifted right, as the forward and
    ``DataCollatorForSeq2Seq`` make them."""
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    shift = getattr(sys.modules[type(model).__module__], "shift_tokens_right", None)  # Whisper's forward uses it
    if labels is not None and prepare is not None:
        return prepare(labels=labels)
    if labels is not None and shift is not None and getattr(model.config, "decoder_start_token_id", None) is not None:
        return shift(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    raise ValueError(f"{type(model).__name__} needs decoder_input_ids in the batch, or labels to shift right into "
                     "them (prepare_decoder_input_ids_from_labels, or its module's shift_tokens_right)")


class _CountsTopk(TorchFunctionMode):
    """Counts the top-k choices a forward takes (a mixture of experts' routing)."""

    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func in _TOPK
        return func(*args, **(kwargs or {}))


def _no_cache(forward) -> dict:
    """``use_cache=False`` where the forward takes it (by name, or through ``**kwargs`` to its base model): a cache
    would make every call of a layer see the keys of the calls before."""
    params = inspect.signature(forward).parameters.values()
    takes = any(p.name == "use_cache" or p.kind is p.VAR_KEYWORD for p in params)
    return {"use_cache": False} if takes else {}


def find_layer_lists(model: nn.Module) -> list[str]:
    """The paths of the model's layer lists: the ``nn.ModuleList`` of identical modules holding the most
    parameters, not inside another such list, and for an encoder–decoder the second (its other stack). Refuses a
    model with none, or a model that is no encoder–decoder with a second list nearly as large."""
    candidates = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size and not any(path.startswith(other + ".") for other in candidates):
                candidates[path] = size
    if not candidates:
        raise DoesNotFit("no list of identical layers (an nn.ModuleList) was found to make EP blocks of")
    ranked = sorted(candidates, key=candidates.get, reverse=True)
    stacks = [p for p in ranked if candidates[p] >= 0.25 * candidates[ranked[0]]]
    if len(stacks) == 1:
        return stacks
    if getattr(model.config, "is_encoder_decoder", False) and len(stacks) == 2:
        return stacks  # put in call order by trace_structure
    raise DoesNotFit(f"it runs several layer stacks ({', '.join(stacks)}) and is no encoder-decoder with two")


def probe_batch(model: nn.Module) -> dict:
    """A small batch of the model's main input for the structural check: 2 rows of 6 tokens (3 choices for
    multiple choice), 2 images of the config's size, 2 clips of raw audio, or 2 log-mel spectrograms of the length
    the encoder takes; an encoder–decoder's decoder gets 5 tokens, so that the lengths differ."""
    config, params = model.config, inspect.signature(type(model).forward).parameters
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    vocab = getattr(config.get_text_config(), "vocab_size", 32)

    def tokens(*shape: int) -> Tensor:
        return torch.randint(min(4, vocab - 1), max(5, min(vocab, 64)), shape, generator=g).to(device)

    if "input_ids" in params:
        ids = tokens(2, 3, 6) if type(model).__name__.endswith("ForMultipleChoice") else tokens(2, 6)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    elif "pixel_values" in params:
        size, channels = getattr(config, "image_size", 32), getattr(config, "num_channels", 3)
        size = size if isinstance(size, int) else size[0]
        batch = {"pixel_values": torch.rand(2, channels, size, size, generator=g).to(device, dtype)}
    elif "input_values" in params:  # raw audio: a tenth of a second at 16 kHz
        batch = {"input_values": torch.randn(2, 1600, generator=g).to(device, dtype)}
    elif "input_features" in params and hasattr(config, "num_mel_bins"):  # Whisper: two frames per position
        frames = 2 * getattr(config, "max_source_positions", 1500)
        batch = {"input_features": torch.randn(2, config.num_mel_bins, frames, generator=g).to(device, dtype)}
    else:
        raise DoesNotFit("its forward takes none of input_ids / pixel_values / input_values / input_features, so "
                         "no probe batch could check its structure")
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        batch["decoder_input_ids"] = tokens(2, 5)
    return batch


def _bias_table(first_layer: nn.Module) -> nn.Module | None:
    """The module of a list's first layer that computes the position bias the later layers are handed (T5's
    self-attention with ``has_relative_attention_bias``), if exactly one does."""
    found = [m for m in first_layer.modules() if getattr(m, "has_relative_attention_bias", False)
             and callable(getattr(m, "compute_bias", None))]
    return found[0] if len(found) == 1 else None


def trace_structure(model: nn.Module) -> TracedStructure:
    """Find the layer list(s) and the head module and check, on a probe batch, that the traced blocks reproduce
    the stock forward; refuse naming what failed."""
    paths = find_layer_lists(model)
    lists = {path: list(model.get_submodule(path)) for path in paths}
    batch = probe_batch(model)
    forward = type(model).forward
    calls, order, outputs = [], [], []
    names = {m: n for n, m in model.named_modules()}
    in_layers = {m for layers in lists.values() for layer in layers for m in layer.modules()}

    def on_layer(module, args, kwargs):
        calls.append((module, args, kwargs))

    def on_layer_output(module, args, output):
        outputs.append(len(output) if isinstance(output, tuple) else 0)

    def on_module(module, args, output):
        if module not in in_layers and next(module.parameters(recurse=False), None) is not None:
            order.append(module)

    was_training = model.training
    model.eval()
    handles = [layer.register_forward_pre_hook(on_layer, with_kwargs=True) for ls in lists.values() for layer in ls]
    handles += [ls[0].register_forward_hook(on_layer_output) for ls in lists.values()]
    handles.append(torch.nn.modules.module.register_module_forward_hook(on_module))
    try:
        with torch.enable_grad(), _CountsTopk() as topk:  # layer inputs with a graph depend on parameters
            reference = forward(model, **batch, **_no_cache(forward), return_dict=True)
    except Exception as err:
        raise DoesNotFit(f"its forward did not run on a probe batch ({type(err).__name__}: {err})") from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    first_call = {p: next((i for i, c in enumerate(calls) if c[0] is ls[0]), len(calls)) for p, ls in lists.items()}
    paths = sorted(paths, key=first_call.get)  # the encoder's list first
    layers = [layer for path in paths for layer in lists[path]]
    if [c[0] for c in calls] != layers:
        raise DoesNotFit(f"its forward does not call each of its {len(layers)} layers ({', '.join(paths)}) once, "
                                 "in order")
    carries, bias_from = [], []
    for layer, args, kwargs in calls:
        if any(isinstance(v, Cache) for v in [*args, *kwargs.values()]):
            raise DoesNotFit("its forward hands its layers a key/value cache even with use_cache=False")
        bound = inspect.signature(layer.forward).bind(*args, **kwargs).arguments
        hidden = next(iter(bound))
        carries.append(len(paths) > 1 and bound.get("encoder_hidden_states") is not None)
        first = next(ls[0] for ls in lists.values() if layer in ls)
        # A position bias handed on from the list's first layer (T5) is recomputed in each block from that layer's
        # table: the record run's stand-ins hand on nothing, and the table's gradient must reach every block.
        handed = isinstance(bound.get("position_bias"), Tensor) and layer is not first
        table = _bias_table(first) if handed else None
        for key, value in bound.items():
            carried = key == "encoder_hidden_states" and carries[-1]
            if key == hidden or carried or (key == "position_bias" and table is not None):
                continue  # the state itself, the carried encoder state, a recomputed bias
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (
                value,)
            if any(isinstance(t, Tensor) and t.requires_grad for t in values):
                raise DoesNotFit(f"its layers ({', '.join(paths)}) get inputs besides the hidden state that "
                                 f"depend on parameters ({key})")
        bias_from.append(table)
    if not order:
        raise DoesNotFit("its forward runs no module with parameters after its layers (no head)")
    head = order[-1]
    widths = []  # what each list's layers return: a tensor, or a tuple of this length (in call order)
    for path, width in zip(paths, outputs):
        widths += [width] * len(lists[path])
    structure = TracedStructure(model, paths, names[head], widths, carries, bias_from,
                                topk.calls > 0)
    _check_reproduces(model, structure, batch, reference)
    return structure


# Outputs of an encoder–decoder forward that are inner states of the stack, not functions of its output state: the
# traced tail does not reproduce them (the free phase's check compares the head's outputs).
INNER_OUTPUTS = ("encoder_last_hidden_state",)


def _check_reproduces(model: nn.Module, structure: TracedStructure, batch: dict, reference) -> None:
    """The traced blocks' feed-forward output against the stock forward's logits (float rounding allowed)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stack = structure.ep_stack(model, (), batch, need_labels=False)
            s = stack.inputs
            for block in stack.blocks:
                s = block(s)
            traced = stack.output(s)
    except Exception as err:  # a forward whose tail needs what the layers computed besides the hidden state
        raise DoesNotFit(f"its forward cannot run with its layers ({', '.join(structure.layers_paths)}) as separate "
                         f"blocks ({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)
    for key, expected in reference.items():
        if key == "loss" or key in INNER_OUTPUTS or not isinstance(expected, Tensor):
            continue
        got, expected = traced.get(key), expected.detach()
        scale = float(expected.abs().max()) or 1.0
        if got is None or got.shape != expected.shape or float((got - expected).abs().max()) > 1e-4 * scale:
            gap = "its shape" if got is None or got.shape != expected.shape else (
                f"{float((got - expected).abs().max()):.3g}")
            raise DoesNotFit(f"its forward does more than run its layers ({', '.join(structure.layers_paths)}) one "
                             f"after another: the traced blocks' {key} differ from the forward's ({gap})")
