"""Helpers shared by the benchmark scripts: paired timing, peers, results files.

Every comparison is measured in one run against its peer, runs interleaved
(A, B, then B, A, ...) so that a slow spell of the machine hits both sides,
and reported as the median of the per-pair ratios.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from keras_effnet.export.data import input_tensor
from keras_effnet.files import write_text

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


class PeerUnavailable(Exception):
    """An optional peer, runtime or data set is missing: report it and go on."""


def machine() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "python": platform.python_version()}


def cpu_info() -> dict:
    """The CPU's model name and its vector / matrix flags (avx*, amx*, fma), from
    /proc/cpuinfo; None and [] where that file is not there."""
    info = {"model": None, "flags": []}
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and info["model"] is None:
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags_ = line.split(":", 1)[1].split()
            info["flags"] = sorted(f for f in flags_ if f.startswith(("avx", "amx", "fma")))
            break
    return info


def summary(times_s) -> dict:
    """Median and 10/90% spread of a list of seconds, in milliseconds."""
    ms = np.asarray(times_s) * 1e3
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "runs": len(ms)}


def spread(stats: dict, digits: int = 1) -> str:
    """'p10-p90' of a `summary`, in milliseconds."""
    return f"{stats['p10_ms']:.{digits}f}-{stats['p90_ms']:.{digits}f}"


def paired(run_a, run_b, runs: int, warmup: int = 3) -> tuple[list, list, float]:
    """Time two zero-argument callables `runs` times each, interleaved and
    alternating which goes first. Returns (seconds a, seconds b, median of a/b)."""
    for _ in range(warmup):
        run_a()
        run_b()
    times_a, times_b = [], []
    for i in range(runs):
        order = ((run_a, times_a), (run_b, times_b)) if i % 2 == 0 else \
            ((run_b, times_b), (run_a, times_a))
        for run, times in order:
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    ratio = float(np.median(np.asarray(times_a) / np.asarray(times_b)))
    return times_a, times_b, ratio


def keras_runner(model, image: np.ndarray):
    """A batch-1 call of `model` in a compiled tf.function (no Python-per-layer cost,
    the way serving runs it)."""
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False))
    batch = tf.constant(image[None].astype("float32"))
    function(batch)
    return lambda: np.asarray(function(batch))


def keras_applications(name: str, input_shape: tuple | None = None):
    """keras.applications' `name` with weights=None, computing what a trained one
    computes. Its EfficientNets' stem Normalization then holds mean 0 and
    variance 1, an identity that TensorFlow and the TFLite converter remove; the
    ImageNet statistics our models always apply are set instead."""
    import keras

    import keras_effnet as ke

    constructor = getattr(keras.applications, name, None)
    if constructor is None:
        raise PeerUnavailable(f"keras.applications has no {name} in Keras {keras.__version__}")
    model = constructor(weights=None, input_shape=input_shape)
    if name.startswith("EfficientNet"):
        variant = ke.get_variant(name.replace("EfficientNet", "").lower())
        layer = next(layer for layer in model.layers
                     if isinstance(layer, keras.layers.Normalization))
        layer.set_weights([np.array(variant.input_mean), np.square(variant.input_std),
                           np.array(0)])
        layer.finalize_state()
    return model


def build_model(key: str):
    """`ours:<variant>` (keras_effnet, weights=None) or `keras:<keras.applications
    name>` (through keras_applications)."""
    import keras_effnet as ke

    owner, name = key.split(":")
    if owner == "ours":
        return ke.build(name, weights=None)
    if owner == "keras":
        return keras_applications(name)
    raise ValueError(f"unknown model key {key!r}: expected ours:<variant> or keras:<name>")


def litert_interpreter():
    """LiteRT's Interpreter class, or PeerUnavailable saying how to get it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise PeerUnavailable(f"LiteRT is not installed ({exc}): pip install ai-edge-litert") \
            from exc
    return Interpreter


