"""The one custom layer: the stem's input normalization with fixed statistics."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["Normalization"]


@keras.saving.register_keras_serializable(package="keras_effnet")
class Normalization(keras.layers.Layer):
    """Computes `(x - mean) / std` per channel with statistics fixed at build time.

    It carries the same three weights as keras.applications' stem
    `Normalization` layer (`mean`, `variance`, `count`), so Keras' official
    `.h5` files, which are loaded by the order of weighted layers, still line
    up, and it has the same class name, so Keras 3 `.weights.h5` files (keyed
    by class name and order) are interchangeable with keras.applications'.
    The computation uses the configured statistics, never the stored
    weights: those files keep the ImageNet std where the variance belongs,
    and a model's preprocessing must not depend on which weights it holds.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(
                f"Normalization needs one mean and one positive std per channel, "
                f"got mean={self.mean}, std={self.std}"
            )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels != len(self.mean):
            raise ValueError(
                f"Normalization expects {len(self.mean)} input channels, got {channels}"
            )
        self.stored_mean = self.add_weight(
            name="mean", shape=(channels,), trainable=False,
            initializer=keras.initializers.Constant(np.array(self.mean)),
        )
        self.stored_variance = self.add_weight(
            name="variance", shape=(channels,), trainable=False,
            initializer=keras.initializers.Constant(np.square(self.std)),
        )
        self.count = self.add_weight(
            name="count", shape=(), dtype="int64", initializer="zeros", trainable=False
        )

    def call(self, inputs):
        mean = ops.convert_to_tensor(np.array(self.mean), dtype=self.compute_dtype)
        std = ops.convert_to_tensor(np.array(self.std), dtype=self.compute_dtype)
        return (ops.cast(inputs, self.compute_dtype) - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std)})
        return config
