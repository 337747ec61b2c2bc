"""Images in, class names out, offline: loading, centre crop, decoding predictions.

The ImageNet class index ships inside the package (byte-identical to the file
keras.applications downloads), so `decode_predictions` needs no network.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources

import numpy as np

from keras_effnet.specs import get_variant

__all__ = [
    "CROP_PADDING",
    "decode_predictions",
    "imagenet_classes",
    "load_image",
    "preprocess_input",
]

# tensorflow/tpu preprocessing: evaluation crops size / (size + 32) of the
# shorter side around the centre, then resizes bicubically to size.
CROP_PADDING = 32


def preprocess_input(x, data_format=None, variant: str | None = None):
    """keras.applications-compatible: a pass-through for models built with
    `include_preprocessing=True` (the default), since they scale and
    normalize inside.

    For a model built with `include_preprocessing=False`, pass its `variant`
    ('b0', 'lite0', ...) to get `(x / 255 - mean) / std` with that variant's
    statistics, as float32.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"only channels_last data is supported, got data_format={data_format!r}")
    if variant is None:
        return x
    spec = get_variant(variant)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last, got shape {x.shape}")
    mean = np.array(spec.input_mean, np.float32)
    std = np.array(spec.input_std, np.float32)
    return (x / 255.0 - mean) / std


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet classes as (wordnet id, name), in Keras' order."""
    text = resources.files("keras_effnet").joinpath("data/imagenet_class_index.json").read_text()
    index = json.loads(text)
    return [tuple(index[str(i)]) for i in range(len(index))]


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Top-`top` (wordnet id, class name, score) per row of a (N, 1000) array."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet predictions of shape (N, 1000), "
            f"got shape {preds.shape}"
        )
    if not 1 <= top <= 1000:
        raise ValueError(f"top must be between 1 and 1000, got {top}")
    classes = imagenet_classes()
    results = []
    for row in preds:
        order = np.argsort(row)[::-1][:top]
        results.append([(classes[i][0], classes[i][1], float(row[i])) for i in order])
    return results


def load_image(source, size: int, crop_padding: int = CROP_PADDING) -> np.ndarray:
    """An RGB image as a (size, size, 3) float32 array in [0, 255], centre-cropped
    to `size / (size + crop_padding)` of its shorter side and resized bicubically
    (the EfficientNet evaluation protocol). `source` is a path or an HxWx3 array;
    `crop_padding=0` resizes the whole image without cropping."""
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(f"no image file at {source!r}")
        try:
            with Image.open(source) as img:
                img = img.convert("RGB")
        except OSError as exc:
            raise ValueError(f"could not read {source!r} as an image: {exc}") from exc
    else:
        array = np.asarray(source)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected an HxWx3 RGB array, got shape {array.shape}")
        img = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if size < 1 or crop_padding < 0:
        raise ValueError(f"size must be >= 1 and crop_padding >= 0, got {size}, {crop_padding}")
    width, height = img.size
    crop = round(size / (size + crop_padding) * min(width, height))
    left, top = (width - crop) // 2, (height - crop) // 2
    img = img.crop((left, top, left + crop, top + crop))
    img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)
