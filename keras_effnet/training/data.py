"""tf.data input pipelines for training and evaluation, from image folders or TFRecords.

    folder = scan_folder("flowers/")             # flowers/<class>/<image>.jpg
    train = train_dataset(folder, 224, batch=64)        # endless, shuffled, augmented
    val = eval_dataset(scan_folder("val/"), 224, batch=64)

Training images get tensorflow/tpu's Inception-style random resized crop
(area 8-100%, aspect 3/4-4/3) and a horizontal flip, optionally RandAugment;
evaluation images a centre crop of size / (size + 32) of the short side. Both
resize bicubically and give float32 pixels in [0, 255]: the model normalises
inside. Labels come one-hot, for the recipe's label smoothing.

A folder is either `keras.utils.image_dataset_from_directory`'s layout (one
sub-folder per class, classes in sorted order) or a flat folder whose names
start with the class index (`0207_n02099601_golden_retriever.JPEG`, the
layout of ImageNet samples); in the flat case the indices found are
renumbered 0..K-1 in sorted order. Files that are not images (wrong magic
bytes, empty) are skipped and counted at scan time; ones that fail to decode
later are dropped by the pipeline with a warning in the log.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from absl import logging

from keras_effnet.preprocessing import CROP_PADDING, IMAGE_SUFFIXES, LABELLED_NAME

__all__ = [
    "DECODABLE_SUFFIXES",
    "IMAGENET_CROP_AREA",
    "ImageFolder",
    "eval_dataset",
    "scan_folder",
    "split",
    "tfrecord_dataset",
    "train_dataset",
    "view_dataset",
]

DECODABLE_SUFFIXES = IMAGE_SUFFIXES  # what keras_effnet.read_image reads
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")  # RIFF: WebP


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The images of a folder with their labels (0..K-1) and what was skipped."""

    root: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)


