"""Quantization-aware training through tensorflow-model-optimization (tfmot).

tfmot works on Keras 2 (`tf_keras`) models only, and its default registry
refuses two things every EfficientNet has: the squeeze-excitation Multiply and
swish/sigmoid activations (plus keras.applications' Rescaling/Normalization
stem). So `quantize_aware`:

1. folds the stem preprocessing into one 1x1 depthwise conv (preprocess.py),
   which tfmot quantizes natively;
2. rebuilds the same graph in tf_keras, layer by layer, splitting a conv's
   fused swish/sigmoid into its own Activation layer, and copies the weights;
3. annotates the layers tfmot's registry lacks with `OutputQuantizeConfig`
   (fake-quantize the output, no weights): Multiply, and Activation with
   swish/sigmoid/hard_sigmoid;
4. applies tfmot's quantize_apply.

Fine-tune the returned tf_keras model (`distil_from_float` fits it to the float model's
outputs on your photos; or `compile`/`fit` it yourself with tf_keras' optimizers), then
`qat_to_tflite(qat_model, path)` writes the int8 (or uint8) file. Needs the
`qat` extra: pip install "keras-effnet[qat]".
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import keras
import numpy as np

from keras_effnet import graph
from keras_effnet.export.data import (
    MIN_CALIBRATION_IMAGES,
    bundled_photos,
    calibration_views,
    representative_images,
)
from keras_effnet.export.flatbuffer import with_signature
from keras_effnet.export.metadata import class_names_for, model_metadata
from keras_effnet.export.preprocess import fold_preprocessing
from keras_effnet.export.se import EdgeHardSwish
from keras_effnet.export.tflite import SIGNATURE, frozen_converter, input_size, run_converter
from keras_effnet.files import check_destination, write_bytes

__all__ = ["calibrate_ranges", "distil_from_float", "floor_ranges", "qat_to_tflite",
           "quantize_aware", "to_tf_keras"]

_PLAIN = ("linear", None)
_TFMOT_ACTIVATIONS = ("relu", "relu6", "softmax", "linear")


def _modules():
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as exc:
        raise ImportError("quantization-aware training needs tf_keras and "
                          "tensorflow-model-optimization: pip install 'keras-effnet[qat]'"
                          ) from exc
    return tf_keras, tfmot


@contextlib.contextmanager
def _keras3_stays():
    """tfmot sets TF_USE_LEGACY_KERAS=1 for the whole process when it loads its
    Keras modules, which would switch tf.keras to Keras 2 for everything after;
    put the variable back when we are done with tfmot."""
    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous


def _activation_name(activation) -> str | None:
    if activation is None:
        return None
    return activation if isinstance(activation, str) else activation.__name__


# Keras 3 layer class -> its tf_keras twin built from the layer's config `c`, with the
# activation `act` it keeps (the others are split into their own layer). First match wins.
_TWINS = (
    (keras.layers.DepthwiseConv2D, lambda L, c, act, **kw: L.DepthwiseConv2D(
        c["kernel_size"], strides=c["strides"], padding=c["padding"],
        depth_multiplier=c["depth_multiplier"], use_bias=c["use_bias"], activation=act, **kw)),
    (keras.layers.Conv2D, lambda L, c, act, **kw: L.Conv2D(
        c["filters"], c["kernel_size"], strides=c["strides"], padding=c["padding"],
        use_bias=c["use_bias"], dilation_rate=c["dilation_rate"], activation=act, **kw)),
    (keras.layers.BatchNormalization, lambda L, c, act, **kw: L.BatchNormalization(
        axis=c["axis"], momentum=c["momentum"], epsilon=c["epsilon"], **kw)),
    # relu6 as a ReLU layer: tfmot then fuses conv -> batch norm -> relu6 as the converter
    # does (one quantized output, 0..6); as Activation("relu6") the batch norm's output got
    # its own fake-quantization that the .tflite does not have
    (keras.layers.Activation, lambda L, c, act, **kw: L.ReLU(6.0, **kw) if act == "relu6"
     else L.Activation(act, **kw)),
    (EdgeHardSwish, lambda L, c, act, **kw: L.Activation("hard_silu", **kw)),
    (keras.layers.ZeroPadding2D, lambda L, c, act, **kw: L.ZeroPadding2D(c["padding"], **kw)),
    (keras.layers.GlobalAveragePooling2D, lambda L, c, act, **kw: L.GlobalAveragePooling2D(
        keepdims=c.get("keepdims", False), **kw)),
    (keras.layers.AveragePooling2D, lambda L, c, act, **kw: L.AveragePooling2D(
        c["pool_size"], strides=c["strides"], padding=c["padding"], **kw)),
    (keras.layers.Reshape, lambda L, c, act, **kw: L.Reshape(c["target_shape"], **kw)),
    (keras.layers.Multiply, lambda L, c, act, **kw: L.Multiply(**kw)),
    (keras.layers.Add, lambda L, c, act, **kw: L.Add(**kw)),
    (keras.layers.Dropout, lambda L, c, act, **kw: L.Dropout(
        c["rate"], noise_shape=c.get("noise_shape"), **kw)),
    (keras.layers.Dense, lambda L, c, act, **kw: L.Dense(
        c["units"], activation=act, use_bias=c["use_bias"], **kw)),
)


def _translate(layer, k2):
    """(tf_keras layer, separate activation name or None) for a Keras 3 layer."""
    act = _activation_name(getattr(layer, "activation", None))
    split = act if act not in _PLAIN and not isinstance(layer, keras.layers.Activation) and \
        not (isinstance(layer, keras.layers.Dense) and act == "softmax") else None
    make = next((make for kind, make in _TWINS if isinstance(layer, kind)), None)
    if make is None:
        raise ValueError(f"quantize_aware cannot rebuild layer {layer.name!r} "
                         f"({type(layer).__name__}) in tf_keras: it supports the layers "
                         "EfficientNets are made of")
    new = make(k2.layers, layer.get_config(), "linear" if split else act, name=layer.name,
               trainable=layer.trainable)
    return new, split


def to_tf_keras(model: keras.Model):
    """The same functional graph as a tf_keras model with the same weights
    (fused non-ReLU activations split into their own layers)."""
    k2, _ = _modules()
    model = fold_preprocessing(model)
    if not graph.is_functional(model) or len(model.inputs) != 1:
        raise ValueError("quantize_aware needs a functional model with one input")
    shape = tuple(model.input_shape[1:])
    tensors = {id(model.inputs[0]): k2.Input(shape=shape, name=model.inputs[0].name)}
    copies = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs, outputs = next(call for call in graph.calls(layer)
                               if all(id(t) in tensors for t in call[0]))
        args = [tensors[id(t)] for t in inputs]
        new, split = _translate(layer, k2)
        out = new(args if len(args) > 1 else args[0])
        if split:
            out = k2.layers.Activation(split, name=layer.name + "_activation")(out)
        tensors[id(outputs[0])] = out
        copies.append((layer, new))
    result = k2.Model(tensors[id(model.inputs[0])], tensors[id(model.outputs[0])],
                      name=model.name)
    for source, target in copies:
        if source.weights:
            target.set_weights(source.get_weights())
    return result


def _output_quantize_config(tfmot):
    quantizers = tfmot.quantization.keras.quantizers

    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """Fake-quantize a layer's output only (it has no weights to quantize)."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False,
                                                      symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputQuantizeConfig


