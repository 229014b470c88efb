"""The Hub side of mep-hf: model cards that state the EP settings, the model zoo (package / publish / pull / index),
and the self-contained remote code that lets zoo models load with ``trust_remote_code=True`` without mep_hf.

* :class:`EPModelCardMixin`, :func:`ep_settings`: the Trainer's own card names every EP setting.
* :func:`package`, :func:`publish`, :func:`pull`, :func:`write_index`: the ``mep-hf-zoo`` command (``cli.py``).
* :func:`flatten_sources`: mep_hf classes as flat files importing no mep_hf module (``remote_code.py``);
  :func:`add_remote_code` / :class:`EPRemoteCodeMixin` put them (and ``auto_map``) in any saved folder.
"""

from .cards import EP_TAGS, EPModelCardMixin, add_ep_section, ep_settings
from .remote_code import EPRemoteCodeMixin, FlattenError, add_remote_code, flatten_sources
from .runs import Run, RunDirError, read_pickled_args
from .curve import plot_training_curve
from .catalog import plan, render_index, write_index
from .packager import package
from .specs import ZOO_DATASETS, ZooError
from .transfer import publish, pull

__all__ = [
    "EP_TAGS",
    "EPModelCardMixin",
    "EPRemoteCodeMixin",
    "FlattenError",
    "Run",
    "RunDirError",
    "ZOO_DATASETS",
    "ZooError",
    "add_ep_section",
    "add_remote_code",
    "ep_settings",
    "flatten_sources",
    "package",
    "plan",
    "plot_training_curve",
    "publish",
    "pull",
    "read_pickled_args",
    "render_index",
    "write_index",
]