def _unreadable(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not head:
        return "empty file"
    if not head.startswith(_MAGIC):
        return "not a JPEG, PNG, GIF, BMP or WebP image"
    return None


def scan_folder(folder: str | os.PathLike, min_classes: int = 2) -> ImageFolder:
    """List a folder's images and labels; a clear error when there is nothing to train on
    (fewer than `min_classes` classes, a class folder without a readable image)."""
    root = Path(folder)
    if not root.exists():
        raise ValueError(f"data folder {str(root)!r} does not exist; expected a folder with one "
                         "sub-folder of images per class")
    if not root.is_dir():
        raise ValueError(f"data {str(root)!r} is a file; expected a folder with one sub-folder "
                         "of images per class (or --data pointing at TFRecords with --tfrecords)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    candidates: list[tuple[Path, str]] = []
    if class_dirs:
        class_names = [p.name for p in class_dirs]
        for directory in class_dirs:
            candidates += [(p, directory.name) for p in sorted(directory.rglob("*"))
                           if p.suffix.lower() in DECODABLE_SUFFIXES]
    else:
        flat = sorted(p for p in root.iterdir() if p.suffix.lower() in DECODABLE_SUFFIXES)
        unlabelled = [p.name for p in flat if not LABELLED_NAME.match(p.name)]
        if unlabelled:
            raise ValueError(
                f"{str(root)!r} has no class sub-folders and {len(unlabelled)} image name(s) "
                f"without a leading class index (e.g. {unlabelled[0]!r}); expected "
                "<root>/<class>/<image> or names like 207_n02099601_golden.JPEG")
        candidates = [(p, str(int(LABELLED_NAME.match(p.name).group(1)))) for p in flat]
        class_names = sorted({label for _, label in candidates}, key=int)
    files, labels, skipped = [], [], []
    index = {name: i for i, name in enumerate(class_names)}
    for path, class_name in candidates:
        reason = _unreadable(path)
        if reason:
            skipped.append((str(path), reason))
            continue
        files.append(str(path))
        labels.append(index[class_name])
    if skipped:
        logging.warning("skipped %d unreadable file(s) of %d in %s; first: %s (%s)",
                        len(skipped), len(candidates), root, *skipped[0])
    if not files:
        raise ValueError(
            f"data folder {str(root)!r} has no readable images "
            f"({len(skipped)} unreadable); expected {', '.join(DECODABLE_SUFFIXES)} files in "
            "one sub-folder per class")
    if len(class_names) < min_classes:
        raise ValueError(
            f"data folder {str(root)!r} has one class ({class_names[0]!r}): a classifier "
            "needs at least 2 classes, one sub-folder of images each")
    used = sorted(set(labels))
    if class_dirs and len(used) < len(class_names):
        empty = [class_names[i] for i in range(len(class_names)) if i not in set(used)]
        raise ValueError(f"class folder(s) with no readable images in {str(root)!r}: "
                         f"{', '.join(empty[:5])}; remove them or add images")
    return ImageFolder(str(root), tuple(files), tuple(labels), tuple(class_names),
                       tuple(skipped))


def split(folder: ImageFolder, fraction: float, seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
    """(train, validation): `fraction` of each class held out, chosen by a seeded shuffle."""
    import numpy as np

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = set()
    labels = np.array(folder.labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held.update(rng.permutation(members)[:round(len(members) * fraction)].tolist())
    train = [i for i in range(len(folder)) if i not in held]
    val = sorted(held)
    train_files = tuple(folder.files[i] for i in train)
    train_labels = tuple(folder.labels[i] for i in train)
    val_files = tuple(folder.files[i] for i in val)
    val_labels = tuple(folder.labels[i] for i in val)
    if not train_files or not val_files:
        raise ValueError(f"a {fraction:.0%} split of {len(folder)} images leaves an empty side; "
                         "give more images or a separate validation folder")
    return (dataclasses.replace(folder, files=train_files, labels=train_labels),
            dataclasses.replace(folder, files=val_files, labels=val_labels, skipped=()))


def _decode(contents):
    """Encoded bytes -> (H, W, 3) uint8 through `keras_effnet.read_image`, the loader
    everything else uses: EXIF orientation, 16-bit and transparent images as a person
    sees them (tf.io.decode_image does neither). A file it cannot read fails this
    element, which the pipeline drops."""
    import tensorflow as tf

    from keras_effnet.preprocessing import read_image

    image = tf.numpy_function(lambda data: read_image(bytes(data)), [contents], tf.uint8,
                              stateful=False)
    image.set_shape([None, None, 3])
    return image


# tensorflow/tpu preprocessing._decode_and_random_crop: Inception-style, 8-100% of the area
IMAGENET_CROP_AREA = (0.08, 1.0)


def _random_resized_crop(image, size: int, area_range=IMAGENET_CROP_AREA):
    import tensorflow as tf

    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=tuple(area_range), max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, (size, size), method="bicubic")
    image.set_shape([size, size, 3])  # tf.slice forgets the channels; RandAugment needs them
    return tf.image.random_flip_left_right(tf.clip_by_value(image, 0.0, 255.0))


def _center_crop(image, size: int):
    import tensorflow as tf

    # the same crop as keras_effnet.load_image (rounded side, offsets rounded down), so
    # a model is evaluated here as it is by `classify`, `export` and the benchmarks
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(tf.round(short * size / (size + CROP_PADDING)), tf.int32)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
    image = tf.image.resize(image, (size, size), method="bicubic")
    return tf.clip_by_value(image, 0.0, 255.0)


def _loader(training: bool, size: int, num_classes: int, area_range=IMAGENET_CROP_AREA):
    """(encoded bytes, label) -> (float32 image in [0, 255], one-hot label)."""
    import tensorflow as tf

    def crop(image):
        if training:
            return _random_resized_crop(image, size, area_range)
        return _center_crop(image, size)

    def load(contents, label):
        image = crop(tf.cast(_decode(contents), tf.float32))
        return image, tf.one_hot(label, num_classes)

    return load


def _finish(dataset, load, batch: int, training: bool, seed: int, randaugment):
    import tensorflow as tf

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors(log_warning=True)  # a file that fails to decode is dropped
    dataset = dataset.batch(batch, drop_remainder=training)
    if training and randaugment:
        augment = randaugment if callable(randaugment) else _rand_augment(randaugment, seed)
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _folder_pipeline(folder: ImageFolder, size: int, batch: int, training: bool,
                     start_step: int, seed: int, randaugment):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((list(folder.files), list(folder.labels)))
    if training:
        # shuffle and repeat file names (cheap), so skipping to a resumed step
        # costs no decoding and the resumed run sees the batches it would have
        dataset = dataset.shuffle(len(folder), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat().skip(start_step * batch)
    dataset = dataset.map(lambda path, label: (tf.io.read_file(path), label))
    load = _loader(training, size, folder.num_classes)
    return _finish(dataset, load, batch, training, seed, randaugment)


def view_dataset(folder: ImageFolder, image_size: int, batch: int, *, augment: bool,
                 seed: int = 0, area_range=IMAGENET_CROP_AREA):
    """One pass over `folder` in its order, in batches of (images, one-hot labels): each
    image a random resized crop (`area_range` of its area) and flip when `augment`, else
    the evaluation centre crop. What a frozen backbone's features are computed from once
    (keras_effnet.training.transfer)."""
    import tensorflow as tf

    tf.random.set_seed(seed)  # the crops' op seeds derive from it
    dataset = tf.data.Dataset.from_tensor_slices((list(folder.files), list(folder.labels)))
    dataset = dataset.map(lambda path, label: (tf.io.read_file(path), label))
    load = _loader(augment, image_size, folder.num_classes, area_range)
    return _finish(dataset, load, batch, False, seed, None)


def _rand_augment(magnitude: float, seed: int):
    import keras

    # RandAugment paper / tensorflow/tpu autoaugment.py: 2 ops per image; factor is the
    # magnitude as a fraction of the strongest (10 in tpu's units)
    return keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                    factor=min(1.0, magnitude / 10.0), seed=seed)


def train_dataset(folder: ImageFolder, image_size: int, batch: int, *, start_step: int = 0,
                  seed: int = 0, randaugment: float | None = None):
    """Endless batches of (images, one-hot labels) for `model.fit(steps_per_epoch=...)`.

    `start_step` skips that many batches of the same seeded order, so a run
    resumed at step k sees what an uninterrupted one would have seen from k.
    `randaugment` is a magnitude 0-10 (tensorflow/tpu's scale) or a Keras layer.
    """
    if len(folder) < batch:
        raise ValueError(f"{folder.root!r} has {len(folder)} images, fewer than one batch of "
                         f"{batch}; lower --batch or add images")
    return _folder_pipeline(folder, image_size, batch, True, start_step, seed, randaugment)


def eval_dataset(folder: ImageFolder, image_size: int, batch: int):
    """One pass over `folder` in order, centre-cropped, in batches (the last may be short)."""
    return _folder_pipeline(folder, image_size, batch, False, 0, 0, None)


def tfrecord_dataset(pattern: str, image_size: int, batch: int, *, training: bool,
                     num_classes: int = 1000, label_offset: int = 1, start_step: int = 0,
                     seed: int = 0, randaugment: float | None = None):
    """Batches from ImageNet-style TFRecords ('image/encoded', 'image/class/label').

    tensorflow/tpu's `imagenet_to_gcs.py` stores labels 1..1000 (0 was a
    background class), hence `label_offset=1`; use 0 for 0-based records.
    Training reads shards in parallel and shuffles records; the resume skip
    counts records, as for folders.
    """
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord files match {pattern!r}; expected e.g. "
                         "'/data/imagenet/train-*'")
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        parsed = tf.io.parse_single_example(record, features)
        label = tf.cast(parsed["image/class/label"], tf.int32) - label_offset
        return parsed["image/encoded"], label

    records = tf.data.Dataset.from_tensor_slices(files)
    if training:
        records = records.shuffle(len(files), seed=seed).repeat()
    records = records.interleave(tf.data.TFRecordDataset, cycle_length=min(8, len(files)),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        records = records.shuffle(16 * batch, seed=seed).skip(start_step * batch)
    load = _loader(training, image_size, num_classes)
    return _finish(records, load, batch, training, seed, randaugment)