def quantize_aware(model: keras.Model, calibration=None):
    """A tf_keras copy of `model` with fake-quantization for QAT (see module doc), its
    quantization ranges calibrated on `calibration` (a folder, a tf.data.Dataset or an
    array of 0-255 pixels; default: 100 random crops of the bundled photos)."""
    with _keras3_stays():
        rebuilt = to_tf_keras(model)
        qat = _quantize_aware(rebuilt)
        height, width = tuple(model.input_shape[1:3])
        if calibration is None:
            if height is None:
                raise ValueError("a model of any input size needs calibration= images")
            calibration = calibration_views(bundled_photos()[0], height,
                                            MIN_CALIBRATION_IMAGES, seed=0)
        calibrate_ranges(qat, rebuilt, representative_images(calibration, (height, width, 3)))
        _accept_keras3_compile(qat)
        return qat


def _accept_keras3_compile(qat) -> None:
    """Let `qat.compile` take Keras 3 optimizers, losses and metrics (a user writing Keras 3
    passes `keras.optimizers.Adam(...)`, which tf_keras refuses: "Could not interpret
    optimizer identifier"): each is rebuilt as the tf_keras class of the same name."""
    k2, _ = _modules()
    compile_ = qat.compile

    def compile(optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        metrics = None if metrics is None else [_to_tf_keras(k2.metrics, m) for m in metrics]
        return compile_(optimizer=_to_tf_keras(k2.optimizers, optimizer),
                        loss=_to_tf_keras(k2.losses, loss), metrics=metrics, **kwargs)

    compile.__doc__ = compile_.__doc__
    qat.compile = compile


def _to_tf_keras(module, item):
    """A Keras 3 optimizer, loss or metric as `module`'s class of the same name, with the
    settings both know; anything else (a string, a tf_keras object, a function) as is."""
    import inspect

    if not isinstance(item, (keras.optimizers.Optimizer, keras.losses.Loss, keras.metrics.Metric)):
        return item
    cls = getattr(module, type(item).__name__, None)
    if cls is None:
        raise ValueError(f"{type(item).__name__} has no tf_keras counterpart for QAT; pass a "
                         f"string or a tf_keras object (tf_keras.{module.__name__.split('.')[-1]})")
    accepted = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in item.get_config().items() if k in accepted}
    rate = config.get("learning_rate")
    if isinstance(rate, dict):  # a schedule, serialized by Keras 3
        config["learning_rate"] = module.schedules.deserialize(
            {"class_name": rate["class_name"], "config": rate["config"]})
    return cls(**config)