def tflite_runner(content: bytes, image: np.ndarray, threads: int, batch: bool = True):
    """An invoke of a .tflite model in LiteRT on `threads` threads, on `image`
    as a batch of one (or as it is, with batch=False)."""
    interpreter = litert_interpreter()(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], input_tensor(image[None] if batch else image,
                                                         detail["dtype"], detail["quantization"]))

    def run():
        interpreter.invoke()

    return run


def interleaved(runners: dict, runs: int, reference: str, warmup: int = 2) -> dict:
    """Each runner timed `runs` times in rounds that run every runner once (a slow spell
    of the machine hits all of them), each round in a fresh random order (seeded), so
    that no runner always follows the same one (a runtime can leave threads spinning or
    caches cold for the next): summary per runner plus its median per-round ratio to
    `reference`'s time."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times = {name: [] for name in names}
    order = np.random.default_rng(0)
    for _ in range(runs):
        for name in order.permutation(names):
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    base = np.asarray(times[reference])
    return {name: {**summary(t), "ratio": float(np.median(np.asarray(t) / base))}
            for name, t in times.items()}


def torch_peer(variant: str, size: int):
    """The PyTorch peer (efficientnet_lite_pytorch: the same layers and MACs as timm's
    model of the name) with random weights, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(f"efficientnet-{variant}", image_size=size).eval()


def torch_peer_onnx(model, size: int, path: str) -> str:
    """The peer exported by torch's ONNX exporter (NCHW input, dynamic batch)."""
    import torch

    if getattr(model._global_params, "relu_fn", None) != "relu6":
        # the export needs swish as traceable ops; set_swish would also replace the Lite
        # variants' ReLU6 with swish, so it is left alone there
        model.set_swish(memory_efficient=False)
    torch.onnx.export(model, torch.zeros(1, 3, size, size), path, input_names=["images"],
                      dynamo=False, dynamic_axes={"images": {0: "batch"}})
    return path


def plain_tflite(model, mode: str, calibration: np.ndarray | None = None,
                 integer_io: bool = False) -> bytes:
    """What a user of another library does: `model.export` with a static batch-1
    signature, then `tf.lite.TFLiteConverter` (int8: the same calibration images,
    float I/O, or int8 I/O with `integer_io`). None of keras_effnet's export rewrites."""
    import tensorflow as tf

    shape = (1, *model.input_shape[1:])
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as folder:
        model.export(folder, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec(shape, tf.float32)])
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if mode == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [image[None].astype("float32")] for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if integer_io:
                converter.inference_input_type = converter.inference_output_type = tf.int8
        elif mode != "float32":
            raise ValueError(f"plain_tflite does float32 or int8, not {mode!r}")
        return converter.convert()


def write_results(name: str, data: dict, markdown: list[str], out: pathlib.Path) -> None:
    """`<out>/<name>.json` and `<out>/<name>.md`, each written whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(data, indent=2, default=_plain)),
                         (".md", "\n".join(markdown) + "\n")):
        write_text(out / f"{name}{suffix}", text)
    print(f"wrote {out / name}.json and {out / name}.md")


def publish(name: str, data: dict, markdown: list[str], out: str, readme: bool) -> None:
    """Print the tables, write `<out>/<name>.{json,md}`, and (when `readme`) the
    README's `name` block, which takes the Markdown minus its title."""
    print("\n" + "\n".join(markdown))
    write_results(name, data, markdown, pathlib.Path(out))
    if readme:
        update_readme(name, "\n".join(markdown[2:]))


def _plain(value):
    return np.asarray(value).tolist()


def update_readme(name: str, markdown: str, readme: pathlib.Path = REPO / "README.md") -> bool:
    """Replace the README's generated block between `<!-- NAME:start -->` and
    `<!-- NAME:end -->` with `markdown`; False when the markers are absent."""
    text = readme.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    write_text(readme, head + start + "\n" + markdown.rstrip("\n") + "\n" + end +
               rest.split(end, 1)[1])
    print(f"updated the {name} block in {readme.name}")
    return True
