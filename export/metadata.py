"""TFLite model metadata, and the rules of the runtimes that read it.

Android's MediaPipe Tasks, the LiteRT Task Library and Android Studio's ML Model
Binding read the standard metadata schema (`metadata_schema.fbs`) from a `.tflite`:
how to turn a photo into the input tensor (an RGB image of a given size, and for float
inputs the `NormalizationOptions` mean and std applied to 0-255 pixels) and the names
of the classes (a labels file attached to the output tensor as `TENSOR_AXIS_LABELS`).
Without it MediaPipe's `ImageClassifier` refuses a float input and names no class.

Our models take 0-255 pixels and normalise inside, so a float input says mean 0 and
std 1 (pixels as they are). A uint8 input always takes the raw pixels (MediaPipe
copies them in and reads no NormalizationOptions for it); its quantization says how
the model reads them, scale * (p - zero point), and the metadata says the same as
mean = zero point and std = 1 / scale, the convention of Google's and Coral's
quantized classifiers (MobileNet v2 quant: (1/128, 128), mean and std 127.5). Ours
are (1, 0), mean 0 and std 1, or for the Lite and EdgeTPU families, whose
normalisation the quantization carries, (1/128, 127), mean 127 and std 128.

The writer and reader are MediaPipe's (`mediapipe.tasks.python.metadata`, the `android`
extra). mediapipe 1.2.x wheels lack one C extension that its writer imports,
`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`, whose single function
computes the metadata's `min_parser_version`. `_install_version_bridge` provides that
function in Python, following the rules of MediaPipe's
`mediapipe/tasks/cc/metadata/metadata_version.cc` (the schema members added after 1.0.0
and the version each needs); everything else is MediaPipe's own code.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from keras_effnet.export.flatbuffer import read_model

__all__ = [
    "ANDROID_EXTRA",
    "LABELS_FILE",
    "MetadataInfo",
    "MetadataUnavailableError",
    "add_metadata",
    "android_problems",
    "check_image_classifier",
    "check_labels",
    "class_names_for",
    "min_parser_version",
    "model_metadata",
    "read_labels",
    "read_metadata",
]

LABELS_FILE = "labels.txt"
ANDROID_EXTRA = "pip install 'keras-effnet[android]'"
_BRIDGED = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


class MetadataUnavailableError(ImportError):
    """MediaPipe (the `android` extra), which writes and reads the metadata, is missing."""


@dataclass(frozen=True)
class MetadataInfo:
    """What a `.tflite` file's metadata says, as read back by MediaPipe's reader."""
    name: str
    description: str
    version: str
    min_parser_version: str
    input_size: tuple | None          # (height, width)
    color_space: str
    mean: tuple
    std: tuple
    labels: list
    raw: dict                          # the whole metadata as MediaPipe's JSON


# ---- labels -------------------------------------------------------------------------------

def check_labels(labels, classes: int | None = None, source: str = "labels",
                 distinct: bool = True) -> list[str]:
    """The class names as a list, or ValueError: empty names, duplicates (unless
    `distinct=False`: ImageNet's own names repeat 'crane' and 'maillot'), or a count
    other than `classes`."""
    names = [str(name) for name in labels]
    problems = [f"line {i + 1} is empty" for i, n in enumerate(names) if not n.strip()]
    problems += [f"line {i + 1} has a line break" for i, n in enumerate(names)
                 if "\n" in n or "\r" in n]
    seen: dict = {}
    for i, name in enumerate(names):
        if distinct and name in seen:
            problems.append(f"{name!r} appears on lines {seen[name] + 1} and {i + 1}")
        seen.setdefault(name, i)
    if problems:
        raise ValueError(f"{source}: expected one {'distinct, ' if distinct else ''}non-empty "
                         "class name per line; "
                         + "; ".join(problems[:5]))
    if classes is not None and len(names) != classes:
        raise ValueError(f"{source} has {len(names)} class names but the model has {classes} "
                         "classes: give one name per class, in the order of the model's outputs")
    return names


def read_labels(path: str | os.PathLike, classes: int | None = None) -> list[str]:
    """Class names from a text file, one per line (a trailing newline is fine)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no labels file at {str(path)!r}: expected a text file with one class "
                         "name per line")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names = [line.rstrip("\r") for line in lines]
    # ImageNet's own names (what the default export writes) repeat 'crane' and 'maillot'
    return check_labels(names, classes, source=str(path), distinct=names != _imagenet_names())