def distil_from_float(qat, model: keras.Model, images, *, epochs: int = 2, batch_size: int = 16,
                      learning_rate: float = 1e-5, verbose=0):
    """Fine-tune the fake-quantized `qat` (from `quantize_aware(model)`) to give the float
    `model`'s probabilities on `images` (0-255 pixels: the user's photos, or crops of them),
    with a KL-divergence loss: knowledge distillation, so no labels are needed and the
    integer file learns to agree with the model it came from. Keras 3 callers need no
    tf_keras: the optimizer and loss are made here. Returns the fit history's dict."""
    import tf_keras

    images = np.asarray(images, np.float32)
    targets = model.predict(images, batch_size=batch_size, verbose=0)
    qat.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                loss=tf_keras.losses.KLDivergence())
    return qat.fit(images, targets, epochs=epochs, batch_size=batch_size,
                   verbose=verbose).history


def calibrate_ranges(qat, rebuilt, images, batch_size: int = 8) -> int:
    """Set every fake-quantization range of `qat` from the float model `rebuilt` (its
    tf_keras twin, same layer names): activations from their extremes on `images` (run in
    batches: only each layer's minimum and maximum are kept), weights from the weights.
    Returns how many ranges were set.

    tfmot starts every activation range at [-6, 6] and moves it by a moving average
    (decay 0.999) during training, so an uncalibrated QAT model clips 0-255 pixels to 6:
    its predictions ignore the image, and a short fine-tune cannot recover from that."""
    targets = _range_variables(qat)
    expected = sum(1 for v in qat.weights if _RANGE_FIELD.search(v.name.rsplit("/", 1)[-1]))
    if len(targets) != expected:
        raise RuntimeError(f"found {len(targets)} of the QAT model's {expected} quantization "
                           "ranges: tfmot's variables are not where this code expects them")
    extremes = _activation_extremes(rebuilt, np.asarray(images, np.float32), batch_size,
                                    pre_activation=sorted({layer.name for _, layer, kind, _
                                                           in targets if kind == "pre_activation"}))
    for variable, layer, kind, end in targets:
        name = None if layer is None else layer.name
        if "kernel" in kind:
            low, high = _kernel_range(rebuilt.get_layer(name).weights[0].numpy(),
                                      tuple(variable.shape))
        else:
            if tuple(variable.shape):
                raise RuntimeError(f"{variable.name}: expected a per-tensor activation range")
            low, high = extremes[(name, kind == "pre_activation")]
        variable.assign(low if end == "min" else high)
    floor_ranges(qat)
    return len(targets)


