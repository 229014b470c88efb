import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch
from datasets import Dataset

# The test models are tiny: one thread avoids oversubscription stalls when other processes share the cores.
torch.set_num_threads(1)

from mep_hf import EPMLPConfig, EPMLPForImageClassification, EPTrainingArguments


def toy_images(n: int = 256, seed: int = 0) -> Dataset:
    """A learnable 4-class problem on 8x8 'images': the label is the quadrant with the brightest mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    labels = torch.randint(0, 4, (n,), generator=g)
    for i, lab in enumerate(labels.tolist()):
        r, c = divmod(lab, 2)
        x[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 0.5
    return Dataset.from_dict({"pixel_values": x.numpy(), "labels": labels.numpy()}).with_format("torch")


def toy_model(seed: int = 0, **config) -> EPMLPForImageClassification:
    torch.manual_seed(seed)
    config = {"input_size": 64, "hidden_sizes": [32, 32], "num_labels": 4, **config}
    return EPMLPForImageClassification(EPMLPConfig(**config))


def toy_args(tmp_path, **overrides) -> EPTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        max_steps=20,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        ep_beta=0.01,
        ep_nudging="positive",
    )
    return EPTrainingArguments(**{**defaults, **overrides})


@pytest.fixture
def dataset():
    return toy_images()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def load_example(monkeypatch):
    """Import a script of ``examples/`` as a module (freshly, with ``examples/`` on the path for its helpers)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name):
        sys.modules.pop(name, None)
        return __import__(name)

    return load
