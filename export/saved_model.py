"""Keras model -> SavedModel for TF Serving.

Signatures (TF Serving's conventions: named inputs and outputs, a
`serving_default`):

    serving_default   images float32 [N, H, W, 3], pixels 0-255
    serving_uint8     images uint8   [N, H, W, 3]

Both return `probabilities` [N, classes] and, when the model ends in a softmax
classifier, `logits`; with `top_k` also `top_k_indices` and `top_k_scores`.
Preprocessing (scaling and normalisation) is inside the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from keras_effnet.export._atomic import atomic_output, check_destination

__all__ = ["export_saved_model", "logits_model"]


def logits_model(model):
    """A model returning (probabilities, logits) when `model` ends in a Dense with a
    softmax activation (every classifier this package builds), else None."""
    import keras

    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if not isinstance(last, keras.layers.Dense) or \
            getattr(activation, "__name__", "") != "softmax":
        return None
    features = keras.Model(model.input, [model.output, last.input])

    def run(images, training=False):
        probabilities, pooled = features(images, training=training)
        logits = keras.ops.matmul(pooled, last.kernel)
        if last.use_bias:
            logits = logits + last.bias
        return probabilities, logits

    return run


def export_saved_model(model, path: str | os.PathLike, *, top_k: int | None = None,
                       overwrite: bool = False) -> Path:
    """Write a SavedModel with `serving_default` (float32) and `serving_uint8`
    signatures at `path`; load it with `tf.saved_model.load(path)`."""
    import keras
    import tensorflow as tf

    path = check_destination(path, overwrite)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected a model taking (N, H, W, 3) RGB images, got input {shape}")
    classes = model.output_shape[-1]
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
    with atomic_output(path, overwrite) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return path
