"""keras_effnet.export: one call per target, SE treated on purpose, every
artifact checked against the Keras model before it ships.

    export_saved_model(model, path)                   TF Serving
    to_tflite(model, path, mode, data, se=...)        phones: float32/float16/dynamic/int8/uint8
    to_edgetpu(model, path, data, se=...)             Coral: uint8 file + op report
    verify(artifact, model, images, labels)           agreement, accuracy, SQNR, size, latency,
                                                      and MediaPipe / LiteRT CompiledModel runs
    evaluate(model or file, folder)                   top-1/top-5, per-class precision and recall
                                                      on labelled photos (keras_effnet.evaluate)
    read_metadata(path), android_problems(path)       the TFLite metadata phones read
    quantize_aware(model)                             QAT through tensorflow-model-optimization

A pipeline of plain functions: model -> (SE transform) -> SavedModel ->
TFLite (+ metadata) -> Edge TPU. Artifacts are written to a temporary path and renamed.
"""

from keras_effnet.export.data import (
    bundled_photos,
    calibration_views,
    labels_from_names,
    load_folder,
    representative_images,
)
from keras_effnet.export.edgetpu import (
    EDGETPU_OPS,
    EdgeTPUMappingError,
    EdgeTPUReport,
    analyze_edgetpu,
    parse_compiler_log,
    to_edgetpu,
)
from keras_effnet.export.evaluate import EvalReport, evaluate
from keras_effnet.export.flatbuffer import read_model
from keras_effnet.export.metadata import (
    MetadataInfo,
    add_metadata,
    android_problems,
    class_names_for,
    read_labels,
    read_metadata,
)
from keras_effnet.export.onnx import to_onnx
from keras_effnet.export.pipeline import TARGETS, calibration_set, export_all
from keras_effnet.export.runtimes import RuntimeCheck, check_compiled_model, check_mediapipe
from keras_effnet.export.saved_model import export_saved_model
from keras_effnet.export.se import SE_STRATEGIES, apply_se_strategy, find_se_blocks
from keras_effnet.export.tflite import MODES, to_tflite
from keras_effnet.export.verify import (
    VerifyResult,
    format_runtime_table,
    format_table,
    keras_outputs,
    verify,
)

__all__ = [
    "EDGETPU_OPS",
    "MODES",
    "SE_STRATEGIES",
    "TARGETS",
    "EdgeTPUMappingError",
    "EdgeTPUReport",
    "EvalReport",
    "MetadataInfo",
    "RuntimeCheck",
    "VerifyResult",
    "add_metadata",
    "analyze_edgetpu",
    "android_problems",
    "apply_se_strategy",
    "bundled_photos",
    "calibration_set",
    "calibration_views",
    "check_compiled_model",
    "check_mediapipe",
    "class_names_for",
    "evaluate",
    "export_all",
    "export_saved_model",
    "find_se_blocks",
    "format_runtime_table",
    "format_table",
    "keras_outputs",
    "labels_from_names",
    "load_folder",
    "parse_compiler_log",
    "quantize_aware",
    "read_labels",
    "read_metadata",
    "read_model",
    "representative_images",
    "to_edgetpu",
    "to_onnx",
    "to_tflite",
    "verify",
]


def quantize_aware(model, **kwargs):
    """Quantization-aware training copy of `model` (needs the `qat` extra); see
    keras_effnet.export.qat.quantize_aware."""
    from keras_effnet.export.qat import quantize_aware as _quantize_aware

    return _quantize_aware(model, **kwargs)
