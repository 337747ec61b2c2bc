"""Fold the stem's preprocessing (Rescaling -> Normalization) into one op for export.

In a converted model the two layers become three elementwise ops over the whole
input image; in an int8 graph each one requantizes, and together they took
1.5 ms of Lite0's 6 ms (measured with LiteRT, one thread). The chain is a
per-channel affine map, so it is replaced by a single 1x1 depthwise convolution
carrying the same scale and offset: one op that every backend, XNNPACK and the
Edge TPU included, runs fast. The result is the same function (exact in float,
one rounding instead of three in int8).

A uint8 file needs not even that op when the chain is one scale and offset for every
channel that lands on whole pixel steps, as the Lite and EdgeTPU families' (p - 127)
/ 128: the input's quantization (scale 1/128, zero point 127) then reads the raw
pixels as the normalised image (`input_quantization`), the way Google's and Coral's
quantized classifiers take theirs.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from keras_effnet import graph

__all__ = ["fold_preprocessing", "input_quantization", "preprocessing_chain",
           "space_to_depth_stem", "without_preprocessing"]


def _is_affine(layer) -> bool:
    # keras' Normalization and ours (same class name) are both x -> (x - mean) / std
    return isinstance(layer, layers.Rescaling) or type(layer).__name__ == "Normalization"


def preprocessing_chain(model: keras.Model) -> list:
    """The run of Rescaling/Normalization layers right after the model's input."""
    chain = []
    tensor = model.inputs[0] if len(model.inputs) == 1 else None
    while tensor is not None:
        consumers = graph.consumers(model, tensor)
        if len(consumers) != 1 or not _is_affine(consumers[0]) or \
                graph.call_count(consumers[0]) != 1:
            break
        chain.append(consumers[0])
        tensor = graph.output_tensors(consumers[0])[0]
    return chain


def fold_preprocessing(model: keras.Model) -> keras.Model:
    """The same model with its preprocessing chain as one 1x1 depthwise conv, or
    `model` itself when there is no chain to fold."""
    chain = preprocessing_chain(model)
    if not chain:
        return model
    scale, offset = _chain_affine(model, chain)
    names = {layer.name for layer in chain}

    def call(layer, *args, **kwargs):
        if layer.name not in names:
            return layer(*args, **kwargs)
        if layer.name != chain[0].name:
            return args[0]
        return _affine(args[0], scale, offset)

    return graph.rebuild(model, call=call)