# Floors for degenerate ranges: a pruned or dead branch (all-zero kernels, a constant-zero
# activation) is a legitimate model, but a zero-width range made the converter quantize a
# bias of 4 with a scale of 1.5e-17: the int32 saturated and the SE gate read 0.5, not
# sigmoid(4) = 0.98. An activation range holds 0 and is at least MIN_ACTIVATION_WIDTH
# wide; a kernel's range is at least MIN_KERNEL_RANGE and wide enough that its bias fits
# within BIAS_LIMIT at scale (input scale x kernel scale) for any input range the floor
# allows. Only near-zero kernels with a large bias are widened (a zero kernel quantizes
# exactly at any scale).
MIN_ACTIVATION_WIDTH = 1e-3
MIN_KERNEL_RANGE = 1e-6
BIAS_LIMIT = 2.0 ** 30


def floor_ranges(qat) -> int:
    """Apply the floors above to every range of `qat`; returns how many ranges changed.
    Run after calibration and again before conversion: tfmot resets kernel ranges to the
    weights' extremes at every training step and moves activation ranges toward a
    constant's zero width."""
    changed = 0
    ranges = {}  # (layer, kind) -> [layer, {"min": variable, "max": variable}]
    for variable, layer, kind, end in _range_variables(qat):
        ranges.setdefault((id(layer), kind), [layer, {}])[1][end] = variable
    for (_, kind), (layer, ends) in ranges.items():
        low, high = ends["min"].numpy(), ends["max"].numpy()
        if "kernel" in kind:
            bias = getattr(layer, "bias", None)
            floor = np.full_like(high, MIN_KERNEL_RANGE)
            if bias is not None:
                input_scale = MIN_ACTIVATION_WIDTH / 255
                needed = 127 * np.abs(bias.numpy()) / (input_scale * BIAS_LIMIT)
                floor = np.maximum(floor, needed if needed.shape == high.shape else needed.max())
            new_high = np.maximum(np.maximum(high, -low), floor)
            new_low = -new_high
        else:
            new_low = np.minimum(low, 0.0)
            new_high = np.maximum(np.maximum(high, 0.0), new_low + MIN_ACTIVATION_WIDTH)
        if not (np.array_equal(new_low, low) and np.array_equal(new_high, high)):
            ends["min"].assign(new_low)
            ends["max"].assign(new_high)
            changed += 1
    return changed


def _range_variables(qat) -> list[tuple]:
    """(variable, layer in the float model or None for the input, kind, "min"|"max")
    for every range variable. tfmot's QuantizeLayer quantizes the model's input; a
    QuantizeWrapper holds a layer named as in the float model (the wrappers' own names
    get suffixes when a process builds several QAT models, so they are not used)."""
    found = []
    for wrapper in qat.layers:
        inner = getattr(wrapper, "layer", None)
        for variable in wrapper.weights:
            field = _RANGE_FIELD.search(variable.name.rsplit("/", 1)[-1])
            if field is not None:
                found.append((variable, inner, *field.groups()))
    return found


def _activation_extremes(rebuilt, images, batch_size: int, pre_activation: list[str]) -> dict:
    """{(layer name, before its activation): (min, max)} over `images`; (None, False) is
    the input's."""
    k2, _ = _modules()
    layers = rebuilt.layers[1:]
    probe = k2.Model(rebuilt.inputs, [layer.output for layer in layers]
                     + [rebuilt.get_layer(name).input for name in pre_activation])
    extremes = {(None, False): (float(images.min()), float(images.max()))}

    def update(key, array):
        low, high = float(np.min(array)), float(np.max(array))
        old = extremes.get(key, (low, high))
        extremes[key] = (min(old[0], low), max(old[1], high))

    for start in range(0, len(images), batch_size):
        values = probe(images[start:start + batch_size], training=False)
        for layer, value in zip(layers, values[:len(layers)]):
            update((layer.name, False), np.asarray(value))
        for name, value in zip(pre_activation, values[len(layers):]):
            update((name, True), _pre_activation(rebuilt.get_layer(name), np.asarray(value)))
    return extremes


