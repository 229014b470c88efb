"""The zoo and the Hub, end to end against a Hub-protocol server started in this test session (tests/hub_server.py):
package a trained run, publish it with the project's command, pull it into an empty cache, load it with the Auto
classes and pipeline() (with mep_hf, and in a process where mep_hf cannot be imported), and get the card's numbers
back exactly; EPTrainer's push_to_hub with hub_strategy="checkpoint"; the card's contents; the zoo index."""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from PIL import Image

from conftest import toy_args, toy_model
from hub_server import HubServer, use_endpoint
from mep_hf import EPTrainer
from mep_hf.hub import (
    EPModelCardMixin,
    EPRemoteCodeMixin,
    ep_settings,
    flatten_sources,
    read_pickled_args,
    write_index,
)
from mep_hf.hub import zoo
from mep_hf.hub.cli import main as zoo_cli
from mep_hf.models import (
    EPCharTokenizer,
    EPCharTransformerConfig,
    EPCharTransformerForCausalLM,
    EPConvNetConfig,
    EPConvNetForImageClassification,
    EPHopfieldConvNetConfig,
    EPHopfieldMLPConfig,
    EPMLPConfig,
    EPMLPForImageClassification,
    EPResidualMLPConfig,
)
from mep_hf.models.char_transformer.tokenization_ep_char_fast import char_tokenizer_fast_from
from mep_hf.models.image_processing_ep import EPImageProcessor

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_token"