def check_image_classifier(model) -> None:
    """ValueError unless `model` maps one (N, H, W, 3) RGB image batch to (N, classes)
    scores: what MediaPipe's ImageClassifier can run."""
    inputs, outputs = list(model.inputs), list(model.outputs)
    shape = tuple(model.input_shape) if len(inputs) == 1 else None
    out = tuple(model.output_shape) if len(outputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or out is None or len(out) != 2:
        raise ValueError(
            f"the android target needs an RGB image classifier: one input (N, H, W, 3) and one "
            f"output (N, classes); {model.name} takes {model.input_shape} and gives "
            f"{model.output_shape}")


def _imagenet_names() -> list[str]:
    from keras_effnet.preprocessing import imagenet_classes

    return [name for _, name in imagenet_classes()]


def class_names_for(model, labels=None) -> list[str] | None:
    """The class names an export of `model` carries: `labels` (a list, or a file with one
    name per line), else the names the model was saved with (`keras_effnet.saving`),
    else ImageNet's for a 1000-class model, else None."""
    classes = model.output_shape[-1]
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            return read_labels(labels, classes)
        labels = list(labels)
        # ImageNet's names are what they are, 'crane' and 'maillot' twice included
        return check_labels(labels, classes, distinct=labels != _imagenet_names())
    own = getattr(model, "class_names", None)
    if own:
        return check_labels(own, classes, source=f"{model.name}.class_names")
    return _imagenet_names() if classes == 1000 else None


def model_metadata(content: bytes, model, class_names: list[str] | None) -> bytes:
    """`content` with metadata describing `model`; unchanged, with a warning, when
    MediaPipe is not installed (the file then is not Android-ready, and verify says so)."""
    import warnings

    from keras_effnet import __version__

    if class_names is None:
        warnings.warn(f"{model.name} has {model.output_shape[-1]} classes and no class names: "
                      "the .tflite will name no classes (pass labels=, --labels FILE)",
                      stacklevel=3)
    described = "ImageNet" if class_names == _imagenet_names() else "your"
    description = (f"{model.name}: {model.output_shape[-1]}-class image classifier "
                   f"({described} classes), exported by keras_effnet {__version__}. Input: RGB "
                   "pixels 0-255, centre-cropped and resized to the input size.")
    try:
        return add_metadata(content, class_names, name=model.name, description=description,
                            version=__version__)
    except MetadataUnavailableError as exc:
        warnings.warn(f"{exc}; writing the .tflite without metadata", stacklevel=3)
        return content


# ---- MediaPipe, with the one missing piece bridged --------------------------------------

def _schema():
    """MediaPipe's generated Python classes for metadata_schema.fbs."""
    return importlib.import_module("mediapipe.tasks.metadata.metadata_schema_py_generated")


def _file_versions(fb, items):
    for item in items or []:
        if item.type == fb.AssociatedFileType.VOCABULARY:
            yield (1, 0, 1)
        if item.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
            yield (1, 4, 0)
        if item.version is not None:
            yield (1, 4, 1)


def _unit_versions(fb, items):
    needs = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
             fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
             fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}
    return [needs[u.optionsType] for u in items or [] if u.optionsType in needs]


def _tensor_versions(fb, items):
    for tensor in items or []:
        yield from _file_versions(fb, tensor.associatedFiles)
        yield from _unit_versions(fb, tensor.processUnits)
        content = tensor.content
        if content is not None and \
                content.contentPropertiesType == fb.ContentProperties.AudioProperties:
            yield (1, 3, 0)


_SUBGRAPH_FIELD_VERSIONS = (("inputProcessUnits", (1, 1, 0)), ("outputProcessUnits", (1, 1, 0)),
                            ("inputTensorGroups", (1, 2, 0)), ("outputTensorGroups", (1, 2, 0)),
                            ("customMetadata", (1, 5, 0)))


def _subgraph_versions(fb, subgraph):
    yield from _tensor_versions(fb, subgraph.inputTensorMetadata)
    yield from _tensor_versions(fb, subgraph.outputTensorMetadata)
    yield from _file_versions(fb, subgraph.associatedFiles)
    for field, version in _SUBGRAPH_FIELD_VERSIONS:
        if getattr(subgraph, field) is not None:
            yield version
    yield from _unit_versions(fb, subgraph.inputProcessUnits)
    yield from _unit_versions(fb, subgraph.outputProcessUnits)


def min_parser_version(metadata) -> str:
    """The oldest metadata parser that understands every field of `metadata` (a
    ModelMetadataT), by the rules of mediapipe/tasks/cc/metadata/metadata_version.cc."""
    fb = _schema()
    found = [(1, 0, 0)]  # metadata_version.cc: the default version
    for subgraph in metadata.subgraphMetadata or []:
        found.extend(_subgraph_versions(fb, subgraph))
    found.extend(_file_versions(fb, metadata.associatedFiles))
    return ".".join(str(n) for n in max(found))