# tfmot's range variables: kernel_min, depthwise_kernel_max, post_activation_min,
# pre_activation_max, output_min, quantize_layer_max (quantize_layer_1_max, ...)
_RANGE_FIELD = re.compile(r"(depthwise_kernel|kernel|post_activation|pre_activation|output|"
                          r"quantize_layer(?:_\d+)?)_(min|max)(?:_\d+)?:\d+$")


def _pre_activation(layer, inputs: np.ndarray) -> np.ndarray:
    """What `layer` computes on `inputs` before its activation (a softmax head's logits)."""
    config = layer.get_config()
    config["activation"] = "linear"
    twin = layer.__class__.from_config(config)
    twin.build(inputs.shape)
    twin.set_weights(layer.get_weights())
    return np.asarray(twin(inputs))


def _kernel_range(kernel: np.ndarray, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(-m, m) with m the largest |weight|, per output channel when `shape` is (channels,)
    (symmetric: TFLite's int8 kernels need a zero point of 0)."""
    if shape:  # per-axis: the axis of that many channels, the last one that fits
        axis = max(a for a in range(kernel.ndim) if kernel.shape[a] == shape[0])
        high = np.abs(np.moveaxis(kernel, axis, -1).reshape(-1, shape[0])).max(0)
    else:
        high = np.abs(kernel).max()
    return -high, high


def _quantize_aware(rebuilt):
    k2, tfmot = _modules()
    config = _output_quantize_config(tfmot)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        needs_output = isinstance(layer, k2.layers.Multiply) or (
            isinstance(layer, k2.layers.Activation)
            and _activation_name(layer.activation) not in _TFMOT_ACTIVATIONS)
        return annotate(copy, quantize_config=config()) if needs_output else annotate(copy)

    annotated = k2.models.clone_model(rebuilt, clone_function=clone)
    annotated.set_weights(rebuilt.get_weights())
    with tfmot.quantization.keras.quantize_scope({"OutputQuantizeConfig": config}):
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    _keep_frozen(qat)
    return qat


def _keep_frozen(qat) -> None:
    """tfmot's QuantizeWrapperV2.build lists a wrapped layer's quantized weights as trainable
    whether or not the layer is (tfmot 0.8.1, quantize_wrapper.py); put the weights of
    frozen layers (the folded preprocessing) back among the non-trainable ones (the
    quantizers' own ranges are non-trainable already)."""
    for wrapper in qat.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None or inner.trainable or not getattr(wrapper, "_trainable_weights", None):
            continue
        wrapper._non_trainable_weights.extend(wrapper._trainable_weights)
        wrapper._trainable_weights = []


def qat_to_tflite(qat_model, path: str | os.PathLike, mode: str = "int8", *,
                  overwrite: bool = False, labels=None, metadata: bool = True) -> Path:
    """Write a quantization-aware-trained tf_keras model as a full-integer `.tflite`
    (`int8`: float I/O; `uint8`: uint8 I/O). No calibration data is needed: the
    ranges were learned during training. The file carries TFLite metadata as
    `to_tflite` writes it (`labels`: class names, default ImageNet's for 1000 classes)."""
    import tensorflow as tf

    if mode not in ("int8", "uint8"):
        raise ValueError(f"qat_to_tflite writes integer models: mode must be int8 or uint8, "
                         f"got {mode!r}")
    path = check_destination(path, overwrite)
    height, width = input_size(qat_model)
    with _keras3_stays():
        # traced at batch 1 and frozen in memory, as `convert` does (from_keras_model took
        # 44 of a small model's 70 s QAT run and left dynamic-batch SHAPE/PACK/RESHAPE ops)
        converter = frozen_converter(qat_model, (1, height, width, 3))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "uint8":
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        floor_ranges(qat_model)  # fine-tuning may have undone them
        content = with_signature(run_converter(converter), *SIGNATURE)
    if metadata:
        content = model_metadata(content, qat_model, class_names_for(qat_model, labels))
    write_bytes(path, content, overwrite)
    return path