def _chain_affine(model: keras.Model, chain: list) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) per channel of the chain: it maps x to x * scale + offset."""
    channels = model.input_shape[-1]
    probe = np.stack([np.zeros((1, 1, channels)), np.ones((1, 1, channels))]).astype("float32")
    for layer in chain:
        probe = np.asarray(layer(probe))
    offset = probe[0, 0, 0]
    return probe[1, 0, 0] - offset, offset


def input_quantization(model: keras.Model) -> tuple[float, int] | None:
    """(scale, zero point) of a uint8 input whose raw pixels p read as exactly what the
    model's preprocessing makes of them, scale * (p - zero point), or None when no such
    pair exists (per-channel statistics, as B0-B7's ImageNet mean and std, or an
    offset that is not a whole number of steps). The Lite and EdgeTPU families'
    (p - 127) / 128 is (1/128, 127): a uint8 file with that input quantization needs
    no preprocessing op at all (`without_preprocessing`)."""
    chain = preprocessing_chain(model)
    if not chain:
        return None
    scale, offset = (np.asarray(v, np.float64) for v in _chain_affine(model, chain))
    if np.ptp(scale) > 1e-7 * abs(scale[0]) or np.ptp(offset) > 1e-7 or scale[0] <= 0:
        return None
    scale, offset = float(np.float32(scale[0])), float(offset[0])
    zero_point = round(-offset / scale)
    pixels = np.arange(256.0)
    if not 0 <= zero_point <= 255 or \
            np.max(np.abs(scale * (pixels - zero_point) - (pixels * scale + offset))) > 1e-6:
        return None
    return scale, zero_point


def without_preprocessing(model: keras.Model) -> keras.Model:
    """The same model from its preprocessing chain's output on: it takes the
    normalised image (what `input_quantization` lets a uint8 input carry)."""
    names = {layer.name for layer in preprocessing_chain(model)}
    if not names:
        return model
    return graph.rebuild(model, call=lambda layer, *args, **kwargs:
                         args[0] if layer.name in names else layer(*args, **kwargs))


def _affine(x, scale: np.ndarray, offset: np.ndarray):
    """x * scale + offset per channel, as the 1x1 depthwise conv named "preprocessing".
    Fixed, as the layers it replaces: under QAT its 0-255 inputs would otherwise give it
    gradients 255x those of the stem and flip its sign in two SGD steps."""
    affine = layers.DepthwiseConv2D(1, use_bias=True, name="preprocessing", trainable=False)
    out = affine(x)
    affine.set_weights([np.reshape(scale, (1, 1, -1, 1)), np.reshape(offset, (-1,))])
    return out


class SpaceToDepth(layers.Layer):
    """(N, H, W, C) -> (N, H/2, W/2, 4C), channel (2 * dy + dx) * C + c: TensorFlow's
    space_to_depth with block 2 (one SPACE_TO_DEPTH op in TFLite)."""

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.nn.space_to_depth(inputs, 2)
        _, height, width, channels = inputs.shape
        x = keras.ops.reshape(inputs, (-1, height // 2, 2, width // 2, 2, channels))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, height // 2, width // 2, 4 * channels))

    def compute_output_shape(self, input_shape):
        n, height, width, channels = input_shape
        return (n, height // 2, width // 2, 4 * channels)


def space_to_depth_kernel(kernel: np.ndarray) -> np.ndarray:
    """A 3x3 stride-2 kernel (3, 3, C, O) as the 2x2 stride-1 kernel (2, 2, 4C, O) that
    computes the same outputs on the space-to-depth of the input: output (i, j) reads
    input rows 2i..2i+2, i.e. rows 0-1 of block i and row 0 of block i + 1; the taps
    a 3x3 kernel does not have (row or column 3) are zero."""
    size, _, channels, outputs = kernel.shape
    if size != 3 or kernel.shape[1] != 3:
        raise ValueError(f"expected a 3x3 kernel, got {kernel.shape}")
    blocked = np.zeros((2, 2, 4 * channels, outputs), kernel.dtype)
    for ky in range(3):
        for kx in range(3):
            part = 2 * (ky % 2) + kx % 2
            blocked[ky // 2, kx // 2, part * channels:(part + 1) * channels] = kernel[ky, kx]
    return blocked


def _stem_pad(model: keras.Model):
    """(folded preprocessing or None, ZeroPadding2D, Conv2D): the 3x3 stride-2 'valid'
    stem at the model's input, padded the way TensorFlow's SAME pads an even-sized
    image (one row and column at the bottom and right); None if there is none."""
    if len(model.inputs) != 1 or keras.config.image_data_format() != "channels_last":
        return None
    tensor = model.inputs[0]
    height, width = tensor.shape[1:3]
    if height is None or width is None or height % 2 or width % 2:
        return None
    preprocessing = None
    for _ in range(2):  # the input, then the folded preprocessing's output
        consumers = graph.consumers(model, tensor)
        if len(consumers) != 1:
            return None
        layer = consumers[0]
        if isinstance(layer, layers.ZeroPadding2D):
            break
        if layer.name != "preprocessing" or preprocessing is not None:
            return None
        preprocessing = layer
        tensor = graph.output_tensors(layer)[0]
    else:
        return None
    consumers = graph.consumers(model, graph.output_tensors(layer)[0])
    if tuple(map(tuple, layer.padding)) != ((0, 1), (0, 1)) or len(consumers) != 1:
        return None
    conv = consumers[0]
    if type(conv) is not layers.Conv2D or conv.kernel_size != (3, 3) or \
            conv.strides != (2, 2) or conv.padding != "valid" or \
            conv.dilation_rate != (1, 1) or conv.groups != 1:
        return None
    return preprocessing, layer, conv


def space_to_depth_stem(model: keras.Model) -> keras.Model:
    """The same model with its stem convolution (3x3, stride 2, on an even-sized image)
    computed as SPACE_TO_DEPTH then a 2x2 stride-1 convolution on 12 channels, or
    `model` itself when the stem is not of that form.

    The same function, exactly (the padding included: SAME pads the 2x2 conv with one
    block at the bottom and right, which is the row and column the 3x3 conv read as
    padding, zeros in the same space). Integer kernels run a convolution over 3 input
    channels badly: Lite0's stem took 1.6x its float32 time in int8
    (benchmarks/op_account.py). On 12 channels the preprocessing and stem took 0.47 ms
    instead of 0.74 in a stem-only probe (int8, LiteRT, one thread, 224 px), and whole
    int8 models 3-5% less time; float32 kernels gain nothing (Lite0 2% slower), so
    `convert` rewrites the integer modes only."""
    found = _stem_pad(model)
    if found is None:
        return model
    preprocessing, pad, conv = found

    def call(layer, *args, **kwargs):
        if preprocessing is not None and layer.name == preprocessing.name:
            scale, offset = layer.get_weights()
            return _affine(SpaceToDepth(name="space_to_depth")(args[0]),
                           np.tile(scale.reshape(-1), 4), np.tile(offset, 4))
        if layer.name == pad.name:  # SAME padding in the convolution instead
            return args[0] if preprocessing is not None else \
                SpaceToDepth(name="space_to_depth")(args[0])
        if layer.name == conv.name:
            blocked = layers.Conv2D(conv.filters, 2, padding="same", use_bias=conv.use_bias,
                                    activation=conv.activation, name=conv.name,
                                    dtype=conv.dtype_policy)
            out = blocked(args[0])
            weights = conv.get_weights()
            blocked.set_weights([space_to_depth_kernel(weights[0])] + weights[1:])
            return out
        return layer(*args, **kwargs)

    return graph.rebuild(model, call=call)
