"""Images for calibration and verification: folders, arrays and tf.data, checked
against the model's input before any conversion starts.

Every model this package builds takes RGB pixels in [0, 255] and normalises
inside, so "the model's own preprocessing" is: load, centre-crop and resize to
the model's input size (`keras_effnet.load_image`), nothing else.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from keras_effnet.preprocessing import IMAGE_SUFFIXES, LABELLED_NAME, load_image, read_image

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_CALIBRATION_IMAGES",
    "bundled_photos",
    "calibration_views",
    "image_files",
    "input_tensor",
    "labels_from_names",
    "load_folder",
    "representative_images",
]

# TensorFlow's post-training quantization guide: "around 100-500 samples"
MIN_CALIBRATION_IMAGES = 100
DEFAULT_MAX_IMAGES = 500

# scikit-image ships these colour photos inside its wheel: usable offline everywhere
_SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle",
                   "hubble_deep_field", "retina", "immunohistochemistry")


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files in `folder` and its sub-folders, sorted; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"expected a folder of images, {str(folder)!r} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"no images in {str(folder)!r}: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    return files


def load_folder(folder: str | os.PathLike, size: int,
                max_images: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 3) float32 pixels and the file names, unreadable files skipped."""
    images, names, skipped = [], [], []
    for path in image_files(folder)[:max_images]:
        try:
            images.append(load_image(path, size))
            names.append(path.name)
        except ValueError:
            skipped.append(path.name)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {folder}: "
                      f"{', '.join(skipped[:5])}", stacklevel=2)
    if not images:
        raise ValueError(f"none of the images in {str(folder)!r} could be read")
    return np.stack(images), names



def labels_from_names(names: list[str]) -> np.ndarray | None:
    """ImageNet class indices from names like `207_n02099601_golden.JPEG`, or None."""
    labels = []
    for name in names:
        match = LABELLED_NAME.match(name)
        if match is None or int(match.group(1)) >= 1000:
            return None
        labels.append(int(match.group(1)))
    return np.array(labels)


def bundled_photos(size: int | None = None) -> tuple[list | np.ndarray, list[str]]:
    """scikit-image's colour photos (chelsea and coffee first): loaded at `size`
    as one array, or the raw HxWx3 arrays when `size` is None."""
    from skimage import data

    images, names = [], []
    for name in _SKIMAGE_PHOTOS:
        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        if image.ndim == 3 and image.shape[-1] == 4:
            image = image[..., :3]
        if image.ndim != 3:
            continue
        images.append(image if size is None else load_image(image, size))
        names.append(name)
    return (images if size is None else np.stack(images)), names


