"""Fine-tuning: a new classifier on a pretrained backbone, frozen, then opened from the top.

    model = classifier("lite0", classes=5, weights="imagenet")
    freeze_backbone(model)                       # only the new head trains
    model.compile(...); model.fit(...)
    unfreeze_top(model, blocks=2)                # then the last two blocks, BN still frozen
    model.compile(...)                           # Keras needs a compile after `trainable` changes
    model.fit(...)

The model is one flat functional model with keras.applications' layer names
(`block7a_...`, `top_conv`, `predictions`), so everything else in keras_effnet
(export, Grad-CAM) takes it as it takes a model built with `include_top=True`.
A frozen BatchNormalization layer runs in inference mode (Keras 3), which is
what keeps a small fine-tuning set from overwriting ImageNet's statistics.
"""

from __future__ import annotations

import keras

from keras_effnet import graph
from keras_effnet.blocks import float32_under_mixed_precision
from keras_effnet.features import BLOCK_NAME
from keras_effnet.specs import get_variant

__all__ = ["BLOCK_NAME", "block_ids", "check_classes", "classifier", "freeze_backbone",
           "unfreeze_top"]

_HEAD = ("avg_pool", "top_dropout", "predictions")


def classifier(variant: str, classes: int, *, weights="imagenet", image_size: int | None = None,
               dropout_rate: float | None = None, drop_connect_rate: float = 0.2,
               name: str | None = None) -> keras.Model:
    """`variant`'s backbone (pretrained by default) with a fresh `classes`-way softmax head."""
    from keras_effnet import build

    spec = get_variant(variant)
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive int, got {classes!r}")
    size = image_size or spec.resolution
    backbone = build(spec.name, include_top=False, weights=weights, input_shape=(size, size, 3),
                     drop_connect_rate=drop_connect_rate)
    rate = spec.dropout if dropout_rate is None else dropout_rate
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    if rate > 0:
        x = keras.layers.Dropout(rate, name="top_dropout")(x)
    # a new head starts at zero: the first loss is ln(classes), and the pretrained
    # backbone gets no gradient until the head has learnt something (the ImageNet
    # builder's initializer gives logits of several units on pretrained features)
    outputs = keras.layers.Dense(
        classes, activation="softmax", kernel_initializer="zeros",
        name="predictions", dtype=float32_under_mixed_precision())(x)
    return keras.Model(backbone.input, outputs, name=name or f"{backbone.name}_{classes}_classes")


def check_classes(model: keras.Model, classes: int) -> None:
    """A clear error when the model's classifier does not have `classes` outputs."""
    units = model.outputs[0].shape[-1]
    if units != classes:
        raise ValueError(
            f"the data has {classes} classes but {model.name}'s head has {units} outputs; "
            f"build it with classes={classes} (or keras_effnet.training.classifier(variant, "
            f"{classes}) to put a new head on pretrained weights)")


def block_ids(model: keras.Model) -> list[str]:
    """The model's blocks in order: ['block1a', 'block2a', 'block2b', ...]."""
    seen = []
    for layer in graph.layers(model):
        match = BLOCK_NAME.match(layer.name)
        if match and match.group(1) not in seen:
            seen.append(match.group(1))
    return seen


def freeze_backbone(model: keras.Model) -> int:
    """Freeze everything but the classifier head; returns the trainable weight count left."""
    for layer in graph.layers(model):  # a nested backbone is frozen whole, then layer by layer
        layer.trainable = layer.name in _HEAD
    return sum(int(v.numpy().size) for v in model.trainable_weights)


def unfreeze_top(model: keras.Model, blocks: int, *, batchnorm: bool = False,
                 head_conv: bool = True) -> list[str]:
    """Make the last `blocks` blocks (and `top_conv`) trainable; returns the weighted layers opened.

    BatchNormalization layers stay frozen (inference mode) unless
    `batchnorm=True`: with a small batch their batch statistics would replace
    the pretrained ones. Compile again afterwards.
    """
    ids = block_ids(model)
    if not isinstance(blocks, int) or not 0 <= blocks <= len(ids):
        raise ValueError(f"blocks must be an int in 0..{len(ids)} ({model.name} has {len(ids)} "
                         f"blocks), got {blocks!r}")
    opened = set(ids[len(ids) - blocks:])
    names = []
    for layer in graph.layers(model):
        if hasattr(layer, "layers"):
            layer.trainable = True  # nested backbone: open it, then close what stays frozen
            continue
        match = BLOCK_NAME.match(layer.name)
        in_top = (match is not None and match.group(1) in opened) or \
            (head_conv and layer.name in ("top_conv", "top_bn"))
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        if layer.name in _HEAD:
            layer.trainable = True
        elif in_top and (batchnorm or not is_bn):
            layer.trainable = True
            if layer.weights:
                names.append(layer.name)
        else:
            layer.trainable = False
    return names