def _bridged_version(buffer: bytes) -> str:
    fb = _schema()
    metadata = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    return min_parser_version(metadata)


def _install_version_bridge() -> None:
    """Register the Python stand-in for the C extension mediapipe's wheel lacks."""
    parts = _BRIDGED.split(".")
    for i in range(3, len(parts)):  # mediapipe.tasks.cc, ... (mediapipe.tasks is real)
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    module = types.ModuleType(_BRIDGED)
    module.GetMinimumMetadataParserVersion = _bridged_version
    module.__doc__ = "keras_effnet.export.metadata's Python stand-in (see its docstring)"
    sys.modules[_BRIDGED] = module


def _mediapipe_metadata():
    """MediaPipe's metadata module, bridging its missing extension when needed."""
    try:
        _schema()
    except ImportError as exc:
        raise MetadataUnavailableError(
            f"writing and reading TFLite metadata needs MediaPipe: {ANDROID_EXTRA} "
            f"({type(exc).__name__}: {exc})") from exc
    try:
        return importlib.import_module("mediapipe.tasks.python.metadata.metadata")
    except ModuleNotFoundError as exc:
        if exc.name is None or not _BRIDGED.startswith(exc.name):
            raise
    _install_version_bridge()
    return importlib.import_module("mediapipe.tasks.python.metadata.metadata")


# ---- writing and reading ----------------------------------------------------------------

def add_metadata(content: bytes, labels: list[str] | None, *, name: str, description: str,
                 version: str, author: str = "keras_effnet", license: str = "Apache-2.0") -> bytes:
    """`content` (a `.tflite`) with image-classifier metadata: an RGB input of the model's
    size taking 0-255 pixels (mean and std: see the module doc) and probabilities named
    by `labels` (None: no class names). Raises MetadataUnavailableError without
    MediaPipe."""
    import flatbuffers

    metadata = _mediapipe_metadata()
    fb = _schema()
    graph = read_model(content)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"expected an image classifier with one input and one output, got "
                         f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs")
    image, scores = graph.inputs[0], graph.outputs[0]
    classes = scores.shape[-1] if scores.shape else None
    if labels is not None:  # a caller's own names were checked for duplicates already
        labels = check_labels(labels, classes, distinct=False)

    model = fb.ModelMetadataT()
    model.name, model.description, model.version = name, description, version
    model.author, model.license = author, license

    normalization = fb.ProcessUnitT()
    normalization.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = fb.NormalizationOptionsT()
    normalization.options.mean, normalization.options.std = _normalization(image)
    properties = fb.ImagePropertiesT()
    properties.colorSpace = fb.ColorSpaceType.RGB
    if len(image.shape) == 4:
        properties.defaultSize = fb.ImageSizeT()
        properties.defaultSize.height, properties.defaultSize.width = image.shape[1:3]
    input_md = _tensor_md(fb, "image", "RGB image, pixels 0-255 as they are (the model "
                          "normalises them)",
                          fb.ContentProperties.ImageProperties, properties, (0.0, 255.0))
    input_md.processUnits = [normalization]

    output_md = _tensor_md(fb, "probability", "Probability of each class",
                           fb.ContentProperties.FeatureProperties, fb.FeaturePropertiesT(),
                           (0.0, 1.0))
    files = {}
    if labels is not None:
        labels_md = fb.AssociatedFileT()
        labels_md.name, labels_md.type = LABELS_FILE, fb.AssociatedFileType.TENSOR_AXIS_LABELS
        labels_md.description = "Class names, one per line, in the order of the outputs"
        output_md.associatedFiles = [labels_md]
        files[LABELS_FILE] = ("\n".join(labels) + "\n").encode("utf-8")

    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [input_md], [output_md]
    model.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)

    populator = metadata.MetadataPopulator.with_model_buffer(bytearray(content))
    populator.load_metadata_buffer(builder.Output())
    if files:
        populator.load_associated_file_buffers(files)
    populator.populate()
    content = bytes(populator.get_model_buffer())
    # its __del__ removes a temporary file through `os`; run it now, not at interpreter
    # exit when `os` may already be gone (MediaPipe then prints an ignored exception)
    del populator
    return content


def _normalization(image) -> tuple[list[float], list[float]]:
    """The (mean, std) that describe how the model reads a pixel: mean 0 and std 1 for a
    float input; zero point and 1 / scale for a quantized one."""
    if image.dtype == "FLOAT32" or image.quantization is None:
        return [0.0], [1.0]
    scale, zero_point = image.quantization
    return [float(zero_point)], [1.0 / scale]


