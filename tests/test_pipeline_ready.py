"""What EPTrainer saves goes into ``pipeline()``: given no ``processing_class``, an EP-native image model gets the
image processor its training data needs (``preprocessor_config.json``), as Trainer saves a given one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from conftest import toy_args, toy_images, toy_model
from mep_hf import EPTrainer
from mep_hf.models import EPConvNetConfig, EPConvNetForImageClassification, EPImageProcessor
from mep_hf.models.image_processing_ep import default_image_processor, pixel_rescale_factor


def uint8_images(n: int, divisor: int, seed: int = 0) -> tuple[np.ndarray, Dataset]:
    """8x8 grayscale uint8 images, labelled by their brightest quadrant, stored as float32 ``uint8 / divisor``."""
    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 200, (n, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 4, n)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        u8[i, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 50
    pixels = u8.reshape(n, -1).astype(np.float32) / divisor
    return u8, Dataset.from_dict({"pixel_values": pixels, "labels": labels}).with_format("torch")


def no_prompt(*_):
    """transformers asks on stdin before it runs remote code; here nothing may ask (mep_hf's classes serve)."""
    pytest.fail("pipeline() asked whether to run remote code although `import mep_hf` registered the classes")


@pytest.mark.parametrize("divisor", [255, 256])
def test_saved_run_goes_into_pipeline(tmp_path, divisor, monkeypatch):
    import mep_hf  # noqa: F401  (registers the EP classes, the image processor included)
    from transformers import pipeline

    monkeypatch.setattr("builtins.input", no_prompt)

    u8, data = uint8_images(64, divisor)
    out = tmp_path / "out"
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path, output_dir=str(out), max_steps=2),
                        train_dataset=data)
    assert isinstance(trainer.processing_class, EPImageProcessor)
    trainer.train()
    trainer.save_model()
    assert (out / "preprocessor_config.json").is_file()

    classify = pipeline("image-classification", model=str(out))
    images = [Image.fromarray(x, "L") for x in u8[:16]]
    pixels = classify.image_processor(images, return_tensors="pt")["pixel_values"]
    # The data's own pixels: the processor rescales in its own code, so float32 rounding may differ by an ulp on
    # another CPU; a pixel one grey level off (1/255 = 3.9e-3) still fails.
    torch.testing.assert_close(pixels.reshape(16, -1), data[:16]["pixel_values"], rtol=0, atol=1e-6)
    with torch.no_grad():
        expected = trainer.model(pixel_values=data[:16]["pixel_values"]).logits.argmax(-1)
    predicted = [out[0]["label"] for out in classify(images, top_k=1, batch_size=16)]
    assert predicted == [trainer.model.config.id2label[int(i)] for i in expected]


def test_no_processor_when_the_pixels_tell_no_convention(tmp_path):
    """conftest's toy images are float noise, not uint8 pixels: no processor is guessed (pass processing_class)."""
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path), train_dataset=toy_images(32))
    assert trainer.processing_class is None
    given = EPImageProcessor(size={"height": 8, "width": 8})
    trainer = EPTrainer(model=toy_model(), args=toy_args(tmp_path), train_dataset=toy_images(32),
                        processing_class=given)
    assert trainer.processing_class is given


def test_pixel_rescale_factor():
    values = np.arange(256, dtype=np.float32)
    assert pixel_rescale_factor(values / 255) == 1 / 255
    assert pixel_rescale_factor(values / 256) == 1 / 256
    assert pixel_rescale_factor(np.zeros(10)) is None  # no pixel tells
    assert pixel_rescale_factor(values / 255 + 1e-3) is None
    assert pixel_rescale_factor((values - 128) / 128) is None  # normalised pixels


def test_default_processor_follows_the_model_shape():
    _, data = uint8_images(8, 255)
    config = EPConvNetConfig(num_channels=3, image_size=4, channels=[2], num_labels=4)
    rgb = Dataset.from_dict({"pixel_values": np.asarray(data[:]["pixel_values"])[:, :48],  # 3 channels of 4x4
                             "labels": np.zeros(8, dtype=np.int64)})
    processor = default_image_processor(EPConvNetForImageClassification(config), rgb)
    assert (processor.num_channels, processor.size["height"], processor.rescale_factor) == (3, 4, 1 / 255)
    processor = default_image_processor(toy_model(), data)  # MLP: 64 inputs = one 8x8 channel
    assert (processor.num_channels, processor.size["height"]) == (1, 8)
    assert default_image_processor(toy_model(input_size=50), data) is None  # no square image has 50 pixels


def test_zoo_folder_loads_without_a_prompt(monkeypatch):
    """A folder with remote code (auto_map) loads with mep_hf's classes once mep_hf is imported: pipeline() asks
    nothing (it probed for an "EPVideoProcessor" derived from the image processor's auto_map, and asked)."""
    from pathlib import Path

    import mep_hf  # noqa: F401
    from transformers import pipeline

    monkeypatch.setattr("builtins.input", no_prompt)
    classify = pipeline("image-classification", model=str(Path(__file__).parents[1] / "model_zoo" / "mnist_mlp"))
    assert type(classify.model).__module__.startswith("mep_hf.models.")
    assert type(classify.image_processor) is EPImageProcessor
