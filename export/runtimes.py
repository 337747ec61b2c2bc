"""The runtimes users ship into, run on the desktop, as the judges of an artifact.

    check_mediapipe(path, images, ...)        MediaPipe Tasks' ImageClassifier: the task
                                              runtime of Android's MediaPipe (and the same
                                              C++ as the LiteRT Task Library)
    check_compiled_model(path, images, ...)   LiteRT's CompiledModel API, the one LiteRT
                                              recommends on Android
    compiled_model(path or bytes, ...)        that API's model on the CPU, with XNNPACK's
                                              flags (XNNPACK_FP16: float32 files computed
                                              in float16 where the CPU has fp16 arithmetic)

Each runs the file unmodified on the evaluation images and says whether the runtime
accepted it (and why not), its top-1 agreement with Keras, its accuracy when labels are
known, and for MediaPipe whether every top-1 name is the class name of its index.
MediaPipe is the optional `android` extra; without it that check says so and is skipped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from keras_effnet.console import quiet_at_exit, quieted
from keras_effnet.export.data import input_tensor
from keras_effnet.export.metadata import ANDROID_EXTRA

__all__ = [
    "XNNPACK_FP16",
    "RuntimeCheck",
    "check_compiled_model",
    "check_mediapipe",
    "compiled_model",
    "fp16_arithmetic",
    "mediapipe_available",
    "mediapipe_classify",
]

# TFLITE_XNNPACK_DELEGATE_FLAG_QS8 | _QU8 | _FORCE_FP16 (tflite/delegates/xnnpack/
# xnnpack_delegate.h): integer kernels as by default, float32 operators in float16.
_FORCE_FP16 = 0x4
XNNPACK_FP16 = 0x1 | 0x2 | _FORCE_FP16


@dataclasses.dataclass
class RuntimeCheck:
    runtime: str
    accepted: bool | None            # None: the runtime is not installed here
    reason: str = ""
    top1_agreement: float | None = None
    top1_accuracy: float | None = None
    names_match: float | None = None  # share of top-1 names equal to the index's class name
    example: str | None = None        # the first image's top-1 class name

    def summary(self) -> str:
        if self.accepted is None:
            return f"skipped ({self.reason})"
        if not self.accepted:
            return f"refused: {self.reason}"
        text = f"{100 * self.top1_agreement:.1f}% agree"
        if self.top1_accuracy is not None:
            text += f", top-1 {100 * self.top1_accuracy:.1f}%"
        if self.names_match is not None:
            text += f", names {100 * self.names_match:.0f}%"
        return text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mediapipe_available() -> bool:
    try:
        import mediapipe.tasks.python.vision  # noqa: F401
    except ImportError:
        return False
    return True


def _score(name: str, top1: np.ndarray, reference_top1, labels) -> RuntimeCheck:
    return RuntimeCheck(
        name, True,
        top1_agreement=float(np.mean(top1 == reference_top1)),
        top1_accuracy=None if labels is None else float(np.mean(top1 == np.asarray(labels))))


@quieted
def mediapipe_classify(path: str | os.PathLike, images, top: int = 1) -> list[list[tuple]]:
    """[(index, class name, score), ...] for each image ((H, W, 3), 0-255, at the
    model's size) from MediaPipe's ImageClassifier reading `path` as it is. Raises
    what MediaPipe raises when it refuses the file."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(Path(path).resolve())), max_results=top)
    results = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            pixels = np.ascontiguousarray(input_tensor(image, np.uint8))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
            results.append([(c.index, c.category_name, c.score)
                            for c in result.classifications[0].categories])
    return results


def check_mediapipe(path: str | os.PathLike, images: np.ndarray, reference_top1: np.ndarray,
                    labels=None, class_names: list[str] | None = None) -> RuntimeCheck:
    """Classify `images` ((N, H, W, 3), 0-255, at the model's size) with MediaPipe's
    ImageClassifier reading `path` as it is."""
    if not mediapipe_available():
        return RuntimeCheck("mediapipe", None, f"mediapipe is not installed: {ANDROID_EXTRA}")
    try:
        results = mediapipe_classify(path, images)
    except Exception as exc:  # noqa: BLE001 - MediaPipe's refusal is the finding
        return RuntimeCheck("mediapipe", False, str(exc).strip().splitlines()[0][:300])
    top1 = np.array([result[0][0] for result in results])
    names = [result[0][1] for result in results]
    check = _score("mediapipe", top1, reference_top1, labels)
    check.example = names[0]
    if class_names is not None:
        check.names_match = float(np.mean([n == class_names[i] for n, i in zip(names, top1)]))
    return check


def fp16_arithmetic(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes in float16 natively (x86 AVX512-FP16; Arm's FP16
    extension, ARMv8.2), read from /proc/cpuinfo's flags; None where that cannot be read.
    XNNPACK_FP16 pays only there: LiteRT 2.3 accepts the flag on other CPUs too and
    emulates float16, slower than float32 (measured: benchmarks/runtimes.py)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return "avx512_fp16" in flags or {"fphp", "asimdhp"} <= flags


@quieted
def compiled_model(source: str | os.PathLike | bytes, threads: int = 1,
                   xnnpack_flags: int | None = None):
    """LiteRT's CompiledModel of a `.tflite` (path or bytes) on the CPU, `threads` threads
    (1, as LiteRT's own default); `xnnpack_flags`: None for LiteRT's default, XNNPACK_FP16 to run
    float32 operators in float16 (faster where the CPU has fp16 arithmetic, e.g. x86 with
    AVX512-FP16; refused with a ValueError where `fp16_arithmetic()` says the CPU has
    none: LiteRT would emulate it, slower than float32). Raises ImportError
    when ai_edge_litert has no CompiledModel API (LiteRT < 2.0)."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.options import CpuOptions, Options

    if xnnpack_flags is not None and xnnpack_flags & _FORCE_FP16 and fp16_arithmetic() is False:
        raise ValueError("XNNPACK_FP16 asks for float16 arithmetic, which this CPU does not "
                         "have (x86 AVX512-FP16 or ARMv8.2 FP16): XNNPACK would emulate it, "
                         "slower than float32 and less exact. Run the float32 file without "
                         "xnnpack_flags here")
    options = Options(cpu_options=CpuOptions(num_threads=threads,
                                             xnnpack_flags=xnnpack_flags))
    quiet_at_exit()
    if isinstance(source, (bytes, bytearray)):
        return CompiledModel.from_buffer(bytes(source), options=options)
    return CompiledModel.from_file(str(source), options=options)


@quieted
def check_compiled_model(path: str | os.PathLike, images: np.ndarray,
                         reference_top1: np.ndarray, labels=None,
                         xnnpack_flags: int | None = None) -> RuntimeCheck:
    """Run `images` through LiteRT's CompiledModel API (CPU) reading `path` as it is;
    `xnnpack_flags` as in `compiled_model`."""
    try:
        model = compiled_model(path, xnnpack_flags=xnnpack_flags)
        key = next(iter(model.get_signature_list()))
        inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
        (detail,) = model.get_input_tensor_details(key).values()
        (out,) = model.get_output_tensor_details(key).values()
    except ImportError:
        return RuntimeCheck("compiled_model", None,
                            "ai_edge_litert has no CompiledModel API here (LiteRT >= 2.0)")
    except Exception as exc:  # noqa: BLE001 - LiteRT's refusal is the finding
        return RuntimeCheck("compiled_model", False, str(exc).strip().splitlines()[0][:300])
    dtype, out_dtype = np.dtype(detail["dtype"]), np.dtype(out["dtype"])
    classes = int(np.prod(out["shape"]))
    top1 = []
    for image in images:
        inputs[0].write(input_tensor(image[None], dtype, detail.get("quantization")))
        model.run_by_index(0, inputs, outputs)
        top1.append(int(np.argmax(outputs[0].read(classes, out_dtype))))
    return _score("compiled_model", np.array(top1), reference_top1, labels)
