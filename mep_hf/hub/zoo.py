"""The model zoo in one namespace: a training run becomes a complete Hub repo folder (:func:`package`), published
and fetched with huggingface_hub (:func:`publish`, :func:`pull`), checked without mep_hf (:func:`verify`), indexed
from the cards themselves (:func:`write_index`). Each job lives in a module of its own:

========================  =============================================================================
``specs``                 datasets and tasks the zoo knows, metric names, :class:`ZooError`
``packager``              run dir -> Hub repo folder (``mep-hf-zoo package``)
``run_card``, ``curve``   the folder's model card and ``training_curve.png``, read from the run
``regeneration``          the folder's remote code rewritten from mep_hf (``mep-hf-zoo regenerate``)
``catalog``               cards of planned checkpoints, ``model_zoo/README.md``'s table
``transfer``              publish / pull, and the SHA-256 record of every file they check
``verification``          the card's accuracy reproduced by ``pipeline()`` (``mep-hf-zoo verify``)
========================  =============================================================================
"""

from __future__ import annotations

from .curve import CURVE_FILE, plot_training_curve
from .catalog import INDEX_BEGIN, INDEX_END, index_rows, plan, render_index, write_index
from .packager import package
from .regeneration import packaged_folders, regenerate, remote_code_classes
from .run_card import PROMPT, card_usage
from .specs import LICENSE, TASKS, ZOO_DATASETS, ZOO_ORG, DatasetSpec, ZooError, task_of
from .transfer import FILES_RECORD, check_files, files_record, publish, pull, write_files_record
from .verification import WITHOUT_MEP_HF, run_without_mep_hf, verify

__all__ = [
    "CURVE_FILE", "FILES_RECORD", "INDEX_BEGIN", "INDEX_END", "LICENSE", "PROMPT", "TASKS", "WITHOUT_MEP_HF",
    "ZOO_DATASETS", "ZOO_ORG", "DatasetSpec", "ZooError", "card_usage", "check_files", "files_record",
    "index_rows", "package", "packaged_folders", "plan", "plot_training_curve", "publish", "pull", "regenerate",
    "remote_code_classes", "render_index", "run_without_mep_hf", "task_of", "verify", "write_files_record",
    "write_index",
]
