"""Keras model -> SavedModel for TF Serving.

Signatures (TF Serving's conventions: named inputs and outputs, a
`serving_default`):

    serving_default   images float32 [N, H, W, 3], pixels 0-255
    serving_uint8     images uint8   [N, H, W, 3]
    serving_bytes     image_bytes string [N]: encoded JPEG, PNG, GIF or BMP files

The first two return `probabilities` [N, classes] and, when the model ends in a
softmax classifier, `logits`; with `top_k` also `top_k_indices` and `top_k_scores`.
Preprocessing (scaling and normalisation) is inside the model.

`serving_bytes` is for clients that send photos as they are: it decodes each one,
applies the evaluation protocol of `keras_effnet.load_image` (centre crop of
size / (size + 32) of the shorter side, bicubic resize, pixels rounded to 0-255) and
returns `probabilities`, `top_k_indices`, `top_k_scores` and `top_k_names` (the class
names as strings). Its input name ends in `_bytes`, so TF Serving's REST API accepts
`{"b64": "..."}` for each image. Bytes that are not an image fail with
InvalidArgument naming the formats expected.
"""

from __future__ import annotations

import os
from pathlib import Path

from keras_effnet.export.metadata import LABELS_FILE, class_names_for
from keras_effnet.files import atomic_output, check_destination, write_text
from keras_effnet.preprocessing import CROP_PADDING

__all__ = ["BYTES_SIGNATURE", "decode_and_crop", "export_saved_model", "logits_model"]

BYTES_SIGNATURE = "serving_bytes"
DEFAULT_TOP_K = 5


def logits_model(model):
    """A model returning (probabilities, logits) when `model` ends in a Dense with a
    softmax activation (every classifier this package builds, and their QAT copies, whose
    Dense sits in tfmot's wrapper), else None."""
    import keras

    last = model.layers[-1]
    dense = getattr(last, "layer", last)  # tfmot's QuantizeWrapper holds the Dense
    activation = getattr(dense, "activation", None)
    activation = getattr(activation, "activation", activation)  # tfmot's QuantizeAwareActivation
    if type(dense).__name__ != "Dense" or getattr(activation, "__name__", "") != "softmax":
        return None
    if isinstance(model, keras.Model):
        features = keras.Model(model.input, [model.output, last.input])
    else:  # a tf_keras model (quantization-aware training)
        import tf_keras

        features = tf_keras.Model(model.input, [model.output, last.input])

    def run(images, training=False):
        probabilities, pooled = features(images, training=training)
        logits = keras.ops.matmul(pooled, dense.kernel)
        if dense.use_bias:
            logits = logits + dense.bias
        return probabilities, logits

    return run


def decode_and_crop(encoded, size: tuple[int, int], crop_padding: int = CROP_PADDING):
    """One encoded image (a scalar string tensor) -> (H, W, 3) float32 pixels 0-255, as
    `keras_effnet.load_image` makes them: RGB, centre crop of size / (size + padding)
    of the shorter side, bicubic resize with antialiasing, rounded like 8-bit pixels."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    fraction = size[0] / (size[0] + crop_padding)
    crop = tf.cast(tf.round(fraction * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
    crop = tf.maximum(crop, 1)
    image = tf.image.crop_to_bounding_box(image, (height - crop) // 2, (width - crop) // 2,
                                          crop, crop)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bicubic", antialias=True)
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def export_saved_model(model, path: str | os.PathLike, *, top_k: int | None = None,
                       overwrite: bool = False, class_names: list[str] | None = None,
                       crop_padding: int = CROP_PADDING) -> Path:
    """Write a SavedModel with `serving_default` (float32), `serving_uint8` and, for a
    model of fixed input size, `serving_bytes` (encoded images, with class names from
    `class_names`; default: the model's own, ImageNet's for 1000 classes, else the class
    indices as text) at `path`, and the names in `labels.txt` inside it; load it with
    `tf.saved_model.load(path)`."""
    import keras
    import tensorflow as tf

    path = check_destination(path, overwrite)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected a model taking (N, H, W, 3) RGB images, got input {shape}")
    classes = model.output_shape[-1]
    if class_names is None:  # the names every other writer gives this model
        class_names = class_names_for(model)
    if top_k is not None and not 1 <= top_k <= classes:
        raise ValueError(f"top_k must be between 1 and {classes}, got {top_k}")
    with_logits = logits_model(model)

    def serve(images):
        images = tf.cast(images, tf.float32)
        if with_logits is not None:
            probabilities, logits = with_logits(images, training=False)
            outputs = {"probabilities": probabilities, "logits": logits}
        else:
            outputs = {"probabilities": model(images, training=False)}
        if top_k is not None:
            scores, indices = tf.math.top_k(outputs["probabilities"], k=top_k)
            outputs["top_k_scores"] = scores
            outputs["top_k_indices"] = indices
        return outputs

    spec = (None,) + shape[1:]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec(spec, tf.float32, name="images")])
    archive.add_endpoint("serving_uint8", serve,
                         input_signature=[tf.TensorSpec(spec, tf.uint8, name="images")])
    if None not in shape[1:3]:
        if class_names is not None and len(class_names) != classes:
            raise ValueError(f"{len(class_names)} class names for a model of {classes} classes")
        names = tf.constant(list(class_names) if class_names is not None
                            else [str(i) for i in range(classes)])
        k = top_k or min(DEFAULT_TOP_K, classes)
        size = tuple(shape[1:3])

        def serve_bytes(image_bytes):
            images = tf.map_fn(lambda b: decode_and_crop(b, size, crop_padding), image_bytes,
                               fn_output_signature=tf.TensorSpec(size + (3,), tf.float32))
            probabilities = model(images, training=False)
            scores, indices = tf.math.top_k(probabilities, k=k)
            return {"probabilities": probabilities, "top_k_scores": scores,
                    "top_k_indices": indices, "top_k_names": tf.gather(names, indices)}

        archive.add_endpoint(BYTES_SIGNATURE, serve_bytes,
                             input_signature=[tf.TensorSpec((None,), tf.string,
                                                            name="image_bytes")])
    with atomic_output(path, overwrite) as tmp:
        archive.write_out(str(tmp), verbose=False)
        if class_names is not None:  # what keras_effnet.export.evaluate names classes by
            write_text(os.path.join(str(tmp), LABELS_FILE), "\n".join(class_names) + "\n")
    return path
