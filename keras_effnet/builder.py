"""Builds one functional `keras.Model` from a `VariantSpec`.

stem (rescaling, normalization, conv) -> blocks from `plan_blocks` -> head
(1x1 conv, pooling, dropout, classifier). Layer names and the order of
weighted layers are those of keras.applications' EfficientNetB0-B7.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import keras
from keras import layers

from keras_effnet import weight_sets
from keras_effnet import weights as weights_lib
from keras_effnet.blocks import (
    CONV_KERNEL_INITIALIZER,
    DENSE_KERNEL_INITIALIZER,
    block_fn,
    channel_axis,
    float32_under_mixed_precision,
    same_padding,
    spatial_shape,
)
from keras_effnet.hub import parse_hub_spec
from keras_effnet.layers import BatchNormalization, Normalization
from keras_effnet.scaling import MIN_INPUT_SIZE, head_filters, plan_blocks, stem_filters
from keras_effnet.specs import VariantSpec
from keras_effnet.weight_sets import SET_NAMES

__all__ = ["build_efficientnet"]



def _check_weights_arg(weights) -> None:
    if weights is None or weights in SET_NAMES:
        return
    if isinstance(weights, str) and weights.startswith("hub:"):
        parse_hub_spec(weights)
        return
    if isinstance(weights, (str, os.PathLike)):
        if os.path.isfile(weights):
            return
        raise ValueError(
            f"weights={str(weights)!r}: no such file. Expected None (random "
            f"initialization), a weight set ({', '.join(repr(s) for s in SET_NAMES)}), "
            "'hub:<owner>/<repo>', or the path of a .weights.h5, .h5, .keras, "
            ".safetensors (a timm-layout PyTorch state dict) or (Lite) .pth file."
        )
    raise ValueError(
        f"weights must be None, a weight set name, 'hub:<repo id>' or a file path, got "
        f"{type(weights).__name__}"
    )


def _with_weight_set(variant: VariantSpec, weights) -> VariantSpec:
    """The variant with the named weight set's normalisation and resolution: the built-in
    preprocessing and the default input size follow the weights (AdvProp, Lite and EdgeTPU
    sets were trained on other input statistics; Lite3/4 were validated at 300/380 px)."""
    if weights not in SET_NAMES:
        return variant
    ws = weight_sets.find(variant.name, weights, variant.constructor_name)
    return dataclasses.replace(variant, input_mean=ws.mean, input_std=ws.std,
                               resolution=ws.resolution)


@contextlib.contextmanager
def _recursion_limit(limit: int):
    """Keras maps a functional graph recursively, one frame per layer on the deepest path:
    L2 (over 1,000 layers) needs more than Python's default of 1,000 frames."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def _check_arguments(weights, include_top, classes, pooling, classifier_activation,
                     drop_connect_rate, dropout_rate) -> None:
    if weights in SET_NAMES and include_top and classes != 1000:
        raise ValueError(
            f"weights={weights!r} with include_top=True has a 1000-class head, got "
            f"classes={classes}. Use include_top=False and add your own head, or weights=None."
        )
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive int, got {classes!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if weights is not None and include_top and classifier_activation not in (None, "softmax"):
        raise ValueError(
            "with pretrained weights, classifier_activation must be None (logits) or "
            f"'softmax', got {classifier_activation!r}"
        )
    for label, rate in (("drop_connect_rate", drop_connect_rate), ("dropout_rate", dropout_rate)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {rate!r}")


def _stem(x, variant: VariantSpec, include_preprocessing: bool):
    """Rescaling and normalisation (optional), then the strided 3x3 conv, BN, activation."""
    if include_preprocessing:
        x = layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        mean, std = variant.input_mean, variant.input_std
        channels = x.shape[channel_axis()]
        if channels is not None and channels != len(mean):
            # grayscale, RGBA, multispectral (weights=None only): no statistics to apply,
            # as keras.applications' unadapted Normalization (mean 0, variance 1)
            mean, std = (0.0,) * channels, (1.0,) * channels
        x = Normalization(mean, std, axis=channel_axis(), name="normalization")(x)
    x = layers.ZeroPadding2D(same_padding(spatial_shape(x), 3), name="stem_conv_pad")(x)
    x = layers.Conv2D(
        stem_filters(variant), 3, strides=2, padding="valid", use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER, name="stem_conv",
    )(x)
    x = BatchNormalization(axis=channel_axis(), name="stem_bn")(x)
    return layers.Activation(variant.activation, name="stem_activation")(x)


def _head(x, variant: VariantSpec, include_top, pooling, classes, classifier_activation,
          dropout_rate):
    """The 1x1 conv to the head width, then the classifier or the requested pooling."""
    x = layers.Conv2D(
        head_filters(variant), 1, padding="same", use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER, name="top_conv",
    )(x)
    x = BatchNormalization(axis=channel_axis(), name="top_bn")(x)
    x = layers.Activation(variant.activation, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        return layers.Dense(
            classes, activation=classifier_activation,
            kernel_initializer=DENSE_KERNEL_INITIALIZER, name="predictions",
            dtype=float32_under_mixed_precision(),
        )(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def _resolve_input_shape(input_shape, input_tensor, variant: VariantSpec, include_top: bool,
                         pretrained: bool) -> tuple:
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    first = channel_axis() == 1  # keras.config.image_data_format() == "channels_first"
    layout = "(channels, height, width)" if first else "(height, width, channels)"
    if input_shape is None:
        size = variant.resolution if include_top else None
        return (3, size, size) if first else (size, size, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be {layout} ({keras.config.image_data_format()}), "
                         f"got {input_shape}")
    channels = input_shape[0] if first else input_shape[-1]
    if pretrained and channels != 3:
        raise ValueError(
            f"input_shape {input_shape} has {channels} channels in {layout}; pretrained "
            "weights need 3 (RGB). Use weights=None for other channel counts."
        )
    for size in (input_shape[1:] if first else input_shape[:2]):
        if size is not None and size < MIN_INPUT_SIZE:
            raise ValueError(
                f"input_shape {input_shape} is too small: height and width must be at "
                f"least {MIN_INPUT_SIZE} px (the network downsamples 32x); "
                f"{variant.constructor_name} was trained at {variant.resolution} px."
            )
    return input_shape


def build_efficientnet(
    variant: VariantSpec,
    *,
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    include_preprocessing: bool = True,
    drop_connect_rate: float = 0.2,
    dropout_rate: float | None = None,
    name: str | None = None,
) -> keras.Model:
    """Build `variant` and load `weights` (a weight set name such as 'imagenet',
    'hub:<repo id>', a file path, or None)."""
    _check_weights_arg(weights)
    pretrained = weights is not None
    loaded_as = variant
    variant = _with_weight_set(variant, weights)
    dropout_rate = variant.dropout if dropout_rate is None else dropout_rate
    _check_arguments(weights, include_top, classes, pooling, classifier_activation,
                     drop_connect_rate, dropout_rate)
    shape = _resolve_input_shape(input_shape, input_tensor, variant, include_top, pretrained)
    if input_tensor is None:
        img_input = layers.Input(shape=shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=shape)
    else:
        img_input = input_tensor

    x = _stem(img_input, variant, include_preprocessing)
    plans = plan_blocks(variant, drop_connect_rate)
    for plan in plans:
        x = block_fn(plan, variant.activation)(x)
    x = _head(x, variant, include_top, pooling, classes, classifier_activation, dropout_rate)

    inputs = img_input if input_tensor is None else keras.utils.get_source_inputs(input_tensor)
    with _recursion_limit(len(plans) * 40):
        model = keras.Model(inputs, x, name=name or variant.model_name)

    if pretrained:
        weights_lib.load_into(model, loaded_as, weights, include_top=include_top)
    return model
