"""Check an artifact against the Keras model it came from, on real images,
before anyone ships it.

    verify(artifact, model, images, labels=None) -> VerifyResult

runs the artifact (LiteRT for `.tflite`, TensorFlow for a SavedModel) and the
Keras model on the same images and reports: top-1 agreement, top-1 accuracy
of both when labels are given, SQNR of the logits in dB, the largest absolute
difference of any probability, the file size and the median batch-1 latency
on one thread.

SQNR is 10 log10(sum ref^2 / sum (ref - artifact)^2) over the logits after
subtracting each row's mean (softmax ignores a constant shift). The artifact's
logits are the input of its final SOFTMAX op, read from the interpreter; the
Keras logits come from the classifier before its softmax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from keras_effnet.console import quieted
from keras_effnet.export.data import input_tensor, labels_from_names, load_folder
from keras_effnet.export.flatbuffer import read_model
from keras_effnet.export.metadata import android_problems, class_names_for
from keras_effnet.export.onnx import onnx_session, run_onnx
from keras_effnet.export.runtimes import check_compiled_model, check_mediapipe
from keras_effnet.export.saved_model import logits_model

__all__ = ["VerifyResult", "check_runnable", "format_runtime_table", "format_table",
           "keras_outputs", "tflite_outputs", "verify"]

DEFAULT_RUNS = 20  # paper Table 4 averages 20 runs; we report the median
WARMUP_RUNS = 3


@dataclasses.dataclass
class VerifyResult:
    artifact: str
    format: str
    images: int
    top1_agreement: float
    max_abs_prob_error: float
    sqnr_db: float | None
    size_bytes: int
    latency_ms: float | None
    latency_spread_ms: tuple | None = None   # (10th, 90th percentile)
    top1_accuracy: float | None = None
    keras_top1_accuracy: float | None = None
    threads: int = 1
    # the runtimes users ship into (`.tflite` only): {"mediapipe": RuntimeCheck, ...}
    runtimes: dict = dataclasses.field(default_factory=dict)
    android_problems: list | None = None  # [] = Android-ready; None = not a .tflite

    @property
    def android_ready(self) -> bool:
        return self.android_problems == [] and all(
            check.accepted for check in self.runtimes.values())

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.sqnr_db is not None and math.isinf(self.sqnr_db):
            data["sqnr_db"] = "inf"
        data["android_ready"] = self.android_ready if self.android_problems is not None else None
        return data


def _median_ms(run, runs: int) -> tuple[float, tuple]:
    for _ in range(WARMUP_RUNS):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), (deciles[0], deciles[-1])


def keras_outputs(model, images: np.ndarray, batch_size: int = 16):
    """(probabilities, logits or None) of the Keras model."""
    run = logits_model(model)
    probs, logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if run is None:
            probs.append(np.asarray(model(batch, training=False)))
        else:
            p, z = run(batch, training=False)
            probs.append(np.asarray(p))
            logits.append(np.asarray(z))
    return np.concatenate(probs), (np.concatenate(logits) if logits else None)


@quieted
def _interpreter(path, threads: int, preserve: bool = False):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # numpy < 2 environments: the last tflite-runtime
        from tflite_runtime.interpreter import Interpreter
    with warnings.catch_warnings():
        # preserving tensors is how the logits are read; the warning only says it costs memory
        warnings.simplefilter("ignore", UserWarning)
        return Interpreter(model_path=str(path), num_threads=threads,
                           experimental_preserve_all_tensors=preserve)


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if x.dtype == np.float32 or scale == 0:
        return x.astype(np.float32)
    return (x.astype(np.float32) - zero) * scale


def check_runnable(path: Path, graph) -> None:
    """ValueError for a file only the Edge TPU can run (its body is one custom op)."""
    if any(op.op == "edgetpu-custom-op" for op in graph.ops):
        raise ValueError(f"{path} is compiled for the Edge TPU (edgetpu-custom-op): it runs only "
                         "through the Edge TPU delegate on a Coral device. Verify the "
                         "uncompiled .tflite that to_edgetpu wrote instead.")


def tflite_outputs(path: Path, graph, images: np.ndarray):
    """(probabilities, logits or None, format) of a `.tflite` (parsed as `graph`) on
    `images`, one at a time through LiteRT with every thread."""
    softmax = [op for op in graph.ops if op.op == "SOFTMAX"]
    logits_index = softmax[-1].inputs[0].index if softmax else None
    interpreter = _interpreter(path, os.cpu_count() or 1, preserve=logits_index is not None)
    detail = interpreter.get_input_details()[0]
    if tuple(detail["shape"][1:]) != images.shape[1:]:
        if -1 in detail["shape_signature"][1:]:
            interpreter.resize_tensor_input(detail["index"], (1,) + images.shape[1:])
        else:
            raise ValueError(f"{path} takes {tuple(detail['shape'][1:3])} images, "
                             f"got {images.shape[1:3]}")
    if detail["shape"][0] != 1:
        interpreter.resize_tensor_input(detail["index"], (1,) + images.shape[1:])
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    logits_detail = None
    if logits_index is not None:
        logits_detail = next(d for d in interpreter.get_tensor_details()
                             if d["index"] == logits_index)
    probs, logits = [], []
    for image in images:
        interpreter.set_tensor(detail["index"], input_tensor(image[None], detail["dtype"],
                                                             detail["quantization"]))
        interpreter.invoke()
        probs.append(_dequantize(interpreter.get_tensor(out["index"]), out)[0])
        if logits_detail is not None:
            raw = interpreter.get_tensor(logits_index)
            logits.append(_dequantize(raw, logits_detail).reshape(-1))
    fmt = f"tflite ({np.dtype(detail['dtype']).name} in)"
    return np.stack(probs), (np.stack(logits) if logits else None), fmt


def _tflite_latency(path: Path, shape: tuple, runs: int) -> tuple[float, tuple]:
    interpreter = _interpreter(path, 1)
    detail = interpreter.get_input_details()[0]
    if detail["shape"][0] != 1:
        interpreter.resize_tensor_input(detail["index"], (1,) + shape)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    interpreter.set_tensor(detail["index"],
                           input_tensor(rng.uniform(0, 255, (1,) + shape), detail["dtype"],
                                        detail["quantization"]))
    return _median_ms(interpreter.invoke, runs)


def _run_saved_model(path: Path, images: np.ndarray):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    probs, logits = [], []
    for start in range(0, len(images), 16):
        outputs = serve(images=tf.constant(images[start:start + 16], tf.float32))
        probs.append(outputs["probabilities"].numpy())
        if "logits" in outputs:
            logits.append(outputs["logits"].numpy())
    return np.concatenate(probs), (np.concatenate(logits) if logits else None), "saved_model"


_SAVED_MODEL_LATENCY = """
import json, os, sys, time, statistics
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
path = sys.argv[1]
h, w, runs, warmup = (int(a) for a in sys.argv[2:6])
serve = tf.saved_model.load(path).signatures["serving_default"]
x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("float32"))
for _ in range(warmup):
    serve(images=x)
