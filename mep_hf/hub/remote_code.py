"""Self-contained remote code for ``trust_remote_code=True``: mep_hf classes flattened into files that import only
installed libraries (torch, transformers, ...), never mep_hf.

transformers' remote-code mechanism (``register_for_auto_class`` + ``save_pretrained``) copies the file that
defines a class and the files it imports with *same-folder* relative imports (``from .x import y``). The EP model
files import helpers from the package above them (``from ...modeling_utils import ...``), which that mechanism
cannot carry. :func:`flatten_sources` does what transformers' modular converter does for its own models: it reads the
source of the requested classes, follows every name they use into the mep_hf modules that define it, and writes one
flat file per requested module holding exactly the definitions reached (classes, functions, constants), in an order
that executes, plus the external imports they need. The package keeps one copy of every definition; the flat files
are generated output, like ``modeling_mistral.py`` from ``modular_mistral.py``.

What is carried: top-level classes, functions and assignments, followed through imports (re-exports included),
and the external imports they use. What is not: other top-level statements (a registration call, an ``if`` block):
a definition that needs one fails loudly in ``package``'s check that the flat model computes what the mep_hf model
computes, as does a relative import inside a function (:class:`FlattenError`).

A generated file holds only what the model runs. Two things are left out on purpose:

* The EP engine (:mod:`mep_hf.equilibrium`): the names model code takes from it come from
  :mod:`mep_hf.hub.remote_standins` instead (:data:`STANDINS`), so no generated file carries the layered energy's
  machinery, and none changes when the engine does.
* The methods named in :data:`PRUNED_METHODS`, in the files of models whose ``forward`` does not run them.
  ``ep_linearize`` is an optional fast path of the EP engine for feed-forward models (closed-form block products,
  fused Triton kernels; see :mod:`mep_hf.kernels`): without it the engine linearizes a block by autograd, so those
  remote-code models still run, generate, fine-tune and train by EP with mep_hf's ``EPTrainer``. A settling model
  (the Hopfield ones: the file carries ``linearize_block``) runs its blocks' closed forms in ``forward``, so its
  file keeps them.

:func:`save_with_remote_code` then runs transformers' own mechanism on the flat classes: it imports them from the
generated files, calls ``register_for_auto_class``, loads the weights into them and ``save_pretrained`` writes the
folder, ``auto_map`` included.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import sys
import tempfile
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

from ..tasks import TASKS, task_of_class

PACKAGE = "mep_hf"
_PACKAGE_IDS = itertools.count()
# Optional engine fast paths that stay in mep_hf, unless the model's forward runs them (see the module docstring).
PRUNED_METHODS = frozenset({"ep_linearize"})
# Modules whose definitions generated code takes from a stand-in module instead (see the module docstring).
STANDINS = {f"{PACKAGE}.equilibrium": f"{PACKAGE}.hub.remote_standins"}
# A file that carries this definition settles its states through its blocks' closed forms: it keeps them.
SETTLING = (f"{PACKAGE}.hub.remote_standins", "linearize_block")
HEADER = '''"""Generated from mep_hf {version} by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from {sources}.

