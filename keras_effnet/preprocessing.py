"""Images in, class names out, offline: loading, centre crop, decoding predictions.

The ImageNet class index ships inside the package (byte-identical to the file
keras.applications downloads), so `decode_predictions` needs no network.
"""

from __future__ import annotations

import functools
import json
import os
import re
from importlib import resources

import numpy as np

from keras_effnet.specs import get_variant

__all__ = [
    "CROP_PADDING",
    "IMAGE_SUFFIXES",
    "LABELLED_NAME",
    "ImageReadError",
    "decode_predictions",
    "imagenet_classes",
    "load_image",
    "preprocess_input",
    "read_image",
]

# tensorflow/tpu preprocessing: evaluation crops size / (size + 32) of the
# shorter side around the centre, then resizes bicubically to size.
CROP_PADDING = 32
# what read_image reads (PIL), by file name
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# ImageNet-sample style names, `207_n02099601_golden.JPEG`: the class index leads
LABELLED_NAME = re.compile(r"^(\d+)_")


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


class ImageReadError(ValueError):
    """A file or array that cannot be read as a photo (the CLI exits 1 with one line)."""


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_rgb(img) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL mode: 16-bit and float images scaled to 8 bits (PIL's
    convert('RGB') clips them to white), transparency composited over white, palette,
    CMYK and the rest through PIL's own conversions."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and values.max() > 255):
            values = values / 257.0  # 16-bit range 0-65535 onto 0-255
        elif img.mode == "F" and values.max() <= 1.0:
            values = values * 255.0  # a float image in [0, 1]
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_image(source) -> np.ndarray:
    """A photo as the person who took it sees it: (H, W, 3) uint8 RGB. `source` is a
    path, the encoded bytes, or an array (HxW, HxWx3 or HxWx4). EXIF orientation is
    applied (phones store sideways pixels plus a tag); 16-bit, float, palette,
    transparent and CMYK images are converted by scaling, not clipping. Anything that is
    not a readable image, or is larger than PIL's decompression-bomb limit, raises
    ImageReadError (a ValueError) naming the file."""
    import io

    from PIL import Image, ImageOps

    if isinstance(source, (bytes, bytearray)):
        name, opener = "the image bytes", lambda: Image.open(io.BytesIO(source))
    elif isinstance(source, (str, os.PathLike)):
        name = repr(os.fspath(source))
        if not os.path.isfile(source):
            raise ImageReadError(f"no image file at {name}")
        opener = lambda: Image.open(source)
    else:
        array = np.asarray(source)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ImageReadError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape "
                                 f"{array.shape}")
        return np.clip(array[..., :3], 0, 255).astype(np.uint8)
    try:
        with opener() as img:
            return _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{name} is too large to open safely (a decompression bomb, or a huge scan): "
            f"{str(exc).rstrip('.')}. If you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "not an image"
        raise ImageReadError(f"could not read {name} as an image: {exc}") from exc


def load_image(source, size: int, crop_padding: int = CROP_PADDING) -> np.ndarray:
    """An RGB image as a (size, size, 3) float32 array in [0, 255], centre-cropped
    to `size / (size + crop_padding)` of its shorter side and resized bicubically
    (the EfficientNet evaluation protocol). `source` is anything `read_image` takes
    (a path, encoded bytes, an array); `crop_padding=0` resizes the whole image
    without cropping."""
    from PIL import Image

    if size < 1 or crop_padding < 0:
        raise ValueError(f"size must be >= 1 and crop_padding >= 0, got {size}, {crop_padding}")
    img = Image.fromarray(read_image(source))
    width, height = img.size
    crop = round(size / (size + crop_padding) * min(width, height))
    left, top = (width - crop) // 2, (height - crop) // 2
    img = img.crop((left, top, left + crop, top + crop))
    img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)
