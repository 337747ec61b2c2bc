"""Multi-scale features: the output of every resolution level of an EfficientNet, for
detection and segmentation heads (EfficientDet's BiFPN, U-Net decoders).

    backbone = feature_model("b0", weights="imagenet", input_shape=(512, 512, 3))
    p1, p2, p3, p4, p5 = backbone(images)          # strides 2, 4, 8, 16, 32
    backbone.feature_info    # [FeatureLevel("P1", 2, 16, "block1a_project_bn"), ...]

Level Pk is the output of the last block whose output is at 1/2^k of the input (as
timm's `features_only` and keras-hub's `pyramid_outputs`): the same tensors the
classifier computes, read from its own graph (the model is not built a second time), so
weights load as they do for the classifier and training one trains the other.
"""

from __future__ import annotations

import dataclasses
import math
import re

import keras

__all__ = ["BLOCK_NAME", "LEVELS", "FeatureLevel", "feature_info", "feature_model"]

BLOCK_NAME = re.compile(r"^(block\d+[a-z]+)_")  # a block's layers: block6a_expand_conv
LEVELS = ("P1", "P2", "P3", "P4", "P5")  # strides 2, 4, 8, 16, 32


@dataclasses.dataclass(frozen=True)
class FeatureLevel:
    """One resolution level: its name, stride, channels and the layer whose output it is."""

    name: str
    stride: int
    channels: int
    layer: str


def feature_info(model: keras.Model) -> list[FeatureLevel]:
    """The levels P1-P5 of an EfficientNet built by keras_effnet (any family, any phi, with
    or without its top), from its graph. The model needs a fixed input size."""
    height, width = model.input_shape[1:3]
    if height is None or width is None:
        raise ValueError(f"{model.name} takes any image size; build it with a fixed "
                         "input_shape to read its levels (the strides come from the shapes)")
    last_layer = {}  # block id -> its last layer, in graph order
    for layer in model.layers:
        match = BLOCK_NAME.match(layer.name)
        if match:
            last_layer[match.group(1)] = layer
    if not last_layer:
        raise ValueError(f"{model.name} has no blocks named like 'block1a_...': expected an "
                         "EfficientNet built by keras_effnet")
    ends = {}  # level -> the last block output at its resolution
    for layer in last_layer.values():
        shape = layer.output.shape
        for k, name in enumerate(LEVELS, start=1):
            if len(shape) == 4 and shape[1] == math.ceil(height / 2**k) and \
                    shape[2] == math.ceil(width / 2**k):
                ends[name] = FeatureLevel(name, 2**k, int(shape[-1]), layer.name)
    missing = [name for name in LEVELS if name not in ends]
    if missing:
        raise ValueError(f"{model.name} has no block output at the stride of "
                         f"{', '.join(missing)} for a {height}x{width} input")
    return [ends[name] for name in LEVELS]


def feature_model(model: keras.Model | str, levels=LEVELS, **build_kwargs) -> keras.Model:
    """A model from the input to the outputs of `levels` (default P1-P5) of `model`, or of
    the variant named (built with `include_top=False` and `build_kwargs`: weights,
    input_shape, ...). Its layers are `model`'s own; `feature_info` lists its levels."""
    if isinstance(model, str):
        from keras_effnet import build

        model = build(model, include_top=False, **build_kwargs)
    elif build_kwargs:
        raise ValueError(f"build arguments {sorted(build_kwargs)} are for a variant name, not "
                         "a model that is already built")
    info = {level.name: level for level in feature_info(model)}
    unknown = [name for name in levels if name not in info]
    if unknown or not levels:
        raise ValueError(f"unknown level(s) {unknown or levels!r}: expected some of "
                         f"{', '.join(LEVELS)}")
    chosen = [info[name] for name in levels]
    outputs = [model.get_layer(level.layer).output for level in chosen]
    features = keras.Model(model.inputs, outputs, name=f"{model.name}_features")
    features.feature_info = chosen
    return features