times = []
for _ in range(runs):
    t = time.perf_counter(); serve(images=x); times.append((time.perf_counter() - t) * 1e3)
q = statistics.quantiles(times, n=10)
print(json.dumps([statistics.median(times), q[0], q[-1]]))
"""


def _saved_model_latency(path: Path, shape: tuple, runs: int) -> tuple[float, tuple]:
    """In a fresh process: TensorFlow's thread pools can only be set before it starts."""
    result = subprocess.run(
        [sys.executable, "-c", _SAVED_MODEL_LATENCY, str(path), str(shape[0]), str(shape[1]),
         str(runs), str(WARMUP_RUNS)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"timing {path} failed:\n{result.stderr[-2000:]}")
    median, low, high = json.loads(result.stdout.strip().splitlines()[-1])
    return median, (low, high)


def _onnx_latency(path: Path, shape: tuple, runs: int) -> tuple[float, tuple]:
    session = onnx_session(path, threads=1)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(0, 255, (1,) + shape).astype(np.float32)
    return _median_ms(lambda: session.run(None, {name: x}), runs)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    reference = reference - reference.mean(axis=1, keepdims=True)
    test = test - test.mean(axis=1, keepdims=True)
    noise = float(np.sum((reference - test) ** 2, dtype=np.float64))
    signal = float(np.sum(reference ** 2, dtype=np.float64))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None))


def _evaluation_images(model, images, labels) -> tuple[np.ndarray, np.ndarray | None]:
    """(images as float32 (N, H, W, 3), labels or None), checked; a folder is loaded at
    the model's size, its labels taken from the file names when they carry them."""
    if isinstance(images, (str, os.PathLike)):
        size = model.input_shape[1]
        if size is None:
            raise ValueError("the model takes any image size: pass images as an array")
        images, names = load_folder(images, size)
        if labels is None:
            labels = labels_from_names(names)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"expected images of shape (N, H, W, 3) with N >= 1, got {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"expected {len(images)} labels, got shape {labels.shape}")
    return images, labels