# --------------------------------------------------------------------------- fixtures: a Hub, toy runs
@pytest.fixture(scope="session")
def hub_server():
    server = HubServer(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path):
    """huggingface_hub and transformers pointed at the test server, online, with a token and an empty HF_HOME."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with use_endpoint(hub_server.endpoint):
        yield hub_server


def toy_uint8_images(n: int, seed: int) -> Dataset:
    """8x8 grayscale images with uint8 pixels (so PNG / PIL round trips are exact), stored as ``uint8 / 255`` like
    Fashion-MNIST; the label is the quadrant with a faint brighter patch (hard enough that accuracy is not 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    for i, lab in enumerate(labels.tolist()):
        r, c = divmod(lab, 2)
        x[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 40
    return Dataset.from_dict({"pixel_values": (x.float() / 255).numpy(), "labels": labels.numpy()}).with_format("torch")


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def write_run_info(out: Path, start: float, **extra) -> dict:
    info = {"command": "python tests/test_hub.py::toy", "train_seconds": round(time.perf_counter() - start, 3),
            "machine": {"cpu": "test CPU", "cores": os.cpu_count(), "threads": torch.get_num_threads()},
            "torch": torch.__version__, "date": "2026-11-27T00:00:00+00:00", **extra}
    (out / "run_info.json").write_text(json.dumps(info))
    return info


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A toy EP MLP run directory as the example scripts leave it (model, image processor, metrics, state, info)."""
    out = tmp_path_factory.mktemp("runs") / "toy_mlp"
    args = toy_args(out.parent, output_dir=str(out), max_steps=12, eval_strategy="steps", eval_steps=6,
                    per_device_eval_batch_size=64)
    processor = EPImageProcessor(size={"height": 8, "width": 8})
    test = toy_uint8_images(96, seed=2)
    trainer = EPTrainer(model=toy_model(), args=args, train_dataset=toy_uint8_images(192, 0),
                        eval_dataset=toy_uint8_images(64, 1), compute_metrics=accuracy, processing_class=processor)
    start = time.perf_counter()
    result = trainer.train()
    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", result.metrics)
    trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_metrics("test", trainer.evaluate(test, metric_key_prefix="test"))
    write_run_info(out, start, dataset="toy")
    return out, test


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A toy EP char-LM run directory (slow EPCharTokenizer saved beside it, as examples/train_char_lm.py does)."""
    out = tmp_path_factory.mktemp("runs") / "toy_char_lm"
    text = "to be or not to be, that is the question.\n" * 40
    tokenizer = EPCharTokenizer.from_texts([text], str(out))
    ids = np.asarray(tokenizer.convert_tokens_to_ids(list(text)), dtype=np.int64)
    blocks = ids[: len(ids) // 16 * 16].reshape(-1, 16)
    data = Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")
    torch.manual_seed(0)
    config = EPCharTransformerConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=16, hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2, pad_token_id=tokenizer.pad_token_id)
    args = toy_args(out.parent, output_dir=str(out), max_steps=8, learning_rate=3e-3, eval_strategy="steps",
                    eval_steps=4, logging_steps=2, ep_beta=0.03)
    trainer = EPTrainer(model=EPCharTransformerForCausalLM(config), args=args, train_dataset=data, eval_dataset=data)
    start = time.perf_counter()
    trainer.train()
    trainer.save_model()
    tokenizer.save_pretrained(str(out))
    trainer.save_state()
    metrics = trainer.evaluate()
    metrics["eval_bits_per_char"] = metrics["eval_loss"] / math.log(2)
    trainer.save_metrics("eval", metrics)
    (out / "samples.txt").write_text("to be or not\n")
    write_run_info(out, start, dataset="shakespeare", method="ep")
    return out, tokenizer


def save_pngs(dataset: Dataset, directory: Path) -> list[Image.Image]:
    """The eval images as PNG files ``<index>_<label>.png`` (uint8 = pixel * 255, exact) and as PIL images."""
    directory.mkdir(parents=True, exist_ok=True)
    images = []
    rows = dataset[:]
    for i, (x, y) in enumerate(zip(rows["pixel_values"], rows["labels"])):
        image = Image.fromarray(np.round(x.numpy().reshape(8, 8) * 255).astype(np.uint8), "L")
        image.save(directory / f"{i}_{int(y)}.png")
        images.append(image)
    return images


def pixels_sha256(dataset: Dataset) -> str:
    """Digest of a dataset's pixel_values as float32 bytes (the no-mep_hf script prints the same of its inputs)."""
    import hashlib

    return hashlib.sha256(dataset[:]["pixel_values"].numpy().astype(np.float32).tobytes()).hexdigest()


def run_without_mep_hf(*args: str, env: dict | None = None) -> list[dict]:
    """mep_hf/hub/without_mep_hf.py in a fresh interpreter where mep_hf cannot be imported; one dict per job."""
    return zoo.run_without_mep_hf(*args, env={"OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


# --------------------------------------------------------------------------- image processor, tokenizer
@pytest.mark.parametrize("divisor", [255, 256])
def test_image_processor_reproduces_dataset_pixels(divisor):
    """Every uint8 value comes out as the loaders store it (float32 ``uint8 / divisor``), from L and RGB images."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    processor = EPImageProcessor(rescale_factor=1 / divisor, size={"height": 16, "width": 16})
    expected = values.astype(np.float32) / divisor
    for image in (Image.fromarray(values, "L"), Image.fromarray(values, "L").convert("RGB")):
        out = processor(image, return_tensors="np")["pixel_values"]
        assert out.shape == (1, 1, 16, 16) and out.dtype == np.float32
        assert np.array_equal(out[0, 0], expected)


def test_image_processor_rgb_and_resize():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    processor = EPImageProcessor(num_channels=3, size={"height": 32, "width": 32})
    out = processor(Image.fromarray(rgb, "RGB"), return_tensors="np")["pixel_values"][0]
    assert np.array_equal(out, rgb.transpose(2, 0, 1).astype(np.float32) / 255)
    big = processor(Image.fromarray(rgb, "RGB").resize((64, 48)), return_tensors="np")["pixel_values"]
    assert big.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="num_channels"):
        EPImageProcessor(num_channels=2)


def test_fast_char_tokenizer_matches_slow(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\tÆ<pad>"
    slow = EPCharTokenizer.from_texts([text[:-6]], str(tmp_path))
    fast = char_tokenizer_fast_from(slow)
    probe = text + " unseen: ¿ñ?\n"
    assert fast(probe)["input_ids"] == slow(probe)["input_ids"]
    assert fast.decode(fast(text[:-6])["input_ids"]) == text[:-6]


# --------------------------------------------------------------------------- remote code
@pytest.mark.parametrize(
    "objects",
    [
        [EPMLPConfig, EPMLPForImageClassification, EPImageProcessor],
        [EPConvNetConfig, EPConvNetForImageClassification],
        [EPCharTransformerConfig, EPCharTransformerForCausalLM],
    ],
    ids=["mlp", "convnet", "char_transformer"],
)
def test_flat_remote_code_imports_no_mep_hf(objects):
    import ast

    sources = flatten_sources(objects)
    assert set(sources) == {o.__module__.rpartition(".")[2] + ".py" for o in objects}
    for name, text in sources.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1) and not (node.module or "").startswith("mep_hf"), (name, node.module)
                if node.level == 1:  # only siblings that are generated too
                    assert node.module + ".py" in sources
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mep_hf") for a in node.names)
        assert "def ep_linearize" not in text
    for obj in objects:
        assert f"class {obj.__name__}(" in sources[obj.__module__.rpartition(".")[2] + ".py"]


@pytest.mark.parametrize(
    "config",
    [
        EPConvNetConfig(num_channels=1, image_size=8, channels=[4], num_labels=3),
        EPHopfieldMLPConfig(input_size=64, hidden_sizes=[8], num_labels=3, free_steps=5),
        EPResidualMLPConfig(input_size=64, hidden_size=8, num_blocks=3, num_labels=3),
        # The P-CNN's blocks have kernels on their fast path (ep_linearize, pruned from the flat code).
        *(EPHopfieldConvNetConfig(image_size=8, channels=[4], kernel_size=3, padding=1, pool=pool, num_labels=3,
                                  free_steps=5) for pool in ("max", "avg", "none")),
    ],
    ids=["convnet", "hopfield_mlp", "residual_mlp", "hopfield_cnn_max", "hopfield_cnn_avg", "hopfield_cnn_none"],
)
def test_flat_model_matches_mep_hf_model(tmp_path, config):
    from transformers import AutoModelForImageClassification

    from mep_hf.hub.remote_code import flat_classes

    torch.manual_seed(0)
    cls = AutoModelForImageClassification._model_mapping[type(config)]
    model = cls(config).eval()
    model.save_pretrained(tmp_path / "m")
    flat = flat_classes([type(config), cls], tmp_path / "flat")
    twin = flat[cls].from_pretrained(tmp_path / "m").eval()
    assert type(twin) is not cls
    x = torch.rand(5, 64)
    assert torch.equal(model(pixel_values=x).logits, twin(pixel_values=x).logits)


# --------------------------------------------------------------------------- package -> publish -> pull -> use
def test_package_publish_pull_and_use(hub, image_run, tmp_path):
    import mep_hf  # noqa: F401  (with mep_hf installed: no remote code needed)
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline

    run, test = image_run
    zoo = tmp_path / "model_zoo" / "toy_mlp"
    assert zoo_cli(["package", str(run), str(zoo)]) == 0
    card = (zoo / "README.md").read_text()
    assert 'model="mep-hf/toy_mlp"' in card
    # The model section is the config's own description (each family describes itself; none falls back to its type).
    assert f"(mep-hf): {AutoConfig.from_pretrained(zoo).describe_architecture()}." in card
    assert zoo_cli(["publish", str(zoo), "zoo-org/toy_mlp"]) == 0
    served = hub.files("zoo-org/toy_mlp")
    assert 'model="zoo-org/toy_mlp"' in served["README.md"].decode() and b"mep-hf/toy_mlp" not in served["README.md"]
    assert {p.name for p in zoo.iterdir()} == set(served)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_ep_mlp.py",
            "configuration_ep_mlp.py", "image_processing_ep.py", "training_curve.png"} <= set(served)

    cache = tmp_path / "empty_cache"
    assert zoo_cli(["pull", "zoo-org/toy_mlp", "--cache_dir", str(cache)]) == 0
    snapshot = next(cache.glob("models--zoo-org--toy_mlp/snapshots/*"))
    assert {p.name for p in snapshot.iterdir()} == set(served)

    card_accuracy = ModelCard.load("zoo-org/toy_mlp").data.eval_results[0]
    assert (card_accuracy.dataset_split, card_accuracy.metric_type) == ("test", "accuracy")
    saved = json.loads((run / "test_results.json").read_text())["test_accuracy"]
    assert card_accuracy.metric_value == saved and 0.3 < saved < 1.0

    model = AutoModelForImageClassification.from_pretrained("zoo-org/toy_mlp", cache_dir=cache)
    processor = AutoImageProcessor.from_pretrained("zoo-org/toy_mlp", cache_dir=cache)
    images = save_pngs(test, tmp_path / "pngs")
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    # The processor's rescaling against the data's (one grey level is 3.9e-3): equal to float32 rounding.
    torch.testing.assert_close(pixels.reshape(len(images), -1), test[:]["pixel_values"].reshape(len(images), -1),
                               rtol=0, atol=1e-6)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    labels = test[:]["labels"]
    assert (logits.argmax(-1) == labels).sum().item() / len(labels) == saved

    classify = pipeline("image-classification", model="zoo-org/toy_mlp", model_kwargs={"cache_dir": cache})
    predictions = [out[0]["label"] for out in classify(images, top_k=1)]
    truth = [model.config.id2label[int(y)] for y in labels]
    assert sum(p == t for p, t in zip(predictions, truth)) / len(truth) == card_accuracy.metric_value


def test_zoo_models_load_without_mep_hf(hub, image_run, text_run, tmp_path):
    """A process where `import mep_hf` fails loads the zoo repos from the Hub with trust_remote_code=True:
    pipeline("image-classification") reproduces the card's accuracy, pipeline("text-generation") generates what
    the mep_hf model generates."""
    (run, test), (char_run, slow_tokenizer) = image_run, text_run
    for name, src in (("toy_mlp", run), ("toy_char_lm", char_run)):
        zoo = tmp_path / "model_zoo" / name
        zoo_cli(["package", str(src), str(zoo), "--repo_id", f"zoo-org/{name}"])
        zoo_cli(["publish", str(zoo), f"zoo-org/{name}"])
    save_pngs(test, tmp_path / "pngs")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "fresh_hf_home")}

    prompt = "to be or"
    result, generated = run_without_mep_hf("image", "zoo-org/toy_mlp", str(tmp_path / "pngs"), "64",
                                           "text", "zoo-org/toy_char_lm", prompt, "12", env=env)
    card = ModelCard.load(tmp_path / "model_zoo" / "toy_mlp" / "README.md")
    assert result["mep_hf_imported"] is False
    assert result["model_class"].startswith("transformers_modules.")
    assert result["processor_class"] == "EPImageProcessor"
    assert (result["n"], result["accuracy"]) == (len(test), card.data.eval_results[0].metric_value)
    assert result["pixels_sha256"] == pixels_sha256(test)  # the remote processor gives the data's exact pixels

    result = generated
    assert result["mep_hf_imported"] is False and result["tokenizer_class"] in ("TokenizersBackend",
                                                                                 "PreTrainedTokenizerFast")
    model = EPCharTransformerForCausalLM.from_pretrained(char_run).eval()
    ids = torch.tensor([slow_tokenizer(prompt)["input_ids"]])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              pad_token_id=slow_tokenizer.pad_token_id)
    assert result["ids"] == expected[0].tolist()
    assert result["text"] == slow_tokenizer.decode(expected[0])
    assert result["text"].startswith(prompt) and len(result["text"]) == len(prompt) + 12


def toy_dataset_dict():
    """The toy run's data as a loader returns it (``verify`` loads the card's dataset by its loader's dotted path)."""
    from datasets import DatasetDict

    return DatasetDict(test=toy_uint8_images(96, seed=2))


def test_verify_reproduces_the_card_without_mep_hf(image_run, tmp_path, monkeypatch, capsys):
    """`mep-hf-zoo verify --trust-remote-code`: the card's test split as PNG files, pipeline() in a process without
    mep_hf running the folder's code."""
    run, test = image_run
    zoo_cli(["package", str(run), str(tmp_path / "toy_mlp")])
    monkeypatch.setitem(zoo.ZOO_DATASETS, "toy", zoo.DatasetSpec(None, "toy", "test_hub.toy_dataset_dict", {}))
    capsys.readouterr()
    assert zoo_cli(["verify", str(tmp_path / "toy_mlp"), "--batch_size", "7", "--trust-remote-code"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = json.loads((run / "test_results.json").read_text())["test_accuracy"]
    assert result["pipeline_accuracy"] == result["card_accuracy"] == expected
    assert (result["n"], result["pixels_identical"], result["mep_hf_imported"]) == (len(test), True, False)


def flip_lowest_mantissa_bit(weights: Path) -> bytes:
    """model.safetensors with the lowest mantissa bit of its last float32 flipped (a change of about 1e-7)."""
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0x01  # little-endian: the last value's lowest byte
    return bytes(data)


def test_verify_runs_no_folder_code_unless_trusted_and_checks_every_file(image_run, tmp_path, monkeypatch):
    """A folder whose modeling file carries a payload (recorded, as its publisher would): `verify` reproduces the
    card with mep_hf's classes and the payload never runs (it ran with the old hard-coded trust_remote_code=True).
    A low-mantissa flip in the weights, too small to move the accuracy, is refused naming the file."""
    run, _ = image_run
    folder, marker = tmp_path / "toy_mlp", tmp_path / "payload_ran"
    zoo_cli(["package", str(run), str(folder)])
    modeling = folder / "modeling_ep_mlp.py"
    modeling.write_text(modeling.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    zoo.write_files_record(folder)
    monkeypatch.setitem(zoo.ZOO_DATASETS, "toy", zoo.DatasetSpec(None, "toy", "test_hub.toy_dataset_dict", {}))
    result = zoo.verify(folder, batch_size=32)
    assert not marker.exists() and result["mep_hf_imported"] is True
    assert result["pipeline_accuracy"] == result["card_accuracy"] and result["pixels_identical"]

    weights = folder / "model.safetensors"
    weights.write_bytes(flip_lowest_mantissa_bit(weights))
    with pytest.raises(zoo.ZooError, match=r"model\.safetensors differs from the file that was published"):
        zoo.verify(folder, batch_size=32)
    assert zoo.verify(folder, batch_size=32, verify_files=False)["pipeline_accuracy"] == result["card_accuracy"]
    (folder / "zoo_manifest.json").unlink()
    with pytest.raises(zoo.ZooError, match="holds no zoo_manifest.json"):
        zoo.verify(folder, batch_size=32)


def test_pull_refuses_files_changed_on_the_server_and_publish_changes_no_local_file(hub, image_run, tmp_path):
    """`publish` uploads the card naming the repo and the record of what it uploads from memory: the local folder is
    byte for byte what `package` wrote, after a failed publish (the commit refused after create_repo) and after a
    successful one. A low-mantissa flip of model.safetensors on the server, or a file added there, makes `pull`
    refuse naming the file (was: arrived silently)."""
    run, _ = image_run
    folder = tmp_path / "toy_mlp"
    zoo_cli(["package", str(run), str(folder)])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(Exception, match="dev"):
        zoo.publish(folder, "zoo-org/toy_pull", revision="dev")  # the test server commits to main only
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    zoo.publish(folder, "zoo-org/toy_pull")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    served = hub.files("zoo-org/toy_pull")
    assert b"zoo-org/toy_pull" in served["README.md"] and b"zoo-org/toy_pull" not in before["README.md"]
    assert set(served) == set(before)
    zoo.check_files(zoo.pull("zoo-org/toy_pull", tmp_path / "good"))

    hub.tamper("zoo-org/toy_pull", "model.safetensors", flip_lowest_mantissa_bit(folder / "model.safetensors"))
    with pytest.raises(zoo.ZooError, match=r"pulled zoo-org/toy_pull, but .*model\.safetensors differs"):
        zoo.pull("zoo-org/toy_pull", tmp_path / "flipped")
    hub.tamper("zoo-org/toy_pull", "model.safetensors", before["model.safetensors"])
    hub.tamper("zoo-org/toy_pull", "extra_code.py", b"print('payload')")
    with pytest.raises(zoo.ZooError, match=r"holds extra_code\.py, which zoo_manifest\.json does not list"):
        zoo.pull("zoo-org/toy_pull", tmp_path / "added")


def test_add_remote_code_makes_any_saved_folder_self_contained(image_run, tmp_path):
    """add_remote_code on a run directory writes what register_for_auto_class + save_pretrained write in a zoo
    folder: the same flat files and auto_map, so the folder loads like one (tested without mep_hf above)."""
    import shutil

    from mep_hf.hub import add_remote_code

    run, _ = image_run
    folder = tmp_path / "run_copy"
    shutil.copytree(run, folder)
    written = add_remote_code(folder, EPMLPForImageClassification.from_pretrained(run),
                              EPImageProcessor.from_pretrained(run))
    assert written == ["configuration_ep_mlp.py", "image_processing_ep.py", "modeling_ep_mlp.py"]
    zoo_cli(["package", str(run), str(tmp_path / "zoo")])
    for name in [*written, "config.json", "preprocessor_config.json"]:
        ours, packaged = (folder / name).read_text(), (tmp_path / "zoo" / name).read_text()
        if name.endswith(".json"):
            assert json.loads(ours)["auto_map"] == json.loads(packaged)["auto_map"]
        else:
            assert ours == packaged


# --------------------------------------------------------------------------- the card
def test_card_reads_the_run(image_run, tmp_path):
    run, _ = image_run
    zoo = tmp_path / "toy_mlp"
    zoo_cli(["package", str(run), str(zoo)])
    card = ModelCard.load(zoo / "README.md")
    test = json.loads((run / "test_results.json").read_text())
    validation = json.loads((run / "eval_results.json").read_text())
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("test", "accuracy"): test["test_accuracy"], ("validation", "accuracy"): validation["eval_accuracy"]}
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "image-classification"
    assert {"mep-hf", "equilibrium-propagation"} <= set(card.data.tags)
    info = json.loads((run / "run_info.json").read_text())
    assert info["command"] in card.text and card.data.mep_hf["command"] == info["command"]
    assert "test CPU" in card.text and f"{info['train_seconds']:.1f} s" in card.text
    args = read_pickled_args(run / "training_args.bin")
    for key, value in ep_settings(args).items():
        assert f"| `{key}` |" in card.text
    assert "| `ep_beta` | 0.01 |" in card.text and "| `ep_nudging` | positive |" in card.text
    assert "![training curve](training_curve.png)" in card.text
    assert (zoo / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((zoo / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_ep_mlp.EPMLPConfig",
                                  "AutoModelForImageClassification": "modeling_ep_mlp.EPMLPForImageClassification"}
    processor = json.loads((zoo / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_ep.EPImageProcessor"}


def test_char_lm_card_and_baseline(text_run, tmp_path):
    run, slow = text_run
    zoo = tmp_path / "toy_char_lm"
    zoo_cli(["package", str(run), str(zoo), "--baseline", str(run)])
    card = ModelCard.load(zoo / "README.md")
    bits = json.loads((run / "eval_results.json").read_text())["eval_bits_per_char"]
    assert card.data.eval_results[0].metric_type == "bits_per_char"
    assert card.data.eval_results[0].metric_value == bits
    assert "## Samples" in card.text and "to be or not" in card.text
    assert "## Compared with backprop" in card.text and "+0.00%" in card.text
    assert (zoo / "tokenizer.json").is_file() and json.loads((zoo / "config.json").read_text())["auto_map"][
        "AutoModelForCausalLM"] == "modeling_ep_char_transformer.EPCharTransformerForCausalLM"

    from transformers import pipeline  # with mep_hf imported: the registered classes, the fast tokenizer

    generate = pipeline("text-generation", model=str(zoo))
    assert type(generate.model) is EPCharTransformerForCausalLM and generate.tokenizer.is_fast
    text = generate("to be", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([slow("to be")["input_ids"]])
    expected = EPCharTransformerForCausalLM.from_pretrained(run).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=slow.pad_token_id)
    assert text == slow.decode(expected[0])


def test_package_refuses_incomplete_runs(image_run, tmp_path):
    import shutil

    from mep_hf.hub import RunDirError, ZooError

    run, _ = image_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "run_info.json").unlink()
    with pytest.raises(RunDirError, match="run_info.json"):
        zoo_cli(["package", str(broken), str(tmp_path / "z1")])
    zoo = tmp_path / "z2"
    zoo_cli(["package", str(run), str(zoo)])
    with pytest.raises(ZooError, match="not empty"):
        zoo_cli(["package", str(run), str(zoo)])
    backprop = tmp_path / "backprop"
    shutil.copytree(run, backprop)
    info = json.loads((backprop / "run_info.json").read_text())
    (backprop / "run_info.json").write_text(json.dumps({**info, "method": "backprop"}))
    with pytest.raises(ZooError, match="trained by backprop, not EP"):
        zoo_cli(["package", str(backprop), str(tmp_path / "z3")])


def test_training_args_are_read_without_running_pickled_code(image_run, tmp_path):
    run, _ = image_run
    args = read_pickled_args(run / "training_args.bin")
    assert (args["ep_beta"], args["ep_nudging"], args["max_steps"]) == (0.01, "positive", 12)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps({"ep_beta": Evil()}))
    read_pickled_args(tmp_path / "evil.bin")
    assert not marker.exists()


# --------------------------------------------------------------------------- EPTrainer on the Hub
def ep_trainer_class():
    """EPTrainer with the Hub mixins (already in EPTrainer's bases once they are wired in there)."""
    missing = tuple(m for m in (EPModelCardMixin, EPRemoteCodeMixin) if not issubclass(EPTrainer, m))
    return type("EPTrainer", (*missing, EPTrainer), {}) if missing else EPTrainer


def test_trainer_pushes_checkpoints_and_an_ep_card(hub, tmp_path):
    from conftest import toy_images

    args = toy_args(tmp_path, max_steps=10, save_strategy="steps", save_steps=5, push_to_hub=True,
                    hub_model_id="toy-push", hub_strategy="checkpoint", hub_always_push=True)
    trainer = ep_trainer_class()(model=toy_model(), args=args, train_dataset=toy_images(160))
    trainer.train()
    trainer.push_to_hub()  # waits for the checkpoint pushes still in flight, then pushes the final model + card
    repo = f"{hub.user}/toy-push"
    files = hub.files(repo)
    assert {"last-checkpoint/model.safetensors", "last-checkpoint/trainer_state.json",
            "last-checkpoint/optimizer.pt", "model.safetensors", "config.json", "README.md"} <= set(files)
    assert json.loads(files["last-checkpoint/trainer_state.json"])["global_step"] == 10
    for folder in ("", "last-checkpoint/"):  # EPRemoteCodeMixin: every saved folder carries its code
        assert {f"{folder}modeling_ep_mlp.py", f"{folder}configuration_ep_mlp.py"} <= set(files)
        assert json.loads(files[f"{folder}config.json"])["auto_map"]["AutoModelForImageClassification"] == \
            "modeling_ep_mlp.EPMLPForImageClassification"
    history = hub.history(repo)
    assert "Training in progress, step 5, checkpoint" in history and history[-1] == "End of training"
    card = files["README.md"].decode()
    assert "equilibrium-propagation" in card and "### Equilibrium Propagation" in card
    assert "| `ep_beta` | 0.01 |" in card and "| `ep_settle_steps` | 1 |" in card
    assert "trained from scratch by Equilibrium Propagation on an unknown dataset" in card


def test_ep_card_section_replaces_an_older_one():
    from mep_hf.hub import add_ep_section

    text = "# m\n\nThis model was trained from scratch on an unknown dataset.\n\n### Framework versions\n\n- x\n"
    once = add_ep_section(text, {"ep_beta": 0.1, "ep_nudging": "centered"})
    twice = add_ep_section(once, {"ep_beta": 0.2, "ep_nudging": "centered"})
    assert twice.count("### Equilibrium Propagation") == 1 and "| `ep_beta` | 0.2 |" in twice
    assert twice.index("### Equilibrium Propagation") < twice.index("### Framework versions")


# --------------------------------------------------------------------------- the zoo index
def test_index_is_generated_from_the_cards(image_run, tmp_path):
    run, _ = image_run
    root = tmp_path / "model_zoo"
    zoo_cli(["package", str(run), str(root / "toy_mlp")])
    zoo_cli(["plan", str(root / "cifar10_convnet"), "--dataset", "cifar10", "--model", "conv net",
             "--command", "python train.py --dataset cifar10", "--reason", "no CIFAR-10 copy is reachable"])
    (root / "README.md").write_text("# Zoo\n\n<!-- zoo-index: generated by `mep-hf-zoo index`; do not edit between "
                                    "these markers -->\n<!-- /zoo-index -->\n\nfooter\n")
    assert zoo_cli(["index", str(root), "--check"]) == 1
    assert zoo_cli(["index", str(root)]) == 0 and zoo_cli(["index", str(root), "--check"]) == 0
    text = (root / "README.md").read_text()
    expected = json.loads((run / "test_results.json").read_text())["test_accuracy"]
    assert f"test accuracy {expected:.4f}" in text
    assert "not trained: no CIFAR-10 copy is reachable" in text and text.endswith("footer\n")
    card = ModelCard.load(root / "toy_mlp" / "README.md")
    card.data.eval_results[0].metric_value = 0.5  # a card changes -> the index is stale
    card.save(root / "toy_mlp" / "README.md")
    assert zoo_cli(["index", str(root), "--check"]) == 1


def test_repository_zoo_index_is_current():
    assert write_index(ROOT / "model_zoo", check=True), "model_zoo/README.md is stale: run `mep-hf-zoo index`"


def test_every_ep_native_family_describes_itself_for_model_cards():
    import mep_hf.models as models

    configs = [getattr(models, n) for n in models.__all__ if n.endswith("Config")]
    assert len(configs) >= 6
    for config_class in configs:
        text = config_class().describe_architecture()
        assert isinstance(text, str) and len(text) > 20 and config_class.model_type not in text, config_class
