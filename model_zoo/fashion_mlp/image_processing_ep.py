"""Generated from mep_hf 0.1.0 by `mep-hf-zoo`; do not edit, regenerate it (`mep-hf-zoo regenerate`).
Flattened from `mep_hf.models.image_processing_ep`.

Self-contained: it imports no mep_hf module, so `trust_remote_code=True` loads it without mep_hf installed.
"""

from __future__ import annotations

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
