"""Keras model -> `.tflite`, in every mode a phone or a microcontroller wants.

    float32   as trained
    float16   float16 weights, float32 compute (half the file, GPU delegates like it)
    dynamic   int8 weights, float activations (no calibration data needed)
    int8      full integer kernels, float32 input and output
    uint8     full integer kernels, uint8 input (raw pixels) and uint8 output

The model is traced at a static input shape and its variables frozen in memory
(`TFLiteConverter.from_concrete_functions`, the same ops and numbers as writing a
SavedModel first and converting that, in a fifth of the time), and the file gets
the `serving_default` signature a SavedModel would have given it; the
calibration images go through the model's own preprocessing, which lives
inside the model. Two exact rewrites come first (keras_effnet.export.preprocess):
the preprocessing becomes one 1x1 depthwise convolution, and in the integer modes
the stem's 3x3 stride-2 convolution on an even-sized image becomes SPACE_TO_DEPTH
and a 2x2 convolution on 12 channels, which CPU integer kernels run faster
(`to_edgetpu` keeps the 3x3 form). In uint8 files of the Lite and EdgeTPU families
even that op goes: the input's quantization, (1/128, 127), reads raw pixels as the
normalised image ((p - 127) / 128, `preprocess.input_quantization`); B0-B7's
per-channel ImageNet statistics keep the op and a (1, 0) input.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from keras_effnet.console import quieted
from keras_effnet.export.data import batches_of_one, representative_images
from keras_effnet.export.flatbuffer import read_model, with_input_quantization, with_signature
from keras_effnet.export.metadata import class_names_for, model_metadata
from keras_effnet.export.preprocess import (
    fold_preprocessing,
    input_quantization,
    space_to_depth_stem,
    without_preprocessing,
)
from keras_effnet.export.se import apply_se_strategy, check_se, find_se_blocks, parse_se
from keras_effnet.files import check_destination, write_bytes

__all__ = ["MODES", "QUANTIZED_MODES", "convert", "input_size", "to_tflite"]

MODES = ("float32", "float16", "dynamic", "int8", "uint8")
QUANTIZED_MODES = ("int8", "uint8")  # the modes that need calibration images


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def input_size(model, image_size: int | None = None) -> tuple[int, int]:
    """The (H, W) the artifact will take: the model's own, or `image_size`."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected a model taking (N, H, W, 3) RGB images, got input {shape}")
    height, width = shape[1:3]
    if image_size is not None:
        if height is not None and (height, width) != (image_size, image_size):
            raise ValueError(f"image_size={image_size} but the model takes {height}x{width} images")
        return image_size, image_size
    if height is None or width is None:
        raise ValueError("the model takes images of any size; TFLite needs a fixed one: pass "
                         "image_size=N (--image_size) or build it with input_shape=(N, N, 3)")
    return height, width


SIGNATURE = ("serving_default", ["images"], ["output_0"])  # key, input and output names


def frozen_converter(model, shape: tuple):
    """A converter over `model` traced at `shape`, its variables frozen in memory. Writing
    a SavedModel and converting that (what Keras' docs show) gives the same ops and
    numbers but spent 8 of a tiny model's 9 seconds tracing and saving."""
    import tensorflow as tf

    serve = tf.function(lambda images: model(images, training=False),
                        input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], model)
    converter.experimental_lower_to_saved_model = False  # freeze, no SavedModel round trip
    return converter


@quieted
def run_converter(converter) -> bytes:
    with warnings.catch_warnings():  # the frozen path's note on uint8 input statistics,
        # which the converter takes from calibration: nothing for the user to do
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        return converter.convert()


def se_node_names(tflite_bytes: bytes, model) -> list[str]:
    """Output tensor names of the converted ops that belong to SE sub-graphs, for the
    quantization debugger's denylist (the converter names tensors after layers)."""
    layer_names = {name for block in find_se_blocks(model)
                   for name in block.layers + (block.excite,)}
    nodes = []
    for op in read_model(tflite_bytes).ops:
        for name in op.output_names:
            parts = {piece.rsplit("_", 1)[0] if piece.rsplit("_", 1)[-1].isdigit() else piece
                     for chunk in name.split(";") for piece in chunk.split("/")}
            if parts & layer_names:
                nodes.append(name)
    return nodes