@quieted
def verify(artifact: str | os.PathLike, model, images, labels=None, *, runs: int = DEFAULT_RUNS,
           reference: tuple | None = None, name: str | None = None,
           runtimes: bool = True, class_names: list[str] | None = None) -> VerifyResult:
    """Compare `artifact` with `model` on `images` and time it.

    Args:
        artifact: a `.tflite` file, a SavedModel folder or an `.onnx` file (run by ONNX
            Runtime).
        images: (N, H, W, 3) pixels 0-255, or a folder (loaded at the model's size;
            labels then come from names like `207_n02099601_x.JPEG` when possible).
        labels: ImageNet class indices, to report accuracy.
        runs: timed batch-1 runs for the median latency (0 skips timing).
        reference: precomputed `keras_outputs(model, images)`, to save time when
            verifying several artifacts of one model.
        runtimes: for a `.tflite`, also run it in MediaPipe's ImageClassifier and
            LiteRT's CompiledModel API and list what would stop it on Android.
        class_names: the names its top-1 classes should carry (default: as export
            writes them, `keras_effnet.export.metadata.class_names_for(model)`).
    """
    path = Path(artifact)
    if not path.exists():
        raise ValueError(f"no artifact at {str(path)!r}")
    images, labels = _evaluation_images(model, images, labels)
    graph = None
    onnx = path.suffix == ".onnx"
    if path.is_file() and not onnx:
        graph = read_model(path)  # parsed once: the compiled-model check and the logits lookup
        check_runnable(path, graph)
    ref_probs, ref_logits = reference if reference is not None else keras_outputs(model, images)
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ValueError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
        probs, logits, fmt = _run_saved_model(path, images)
        timing = _saved_model_latency(path, images.shape[1:3], runs) if runs else None
    elif onnx:
        probs, logits = run_onnx(onnx_session(path), images)
        fmt = "onnx"
        timing = _onnx_latency(path, images.shape[1:], runs) if runs else None
    else:
        probs, logits, fmt = tflite_outputs(path, graph, images)
        timing = _tflite_latency(path, images.shape[1:], runs) if runs else None

    if ref_logits is not None and logits is not None:
        sqnr = _sqnr(ref_logits, logits)
    else:
        sqnr = _sqnr(_log_probs(ref_probs), _log_probs(probs))
    top1, ref_top1 = probs.argmax(1), ref_probs.argmax(1)
    checks, problems = {}, None
    if runtimes and path.is_file() and not onnx:
        names = class_names if class_names is not None else class_names_for(model)
        checks = {"mediapipe": check_mediapipe(path, images, ref_top1, labels, names),
                  "compiled_model": check_compiled_model(path, images, ref_top1, labels)}
        problems = android_problems(path)
    return VerifyResult(
        artifact=name or path.name,
        format=fmt,
        images=len(images),
        top1_agreement=float(np.mean(top1 == ref_top1)),
        max_abs_prob_error=float(np.abs(probs - ref_probs).max()),
        sqnr_db=sqnr,
        size_bytes=_size(path),
        latency_ms=timing[0] if timing else None,
        latency_spread_ms=timing[1] if timing else None,
        top1_accuracy=float(np.mean(top1 == labels)) if labels is not None else None,
        keras_top1_accuracy=float(np.mean(ref_top1 == labels)) if labels is not None else None,
        runtimes=checks,
        android_problems=problems,
    )


def format_table(results: list[VerifyResult], title: str = "") -> str:
    """A Markdown table of verify results (printable as it is)."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def db(x):
        return "-" if x is None else ("inf" if math.isinf(x) else f"{x:.1f}")

    header = ("| artifact | format | images | top-1 agree | top-1 acc (Keras) | logit SQNR dB "
              "| max abs dp | size MB | latency ms (1 thread) |")
    lines = ([f"{title}", ""] if title else []) + [header, "|" + "---|" * 9]
    for r in results:
        latency = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
        accuracy = "-" if r.top1_accuracy is None else \
            f"{pct(r.top1_accuracy)} ({pct(r.keras_top1_accuracy)})"
        lines.append(f"| {r.artifact} | {r.format} | {r.images} | {pct(r.top1_agreement)} | "
                     f"{accuracy} | {db(r.sqnr_db)} | {r.max_abs_prob_error:.2e} | "
                     f"{r.size_bytes / 1e6:.2f} | {latency} |")
    return "\n".join(lines)


def format_runtime_table(results: list[VerifyResult], title: str = "") -> str:
    """A Markdown table: each `.tflite` in the runtimes users ship into."""
    header = ("| artifact | MediaPipe ImageClassifier | LiteRT CompiledModel | "
              "Android-ready |")
    lines = ([f"{title}", ""] if title else []) + [header, "|" + "---|" * 4]
    for r in results:
        if r.android_problems is None:
            continue
        cells = [r.runtimes[k].summary() if k in r.runtimes else "-"
                 for k in ("mediapipe", "compiled_model")]
        ready = "yes" if r.android_ready else "no: " + "; ".join(r.android_problems or
                                                                 ["a runtime refused it"])
        lines.append(f"| {r.artifact} | {cells[0]} | {cells[1]} | {ready} |")
    return "\n".join(lines)