def calibration_views(sources: np.ndarray | list, size: int, count: int,
                      seed: int = 0) -> np.ndarray:
    """`count` random crops and flips of a few photos, for calibrating when only a
    handful of photos is at hand: varied views cover activation ranges better than
    repeating the same images. Each source is an HxWx3 array or a path; a path that
    is not a readable image is skipped with a warning."""
    rng = np.random.default_rng(seed)
    pictures, skipped = [], []
    for source in sources:
        try:
            pictures.append(read_image(source))
        except ValueError:
            if not isinstance(source, (str, os.PathLike)):
                raise
            skipped.append(os.path.basename(source))
    if skipped:
        warnings.warn(f"calibration: skipped {len(skipped)} unreadable image(s): "
                      f"{', '.join(skipped[:5])}", stacklevel=2)
    if not pictures:
        raise ValueError("calibration_views needs at least one readable photo")
    views = []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        height, width = picture.shape[:2]
        side = int(min(height, width) * rng.uniform(0.5, 1.0))
        top = rng.integers(0, height - side + 1)
        left = rng.integers(0, width - side + 1)
        crop = picture[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        views.append(load_image(np.ascontiguousarray(crop), size, crop_padding=0))
    return np.stack(views)


def _from_dataset(dataset, limit: int) -> np.ndarray:
    batches, seen = [], 0
    for element in dataset:
        if isinstance(element, (tuple, list)):
            element = element[0]  # (images, labels) pairs
        if isinstance(element, dict):
            raise ValueError("expected a dataset of images or (images, labels), got a dict")
        array = np.asarray(element)
        if array.ndim == 3:
            array = array[None]
        batches.append(array)
        seen += len(array)
        if seen >= limit:
            break
    if not batches:
        return np.zeros((0,), np.float32)
    return np.concatenate(batches)[:limit]


def representative_images(data, input_shape: tuple, max_images: int = DEFAULT_MAX_IMAGES,
                          min_images: int = MIN_CALIBRATION_IMAGES) -> np.ndarray:
    """Turn a folder, a `tf.data.Dataset` or an array into (N, H, W, 3) float32
    pixels for `input_shape` = (H, W, 3); raise on empty or wrongly shaped data,
    warn when there are fewer than `min_images`."""
    height, width = input_shape[:2]
    if data is None:
        raise ValueError("this mode needs representative_data: a folder of images, a "
                         "tf.data.Dataset or an array of shape (N, H, W, 3) with pixels 0-255")
    if isinstance(data, (str, os.PathLike)):
        if height is None or height != width:
            raise ValueError(f"a folder needs a model with a fixed square input, got {input_shape}")
        images, _ = load_folder(data, height, max_images)
    elif hasattr(data, "element_spec") or hasattr(data, "take"):
        images = _from_dataset(data, max_images)
    else:
        images = np.asarray(data)
        if images.ndim == 3:
            images = images[None]
        images = images[:max_images]
    expected = f"(N, {height}, {width}, 3)"
    if images.size == 0:
        raise ValueError(f"representative_data is empty: expected {expected} images, pixels 0-255")
    if images.ndim != 4 or images.shape[-1] != 3 or (
            height is not None and tuple(images.shape[1:3]) != (height, width)):
        raise ValueError(
            f"representative_data has shape {images.shape}, expected {expected} images with "
            "pixels 0-255; give a folder to have them loaded and resized for you"
        )
    images = images.astype(np.float32)
    if images.max() <= 1.0:
        warnings.warn("representative_data lies in [0, 1]; these models take pixels in [0, 255] "
                      "and normalise inside, so the calibration ranges will be wrong", stacklevel=3)
    if len(images) < min_images:
        warnings.warn(f"calibrating on {len(images)} images; {min_images} or more give stable "
                      "int8 ranges (TensorFlow recommends 100-500)", stacklevel=3)
    return images


def batches_of_one(images: np.ndarray, progress: bool = True,
                   title: str = "calibrating") -> Iterator[list[np.ndarray]]:
    """The converter's representative_dataset: one image at a time, with a progress bar."""
    bar = None
    step = max(1, len(images) // 20)  # ~20 updates: readable in logs as well as terminals
    if progress:
        import keras

        print(f"{title} on {len(images)} images")
        bar = keras.utils.Progbar(len(images), unit_name="image")
    for i, image in enumerate(images):
        yield [image[None].astype(np.float32)]
        if bar is not None and ((i + 1) % step == 0 or i + 1 == len(images)):
            bar.update(i + 1)


def input_tensor(images: np.ndarray, dtype, quantization: tuple | None = None) -> np.ndarray:
    """Pixels (0-255) as the input of a `.tflite` image model of input `dtype`: a uint8
    input takes the raw pixels, whatever its quantization (MediaPipe's and Coral's
    convention, and ours: the quantization says how the model reads them); an int8
    input the pixels quantized with its (scale, zero point); a float input the pixels."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return np.asarray(images, np.float32)
    x = np.asarray(images, np.float32)
    if dtype != np.uint8:
        scale, zero = quantization
        x = x / scale + zero
    limits = np.iinfo(dtype)
    return np.clip(np.round(x), limits.min, limits.max).astype(dtype)