def convert(model, mode: str, representative_data=None, se="keep", batch_size: int | None = 1,
            image_size: int | None = None, progress: bool = True,
            images: np.ndarray | None = None, space_to_depth: bool = True) -> bytes:
    """The `.tflite` bytes; nothing is written. `images` skips re-reading
    `representative_data` when the caller has already checked it; `space_to_depth`
    False keeps the 3x3 stem in the integer modes too."""
    import tensorflow as tf

    check_mode(mode)
    parts = parse_se(se)
    height, width = input_size(model, image_size)
    if mode in QUANTIZED_MODES and images is None:
        images = representative_images(representative_data, (height, width, 3))
    if "float" in parts and mode not in QUANTIZED_MODES:
        raise ValueError(f"se='float' keeps SE in float inside an integer model; mode={mode!r} "
                         "is not integer: use mode='int8' or 'uint8'")
    transformed = apply_se_strategy(model, parts)
    pixels = input_quantization(transformed) if mode == "uint8" else None
    if pixels is not None:  # the uint8 input's quantization does the preprocessing
        transformed = without_preprocessing(transformed)
        images = ((np.asarray(images, np.float32) - pixels[1]) * pixels[0]).astype(np.float32)
    else:
        transformed = fold_preprocessing(transformed)
    if mode in QUANTIZED_MODES and space_to_depth:  # float kernels gain nothing from it
        transformed = space_to_depth_stem(transformed)
    shape = (batch_size, height, width, 3)
    converter = frozen_converter(transformed, shape)
    content = None
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in QUANTIZED_MODES:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: batches_of_one(images, progress)
        if mode == "uint8":
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        if "float" in parts:
            content = _convert_se_float(converter, shape, transformed, images, progress,
                                        uint8_io=mode == "uint8")
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    content = content if content is not None else run_converter(converter)
    if pixels is not None:
        content = with_input_quantization(content, *pixels)
    key, inputs, outputs = SIGNATURE
    if len(model.outputs) > 1:  # a feature model: one output per level
        outputs = [f"output_{i}" for i in range(len(model.outputs))]
    return with_signature(content, key, inputs, outputs)


def _convert_se_float(converter, shape, model, images, progress, uint8_io: bool) -> bytes:
    """Integer everywhere but the SE ops, through the quantization debugger's denylist.
    The debugger's quantizer leaves float input and output whatever the converter
    asks; uint8 I/O is then set the way the converter itself does it."""
    import tensorflow as tf
    from tensorflow.lite.python.util import modify_model_io_type

    nodes = se_node_names(run_converter(frozen_converter(model, shape)), model)
    if not nodes:
        raise ValueError("se='float' found no SE ops in the converted graph to keep in float")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: batches_of_one(images, progress),
        debug_options=options)
    content = debugger.get_nondebug_quantized_model()
    if uint8_io:
        content = modify_model_io_type(content, tf.uint8, tf.uint8)
    return content


def to_tflite(model, path: str | os.PathLike, mode: str = "float32", representative_data=None,
              se="keep", *, batch_size: int | None = 1, image_size: int | None = None,
              overwrite: bool = False, progress: bool = True, labels=None,
              metadata: bool = True) -> Path:
    """Convert `model` to a `.tflite` file at `path` and return the path.

    The file carries TFLite metadata (keras_effnet.export.metadata) that Android's
    MediaPipe Tasks reads: the input image contract and the class names.

    Args:
        mode: float32, float16, dynamic, int8 (float I/O) or uint8 (uint8 I/O).
        representative_data: calibration images for int8/uint8: a folder, a
            tf.data.Dataset of images or (images, labels), or an (N, H, W, 3)
            array, pixels 0-255. 100 or more recommended.
        se: keep, float, hard, pool or remove (see keras_effnet.export.se), or
            several joined with '+'.
        batch_size: the static batch of the input (None: resizable at run time).
        image_size: input size for models built without a fixed one.
        overwrite: replace an existing file at `path`.
        labels: class names (a list, or a file with one per line); default: the
            model's own (`keras_effnet.saving`), or ImageNet's for 1000 classes.
        metadata: write the metadata (needs MediaPipe, the `android` extra).
    """
    check_mode(mode)
    check_se(model, se)
    if metadata and len(model.outputs) > 1:
        raise ValueError(f"{model.name} has {len(model.outputs)} outputs; the TFLite metadata "
                         "describes an image classifier's one output: pass metadata=False")
    path = check_destination(path, overwrite)
    height, width = input_size(model, image_size)
    names = class_names_for(model, labels) if metadata else None
    images = None
    if mode in QUANTIZED_MODES:
        images = representative_images(representative_data, (height, width, 3))
    content = convert(model, mode, se=se, batch_size=batch_size, image_size=image_size,
                      progress=progress, images=images)
    if metadata:
        content = model_metadata(content, model, names)
    write_bytes(path, content, overwrite)
    return path