{about}
"""
'''
ABOUT = "Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed."
# What the header adds when a file's classes had the methods of PRUNED_METHODS: left out, or kept (settling models).
PRUNED_NOTE = ("The EP engine's optional closed-form kernels (`ep_linearize`) are left out; install mep_hf "
               "(`pip install mep-hf`) to train with them.")
KEPT_NOTE = ("Its blocks' closed forms (`ep_linearize`) stay: `forward` settles through them. Install mep_hf "
             "(`pip install mep-hf`) to train it by EP.")


class FlattenError(ValueError):
    """The requested classes use a construct the flattener does not carry (it says which and where)."""


@dataclass
class _Import:
    """A name a module imports: from another mep_hf module (``internal``) or from an installed library."""

    local: str
    module: str  # absolute module name
    attr: str | None  # None: ``import module [as local]``

    @property
    def internal(self) -> bool:
        return self.module == PACKAGE or self.module.startswith(PACKAGE + ".")

    def statement(self) -> str:
        if self.attr is None:
            if self.local == self.module.split(".")[0] and "." not in self.module:
                return f"import {self.module}"
            return f"import {self.module} as {self.local}"
        return f"from {self.module} import {self.attr}" + ("" if self.local == self.attr else f" as {self.local}")


@dataclass
class _Module:
    """The top-level definitions and imports of one source module."""

    name: str
    path: Path
    source: str
    defs: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, _Import] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str) -> _Module:
        module = importlib.import_module(name)
        path = Path(inspect.getsourcefile(module))
        source = path.read_text(encoding="utf-8")
        self = cls(name, path, source)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(source).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                self.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            self.defs[leaf.id] = node
            elif isinstance(node, ast.ImportFrom):
                if node.module == "__future__":
                    continue
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
                for alias in node.names:
                    if alias.name == "*":
                        raise FlattenError(f"{path}: `from {base} import *` cannot be flattened")
                    self.imports[alias.asname or alias.name] = _Import(alias.asname or alias.name, base, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    module = alias.name if alias.asname else alias.name.split(".")[0]
                    self.imports[local] = _Import(local, module, None)
        return self


def _used_names(node: ast.AST) -> set[str]:
    """Every name ``node`` reads, except in function signatures' annotations (strings under ``from __future__ import
    annotations``, never evaluated at import)."""
    names: set[str] = set()

    def visit(n: ast.AST) -> None:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in n.decorator_list:
                visit(d)
            args = n.args
            for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
                visit(default)
            for stmt in n.body:
                visit(stmt)
            return
        if isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "level", 0):
            raise FlattenError(f"a relative import inside a function (line {n.lineno}) cannot be flattened")
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):  # a dataclass field's own name is no use of one
            names.add(n.id)
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return names


def _pruned_class_source(module: _Module, node: ast.ClassDef, pruned: frozenset) -> tuple[str, ast.ClassDef]:
    """Source of class ``node`` without the methods named in ``pruned``, and its re-parsed tree."""
    lines = module.source.splitlines(keepends=True)
    start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
    keep = list(range(start, node.end_lineno))
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in pruned:
            first = (item.decorator_list[0].lineno if item.decorator_list else item.lineno) - 1
            drop = set(range(first, item.end_lineno))
            # a blank line that separated the method from the next one goes with it
            if item.end_lineno < node.end_lineno and not lines[item.end_lineno].strip():
                drop.add(item.end_lineno)
            keep = [i for i in keep if i not in drop]
    text = "".join(lines[i] for i in keep)
    tree = ast.parse(text).body[0]
    return text, tree


def _segment(module: _Module, node: ast.stmt) -> str:
    lines = module.source.splitlines(keepends=True)
    start = (node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno) - 1
    return "".join(lines[start : node.end_lineno])


class _Flattener:
    def __init__(self):
        self.modules: dict[str, _Module] = {}
        self.pruned: frozenset = PRUNED_METHODS  # methods left out of the classes (set per file)

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            self.modules[name] = _Module.parse(name)
        return self.modules[name]

    def resolve(self, module: str, name: str, seen: frozenset = frozenset()) -> tuple[str, str]:
        """The (module, name) that *defines* ``name`` as seen from ``module`` (following re-exports)."""
        if (module, name) in seen:
            raise FlattenError(f"import cycle resolving {name} from {module}")
        if module in STANDINS:
            if name not in self.module(STANDINS[module]).defs:
                raise FlattenError(f"remote code carries no EP engine: `{name}` of {module} has no stand-in in "
                                   f"{STANDINS[module]}")
            return STANDINS[module], name
        mod = self.module(module)
        if name in mod.defs:
            return module, name
        imp = mod.imports.get(name)
        if imp is not None and imp.internal:
            if imp.attr is None:
                raise FlattenError(f"{mod.path}: `import {imp.module}` (a module object) cannot be flattened")
            target = f"{imp.module}.{imp.attr}"
            if importlib.util.find_spec(imp.module) is not None and _is_module(target):
                raise FlattenError(f"{mod.path}: importing the module {target} cannot be flattened; import names")
            return self.resolve(imp.module, imp.attr, seen | {(module, name)})
        raise FlattenError(f"{name} is not defined in {module}")

    def code_of(self, key: tuple[str, str]) -> tuple[str, ast.stmt]:
        mod = self.module(key[0])
        node = mod.defs[key[1]]
        if isinstance(node, ast.ClassDef):
            return _pruned_class_source(mod, node, self.pruned)
        return _segment(mod, node), node

    def names_used(self, key: tuple[str, str], node: ast.AST) -> set[str]:
        try:
            return _used_names(node)
        except FlattenError as err:
            raise FlattenError(f"{self.module(key[0]).path}, `{key[1]}`: {err}") from None


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def flatten_sources(objects: list[type], version: str | None = None) -> dict[str, str]:
    """Flat, mep_hf-free source files for ``objects`` (classes defined in mep_hf), as ``{file name: source}``.

    Each class goes to a file named like the module that defines it (``modeling_ep_mlp.py``), so the ``auto_map``
    entries transformers writes (``"modeling_ep_mlp.EPMLPForImageClassification"``) point at it. Files are filled in
    the order of ``objects``: a definition a later file also needs is imported from the earlier file
    (``from .configuration_ep_mlp import EPMLPConfig``), a same-folder import that the remote-code loader follows.
    """
    if version is None:
        from ..version import __version__ as version
    flat = _Flattener()
    files: dict[str, list[type]] = {}
    for obj in objects:
        if not obj.__module__.startswith(PACKAGE + "."):
            raise FlattenError(f"{obj.__qualname__} is not defined in {PACKAGE}")
        files.setdefault(obj.__module__.rpartition(".")[2], []).append(obj)
    home: dict[tuple[str, str], str] = {}  # definition -> file that holds it
    out: dict[str, str] = {}
    for file, objs in files.items():
        roots = [(o.__module__, o.__name__) for o in objs]
        flat.pruned = PRUNED_METHODS
        walk = _walk(flat, roots, home, file)
        if SETTLING in walk[0]:  # forward settles through the blocks' closed forms: they stay
            flat.pruned = frozenset()
            walk = _walk(flat, roots, home, file)
        order = walk[0]
        names: dict[str, tuple[str, str]] = {}
        for key in order:
            if names.setdefault(key[1], key) != key:
                raise FlattenError(f"two definitions named {key[1]}: in {names[key[1]][0]} and {key[0]}")
            home[key] = file
        out[file + ".py"] = _render(flat, file, *walk, version)
    return out


def _walk(flat: _Flattener, roots: list[tuple[str, str]], home: dict[tuple[str, str], str], file: str):
    """The definitions one file holds (discovery order), the external imports they use, the names they take from
    earlier files (``siblings``) and the module edges (a module, a module it takes a definition from)."""
    order: list[tuple[str, str]] = []
    externals: dict[str, _Import] = {}
    siblings: dict[str, set[str]] = {}
    edges: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()
    stack = list(reversed(roots))
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        if key in home and home[key] != file:
            siblings.setdefault(home[key], set()).add(key[1])
            continue
        order.append(key)
        _, node = flat.code_of(key)
        mod = flat.module(key[0])
        for name in sorted(flat.names_used(key, node)):
            if name == key[1] or name not in mod.defs and name not in mod.imports:
                continue  # builtins, locals, the definition itself
            imp = mod.imports.get(name)
            if imp is not None and not imp.internal:
                previous = externals.setdefault(name, imp)
                if previous.statement() != imp.statement():
                    raise FlattenError(f"`{name}` means {previous.statement()!r} and {imp.statement()!r}")
                continue
            target = flat.resolve(key[0], name)
            if target[1] != name:
                raise FlattenError(f"{mod.path}: `{name}` is an alias of {target[1]}; import it under its name")
            if target[0] != key[0]:
                edges.add((key[0], target[0]))
            stack.append(target)
    return order, externals, siblings, edges


def _module_rank(order: list[tuple[str, str]], edges: set[tuple[str, str]]) -> dict[str, int]:
    """Modules sorted so that each comes after the modules it takes definitions from (those run first)."""
    mods = list(dict.fromkeys(m for m, _ in order))
    deps = {m: {b for a, b in edges if a == m and b in mods} for m in mods}
    ranked: list[str] = []
    while len(ranked) < len(mods):
        ready = [m for m in mods if m not in ranked and deps[m] <= set(ranked)]
        if not ready:
            raise FlattenError(f"import cycle between {sorted(set(mods) - set(ranked))}")
        ranked.extend(ready)
    return {m: i for i, m in enumerate(ranked)}


def _render(flat, file, order, externals, siblings, edges, version) -> str:
    rank = _module_rank(order, edges)
    first_seen = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in order))}
    order = sorted(order, key=lambda k: (rank[k[0]], first_seen[k[0]], flat.module(k[0]).defs[k[1]].lineno))
    blocks, emitted = [], set()
    for key in order:
        node = flat.module(key[0]).defs[key[1]]
        if id(node) in emitted:  # ``a = b = ...`` defines two names in one statement
            continue
        emitted.add(id(node))
        blocks.append(flat.code_of(key)[0].rstrip() + "\n")
    sources = ", ".join(sorted({f"`{m}`" for m, _ in order}))
    plain = sorted({i.statement() for i in externals.values() if i.attr is None})
    names_from: dict[str, set[str]] = {}
    for i in externals.values():
        if i.attr is not None:
            names_from.setdefault(i.module, set()).add(i.attr if i.local == i.attr else f"{i.attr} as {i.local}")
    imports = plain + [f"from {m} import {', '.join(sorted(n))}" for m, n in sorted(names_from.items())]
    relative = [f"from .{sib} import {', '.join(sorted(names))}" for sib, names in sorted(siblings.items())]
    has_pruned = any(isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in PRUNED_METHODS
                     for m, n in order if isinstance(node := flat.module(m).defs[n], ast.ClassDef)
                     for item in node.body)
    about = ABOUT + ("" if not has_pruned else " " + (PRUNED_NOTE if flat.pruned else KEPT_NOTE))
    text = (
        HEADER.format(version=version, sources=sources, about=textwrap.fill(about, 116))
        + "\nfrom __future__ import annotations\n\n"
        + "\n".join(imports)
        + ("\n\n" + "\n".join(relative) if relative else "")
        + "\n\n\n"
        + "\n\n".join(blocks)
    )
    text = text.rstrip() + "\n"
    try:
        compile(text, file + ".py", "exec")
    except SyntaxError as err:  # pragma: no cover - a flattener bug, not a user error
        raise FlattenError(f"generated {file}.py does not compile: {err}") from err
    return text


def import_flat_sources(sources: dict[str, str], directory: str | Path) -> types.ModuleType:
    """Write ``sources`` into ``directory`` and import them as one throw-away package (relative imports work);
    returns the package, whose submodules are ``package.<file stem>``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (directory / name).write_text(text, encoding="utf-8")
    # A fresh name per call: the files of an earlier call may be gone, and transformers' save copies them by path.
    package_name = f"_mep_hf_remote_{next(_PACKAGE_IDS)}_{hashlib.sha256(str(directory).encode()).hexdigest()[:8]}"
    package = types.ModuleType(package_name)
    package.__path__ = [str(directory)]
    sys.modules[package_name] = package
    for name in sources:
        setattr(package, name[:-3], importlib.import_module(f"{package_name}.{name[:-3]}"))
    return package


