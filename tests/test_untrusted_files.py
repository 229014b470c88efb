"""``from_pretrained`` refuses pickle weights (``pytorch_model.bin``) unless the caller opts in with allow_pickle=True.

The malicious file is a real torch checkpoint whose unpickling calls ``open(marker, "w")``: if anything ever
unpickles it, the marker file appears. transformers 5.24 on its own would pick ``pytorch_model.bin`` from a
folder without safetensors and read it with ``torch.load(weights_only=True)``, which blocks this payload; EP models
go further and never open the file at all without the opt-in.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageClassification

from mep_hf import EPMLPForImageClassification
from mep_hf.modeling_utils import UnsafeWeightsError
from tests.conftest import toy_model


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_folder(tmp_path, weights, name="pytorch_model.bin"):
    folder = tmp_path / "model"
    toy_model().config.save_pretrained(folder)
    torch.save(weights, folder / name)
    return folder


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "pwned"
    folder = pickle_folder(tmp_path, {"blocks.0.linear.weight": Payload(marker)})
    return folder, marker


def test_the_payload_really_runs_when_unpickled(tmp_path, malicious):
    """Control: the file is dangerous; a plain torch.load(weights_only=False) creates the marker."""
    folder, marker = malicious
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("loader", [EPMLPForImageClassification, AutoModelForImageClassification])
@pytest.mark.parametrize("extra", [{}, {"weights_only": False}], ids=["default", "weights_only_False"])
def test_pickle_weights_are_refused_without_opt_in(malicious, loader, extra):
    folder, marker = malicious
    with pytest.raises(UnsafeWeightsError, match=r"refusing to load the pickle weights file .*pytorch_model\.bin.*allow_pickle=True"):
        loader.from_pretrained(folder, **extra)
    assert not marker.exists()


def test_direct_path_to_a_bin_file_and_use_safetensors_false_are_refused(malicious):
    folder, marker = malicious
    with pytest.raises(UnsafeWeightsError):
        EPMLPForImageClassification.from_pretrained(folder, use_safetensors=False)
    # A direct file path: refused by our guard, or (transformers >= 5.2x) by transformers itself, which no longer
    # takes a weights file as the model path (an OSError naming the path). Either way nothing is unpickled.
    with pytest.raises((UnsafeWeightsError, OSError), match="refusing|Repo id"):
        EPMLPForImageClassification.from_pretrained(str(folder / "pytorch_model.bin"), config=str(folder))
    assert not marker.exists()


def test_safetensors_index_pointing_at_a_pickle_shard_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = pickle_folder(tmp_path, {"blocks.0.linear.weight": Payload(marker)}, name="shard.bin")
    index = {"metadata": {}, "weight_map": {k: "shard.bin" for k in toy_model().state_dict()}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeWeightsError, match=r"shard\.bin"):
        EPMLPForImageClassification.from_pretrained(folder)
    assert not marker.exists()


def test_opt_in_still_loads_with_weights_only(malicious):
    """allow_pickle=True hands over to transformers, whose torch.load(weights_only=True) still blocks the payload."""
    folder, marker = malicious
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        EPMLPForImageClassification.from_pretrained(folder, allow_pickle=True)
    assert not marker.exists()


def test_opt_in_loads_a_benign_pickle_checkpoint(tmp_path):
    model = toy_model(seed=3)
    folder = pickle_folder(tmp_path, model.state_dict())
    loaded = EPMLPForImageClassification.from_pretrained(folder, allow_pickle=True)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_safetensors_checkpoints_load_as_usual_and_the_guard_is_scoped(tmp_path):
    model = toy_model(seed=4)
    model.save_pretrained(tmp_path / "safe")
    assert sorted(p.name for p in (tmp_path / "safe").iterdir()) == ["config.json", "model.safetensors"]
    loaded = EPMLPForImageClassification.from_pretrained(tmp_path / "safe")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    from mep_hf.modeling_utils import _pickle_guard

    assert not getattr(_pickle_guard, "active", False)  # nothing leaks out of from_pretrained


def test_config_naming_a_pickle_weights_file_is_refused(tmp_path):
    """config.json's `transformers_weights` may name `adapter_model.bin` (transformers allows that one pickle name)."""
    marker = tmp_path / "pwned"
    folder = pickle_folder(tmp_path, {"blocks.0.linear.weight": Payload(marker)}, name="adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(UnsafeWeightsError, match=r"adapter_model\.bin"):
        EPMLPForImageClassification.from_pretrained(folder)
    assert not marker.exists()
