"""EfficientNet blocks as functions over tensors.

Each block function takes a `BlockPlan` and returns an `apply(x)` function
that creates top-level Keras layers named exactly as keras.applications names
them (`block2a_expand_conv`, ...). Blocks are not `Layer` subclasses: nesting
would change the weight layout, and Keras' official `.h5` files load by the
order of weighted layers.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from keras_effnet.layers import BatchNormalization, DepthwiseConv2D
from keras_effnet.scaling import BlockPlan
from keras_effnet.specs import FUSED, MBCONV

__all__ = [
    "CONV_KERNEL_INITIALIZER",
    "DENSE_KERNEL_INITIALIZER",
    "block_fn",
    "float32_under_mixed_precision",
    "fused_block",
    "mbconv_block",
    "same_padding",
]

# keras.applications / tensorflow/tpu: He-style fan-out init for convolutions,
# uniform 1/sqrt(fan_out) for the classifier.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def same_padding(input_size: tuple, kernel_size: int) -> tuple:
    """Explicit padding that reproduces TensorFlow's SAME for a stride-2 conv.

    SAME pads the extra row and column at the bottom/right when the input is
    even; keras.applications writes this as a ZeroPadding2D so the conv can be
    'valid' and the graph is identical on every backend.
    """
    half = kernel_size // 2
    adjust = [1 if size is None else 1 - size % 2 for size in input_size]
    return ((half - adjust[0], half), (half - adjust[1], half))


def float32_under_mixed_precision() -> str | None:
    """The dtype for layers whose output must stay float32 under a mixed policy.

    The SE gate (sigmoid) and the classifier's softmax saturate in float16:
    sigmoid(x) rounds to exactly 1 or underflows to 0 and softmax overflows,
    which is where EfficientNet's NaN reports under mixed precision come from.
    Under `mixed_float16`/`mixed_bfloat16` those layers compute in float32
    (their variables are float32 either way, so the weights are unchanged);
    under any other policy they follow it.
    """
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def channel_axis() -> int:
    """-1 for channels_last images, 1 for channels_first (keras.config.image_data_format(),
    which every Keras image layer follows)."""
    return 1 if keras.config.image_data_format() == "channels_first" else -1


def spatial_shape(tensor) -> tuple:
    """(height, width) of an image tensor in the configured data format."""
    shape = tuple(tensor.shape)
    return shape[2:4] if channel_axis() == 1 else shape[1:3]


def _bn(name: str) -> layers.Layer:
    # keras.applications defaults: momentum 0.99, epsilon 1e-3 (tensorflow/tpu too)
    return BatchNormalization(axis=channel_axis(), name=name)


def _conv(filters: int, kernel_size: int, name: str, strides: int = 1, padding: str = "same"):
    return layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER, name=name,
    )


def _residual(x, inputs, plan: BlockPlan):
    if plan.id_skip and plan.strides == 1 and plan.filters_in == plan.filters_out:
        if plan.drop_rate > 0:
            # stochastic depth: drop the whole residual branch per example
            x = layers.Dropout(plan.drop_rate, noise_shape=(None, 1, 1, 1),
                               name=plan.name + "drop")(x)
        x = layers.add([x, inputs], name=plan.name + "add")
    return x


def mbconv_block(plan: BlockPlan, activation: str) -> Callable:
    """Inverted residual: expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1."""
    name = plan.name

    def apply(inputs):
        # expansion
        filters = plan.expand_filters
        x = inputs
        if plan.expand_ratio != 1:
            x = _conv(filters, 1, name + "expand_conv")(x)
            x = _bn(name + "expand_bn")(x)
            x = layers.Activation(activation, name=name + "expand_activation")(x)

        # depthwise
        padding = "same"
        if plan.strides == 2:
            x = layers.ZeroPadding2D(
                same_padding(spatial_shape(x), plan.kernel_size), name=name + "dwconv_pad"
            )(x)
            padding = "valid"
        x = DepthwiseConv2D(
            plan.kernel_size, strides=plan.strides, padding=padding, use_bias=False,
            depthwise_initializer=CONV_KERNEL_INITIALIZER, name=name + "dwconv",
        )(x)
        x = _bn(name + "bn")(x)
        x = layers.Activation(activation, name=name + "activation")(x)

        # squeeze-excite
        if plan.se_filters:
            se = layers.GlobalAveragePooling2D(name=name + "se_squeeze")(x)
            se = layers.Reshape((filters, 1, 1) if channel_axis() == 1 else (1, 1, filters),
                                name=name + "se_reshape")(se)
            se = layers.Conv2D(
                plan.se_filters, 1, padding="same", activation=activation,
                kernel_initializer=CONV_KERNEL_INITIALIZER, name=name + "se_reduce",
            )(se)
            se = layers.Conv2D(
                filters, 1, padding="same", activation="sigmoid",
                kernel_initializer=CONV_KERNEL_INITIALIZER, name=name + "se_expand",
                dtype=float32_under_mixed_precision(),
            )(se)
            x = layers.multiply([x, se], name=name + "se_excite")

        # projection
        x = _conv(plan.filters_out, 1, name + "project_conv")(x)
        x = _bn(name + "project_bn")(x)
        return _residual(x, inputs, plan)

    return apply


def fused_block(plan: BlockPlan, activation: str) -> Callable:
    """EdgeTPU block without depthwise: expand kxk -> project 1x1, the stride on the
    projection (`plan.fused_stride == "project"`, what the released EdgeTPU checkpoints
    were trained with) or on the expansion ("expand", tensorflow/tpu and timm today).
    Layer names follow keras.applications' EfficientNetV2 fused block.
    """
    name = plan.name
    # without an expansion there is only the projection to stride
    expand_strides = plan.strides if plan.fused_stride == "expand" and plan.expand_ratio != 1 \
        else 1

    def apply(inputs):
        x = inputs
        # expansion
        if plan.expand_ratio != 1:
            padding = "same"
            if expand_strides == 2:
                x = layers.ZeroPadding2D(same_padding(spatial_shape(x), plan.kernel_size),
                                         name=name + "expand_pad")(x)
                padding = "valid"
            x = _conv(plan.expand_filters, plan.kernel_size, name + "expand_conv",
                      strides=expand_strides, padding=padding)(x)
            x = _bn(name + "expand_bn")(x)
            x = layers.Activation(activation, name=name + "expand_activation")(x)
        # projection (1x1 needs no padding at any stride)
        x = _conv(plan.filters_out, 1, name + "project_conv",
                  strides=plan.strides // expand_strides, padding="valid")(x)
        x = _bn(name + "project_bn")(x)
        return _residual(x, inputs, plan)

    return apply


_BLOCKS = {MBCONV: mbconv_block, FUSED: fused_block}


def block_fn(plan: BlockPlan, activation: str) -> Callable:
    return _BLOCKS[plan.kind](plan, activation)