def flat_classes(objects: list[type], directory: str | Path | None = None) -> dict[type, type]:
    """``{mep_hf class: its flat twin}``, imported from generated files (in ``directory``, or a temporary one)."""
    sources = flatten_sources(objects)
    directory = directory or tempfile.mkdtemp(prefix="mep_hf_remote_")
    package = import_flat_sources(sources, directory)
    return {o: getattr(getattr(package, o.__module__.rpartition(".")[2]), o.__name__) for o in objects}


def auto_class_name(model_class: type) -> str:
    """The Auto class that loads ``model_class`` (:mod:`mep_hf.tasks`)."""
    task = task_of_class(model_class.__name__)
    if task is None:
        suffixes = ", ".join(t.class_suffix for t in TASKS.values())
        raise FlattenError(f"no Auto class known for {model_class.__name__} (suffixes: {suffixes})")
    return task.auto_class


def _entry(cls: type) -> str:
    return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"


def add_remote_code(save_directory: str | Path, model, image_processor=None) -> list[str]:
    """Make a folder that ``model.save_pretrained`` (and ``image_processor.save_pretrained``) wrote loadable with
    ``trust_remote_code=True`` where mep_hf is not installed: write the flat code next to the weights and add the
    ``auto_map`` entries transformers' ``register_for_auto_class`` would write. Returns the files written.

    The zoo's ``package`` goes through ``register_for_auto_class`` itself; this is the same result for any saved
    folder (a Trainer's ``output_dir``, its checkpoints: see :class:`EPRemoteCodeMixin`)."""
    import json

    save_directory = Path(save_directory)
    config_class, model_class = type(model.config), type(model)
    objects = [config_class, model_class] + ([type(image_processor)] if image_processor is not None else [])
    sources = flatten_sources(objects)
    for name, text in sources.items():
        (save_directory / name).write_text(text, encoding="utf-8")
    entries = {"config.json": {"AutoConfig": _entry(config_class), auto_class_name(model_class): _entry(model_class)}}
    if image_processor is not None:
        entries["preprocessor_config.json"] = {"AutoImageProcessor": _entry(type(image_processor))}
    for file, auto_map in entries.items():
        path = save_directory / file
        data = json.loads(path.read_text(encoding="utf-8"))
        data["auto_map"] = {**data.get("auto_map", {}), **auto_map}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sorted(sources)


class EPRemoteCodeMixin:
    """``Trainer._save`` + :func:`add_remote_code`: every folder the trainer saves (``save_model``, checkpoints, the
    folder ``push_to_hub`` uploads) carries the flat code of its mep_hf model, so it loads with
    ``trust_remote_code=True`` without mep_hf. Models not defined in ``mep_hf.models`` are left as they are.

    Mix it in before ``Trainer``: ``class EPTrainer(EPRemoteCodeMixin, ..., Trainer)``."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and type(model).__module__.startswith(f"{PACKAGE}.models."):
            from transformers.image_processing_utils import BaseImageProcessor

            processor = self.processing_class  # tokenizers ship no code (a fast one is a plain tokenizer.json)
            if not (isinstance(processor, BaseImageProcessor) and type(processor).__module__.startswith(PACKAGE)):
                processor = None
            add_remote_code(output_dir if output_dir is not None else self.args.output_dir, model, processor)