def _tensor_md(fb, name, description, kind, properties, value_range):
    tensor = fb.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = fb.ContentT()
    tensor.content.contentPropertiesType, tensor.content.contentProperties = kind, properties
    tensor.stats = fb.StatsT()
    tensor.stats.min, tensor.stats.max = [value_range[0]], [value_range[1]]
    return tensor


def read_metadata(source: str | os.PathLike | bytes) -> MetadataInfo | None:
    """The metadata of a `.tflite` (path or bytes) as MediaPipe's reader sees it, or None
    when the file has none."""
    metadata = _mediapipe_metadata()
    content = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(content))
    except ValueError as exc:
        if "does not have metadata" in str(exc):
            return None
        raise
    raw = json.loads(displayer.get_metadata_json())
    subgraph = raw["subgraph_metadata"][0]
    image, output = subgraph["input_tensor_metadata"][0], subgraph["output_tensor_metadata"][0]
    properties = image.get("content", {}).get("content_properties", {})
    size = properties.get("default_size")
    options = next((u["options"] for u in image.get("process_units", [])
                    if u.get("options_type") == "NormalizationOptions"), {})
    labels = []
    for item in output.get("associated_files", []):
        if item.get("type") == "TENSOR_AXIS_LABELS":
            text = displayer.get_associated_file_buffer(item["name"]).decode("utf-8")
            labels = text.splitlines()
    return MetadataInfo(
        name=raw.get("name", ""), description=raw.get("description", ""),
        version=raw.get("version", ""), min_parser_version=raw.get("min_parser_version", ""),
        input_size=(size["height"], size["width"]) if size else None,
        color_space=properties.get("color_space", ""),
        mean=tuple(options.get("mean", ())), std=tuple(options.get("std", ())),
        labels=labels, raw=raw)


# ---- what the phone's runtime accepts -------------------------------------------------------

def android_problems(source: str | os.PathLike | bytes, classes: int | None = None) -> list[str]:
    """Why MediaPipe Tasks' ImageClassifier would refuse the file or misread it; [] when
    it is Android-ready. The rules are MediaPipe's (image_preprocessing and
    classification_postprocessing in mediapipe/tasks/cc): float32 or uint8 input of
    shape (1, H, W, 3); one mean and std for all channels; no int8 output; metadata
    with the class names; and a uint8 input, which takes raw pixels, quantized as its
    metadata describes it (mean = zero point, std = 1 / scale)."""
    graph = read_model(source)
    problems = []
    image = graph.inputs[0]
    if image.dtype not in ("FLOAT32", "UINT8"):
        problems.append(f"input is {image.dtype}: MediaPipe takes only float32 or uint8 images")
    if len(image.shape) != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
        problems.append(f"input shape {image.shape}: MediaPipe expects (1, H, W, 3)")
    for output in graph.outputs:
        if output.dtype == "INT8":
            problems.append("int8 output: MediaPipe's classifier reads float32 or uint8 scores")
    try:
        info = read_metadata(source)
    except MetadataUnavailableError:
        return problems + [f"metadata cannot be read here: {ANDROID_EXTRA}"]
    if info is None:
        return problems + [("no TFLite metadata: MediaPipe refuses a float input without "
                           "NormalizationOptions and names no classes")]
    if len(info.mean) > 1 or len(info.std) > 1:
        problems.append("per-channel normalisation: MediaPipe takes one mean and one std")
    elif image.dtype == "UINT8" and image.quantization is not None and info.mean:
        scale, zero_point = image.quantization
        # within half a pixel level and 1%: Google's MobileNet quant files say 127.5 for 128
        if abs(info.mean[0] - zero_point) > 0.5 or abs(info.std[0] * scale - 1) > 0.01:
            problems.append(
                f"uint8 input quantized as (scale, zero point) {image.quantization}, but the "
                f"metadata says mean {info.mean[0]:g} and std {info.std[0]:g}: MediaPipe "
                "feeds raw pixels, which the model reads as scale * (pixel - zero point), "
                f"and the metadata promises (pixel - {info.mean[0]:g}) / {info.std[0]:g}")
    expected = classes if classes is not None else graph.outputs[0].shape[-1]
    if not info.labels:
        problems.append("no labels file in the metadata: MediaPipe would name no class")
    elif len(info.labels) != expected:
        problems.append(f"the metadata names {len(info.labels)} classes, the model has "
                        f"{expected}")
    return problems
