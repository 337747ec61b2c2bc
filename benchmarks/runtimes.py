"""Every runtime a user could pick for the same EfficientNet, in one process, interleaved.

    python benchmarks/runtimes.py [--models b0,lite0,b1] [--runs 25] [--out DIR]

Two settings, each in its own process (TensorFlow fixes its thread pools when it
starts): batch 1 on one thread, and batch 32 on all threads. Per model and setting, every
runner is timed in 25 rounds; each round runs every runner once, in a fresh random order,
so a slow spell of the machine hits all of them and no runner always follows the same
one. Reported:
median and p10-p90 per runner, and each runner's ratio to ours in LiteRT float32 (the
median of the per-round ratios).

Runners (a missing optional runtime is reported and skipped):

* LiteRT float32 / float16 / int8 / uint8: our export (`keras_effnet.export.convert`),
  in LiteRT's Interpreter (XNNPACK). A float16 file holds float16 weights and computes in
  float32 there.
* LiteRT CompiledModel: the float32 file in LiteRT's newer API, with LiteRT's default
  options, and with XNNPACK's FORCE_FP16 flag (`keras_effnet.export.runtimes.
  XNNPACK_FP16`), which computes the float32 operators in float16 on a CPU with fp16
  arithmetic (x86 AVX512-FP16, ARMv8.2 FP16) and is refused elsewhere (then skipped).
  Batch 1 only: building a CompiledModel crashed LiteRT 2.3.0 in the batch-32 process
  after the other runners of B0 (a heap corrupted earlier in the process: a segfault in
  Environment.create or CreateCompiledModelFromBuffer, or glibc's "unaligned tcache chunk").
* ONNX Runtime float32: our model exported to ONNX (`keras_effnet.export.to_onnx`);
  ONNX Runtime int8: that file quantized by ONNX Runtime's static QDQ quantizer on the
  same calibration images, per-channel int8 weights, twice: int8 activations (S8S8, the
  quantizer's default, which ONNX Runtime's quantization guide suggests trying first)
  and uint8 activations (U8S8), which ran B0 4x and Lite0 2x faster on this Xeon.
* PyTorch eager, and ONNX Runtime float32 on the PyTorch model exported by torch: the
  peer is efficientnet_lite_pytorch (lukemelas' EfficientNet-PyTorch with the Lite
  variants; ReLU6 kept in Lite's export): the same layers, activations and MACs as
  timm's model of the name, which cannot run here
  (timm imports torchvision, whose PyPI wheels are CUDA builds that do not register with
  the CPU torch).
* TensorFlow: ours and keras.applications' (B0, B1) called in a tf.function.

Weights are random (ImageNet statistics in the stem): latency does not depend on them.
Writes runtimes.json and .md, and the README's `runtimes` block.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
import numpy as np
from absl import app, flags

from keras_effnet.export.data import input_tensor
from keras_effnet.export.runtimes import XNNPACK_FP16

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["b0", "lite0", "b1"], "variants (b0, b1, lite0, ...)")
flags.DEFINE_integer("runs", 25, "interleaved rounds per model and setting")
flags.DEFINE_enum("setting", None, ["single", "all"], "run one setting in this process "
                  "(used by the parent run: single = batch 1, one thread; all = batch 32, "
                  "all threads)")
flags.DEFINE_integer("calibration_images", 32, "calibration images of the int8 files")
flags.DEFINE_string("out", str(REPO / "benchmarks" / "results"), "output folder")
flags.DEFINE_string("name", "runtimes", "results file name")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated block in README.md")

SETTINGS = {"single": (1, 1), "all": (32, os.cpu_count())}
REFERENCE = "LiteRT float32 (ours)"
FP16_RUNNER = "LiteRT CompiledModel float32 file, fp16 compute (ours)"
KERAS_APPS = {"b0": "EfficientNetB0", "b1": "EfficientNetB1"}


def _litert(content: bytes, images: np.ndarray, threads: int):
    interpreter = _bench.litert_interpreter()(model_content=content, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], input_tensor(images, detail["dtype"],
                                                         detail["quantization"]))
    return interpreter.invoke


def _compiled_model(content: bytes, images: np.ndarray, threads: int, xnnpack_flags=None):
    """LiteRT's CompiledModel API on the CPU, the batch resized to `images`."""
    from keras_effnet.export.runtimes import compiled_model

    model = compiled_model(content, threads, xnnpack_flags)
    model.resize_input_tensor(0, images.shape)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
    inputs[0].write(images)
    model.run_by_index(0, inputs, outputs)  # the first run builds XNNPACK's plan
    return lambda: model.run_by_index(0, inputs, outputs)


def _onnx(path, images: np.ndarray, threads: int):
    from keras_effnet.export.onnx import onnx_session

    session = onnx_session(path, threads=threads)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: images})


def _onnx_int8(path: str, calibration: np.ndarray) -> dict:
    """{activation type: path}: `path` quantized by ONNX Runtime's static QDQ quantizer
    (per-channel int8 weights) with int8 and with uint8 activations, pre-processed once."""
    from onnxruntime import quantization as q

    from keras_effnet.export.onnx import onnx_session

    name = onnx_session(path).get_inputs()[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: image[None]} for image in calibration])

        def get_next(self):
            return next(self.items, None)

    stem = os.path.splitext(path)[0]
    prepared = f"{stem}.pre.onnx"
    q.quant_pre_process(path, prepared)
    paths = {}
    for activations, kind in (("int8", q.QuantType.QInt8), ("uint8", q.QuantType.QUInt8)):
        paths[activations] = f"{stem}_{activations}.onnx"
        q.quantize_static(prepared, paths[activations], Reader(),
                          quant_format=q.QuantFormat.QDQ, per_channel=True,
                          weight_type=q.QuantType.QInt8, activation_type=kind)
    return paths


def _torch_peer(variant: str, size: int, folder: str, images: np.ndarray, threads: int):
    """(eager runner, ONNX Runtime runner of torch's export) of the PyTorch peer."""
    import torch

    torch.set_num_threads(threads)
    model = _bench.torch_peer(variant, size)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def eager():
        with torch.no_grad():
            model(x)

    path = _bench.torch_peer_onnx(model, size, os.path.join(folder, "torch.onnx"))
    session = _onnx(path, images.transpose(0, 3, 1, 2).copy(), threads)
    return eager, session


def _runners(variant: str, batch: int, threads: int, folder: str, log) -> tuple[dict, dict]:
    import keras

    import keras_effnet as ke
    from keras_effnet.export import bundled_photos, calibration_views, to_onnx
    from keras_effnet.export.tflite import convert

    keras.utils.set_random_seed(0)
    model = ke.build(variant, weights=None)
    size = model.input_shape[1]
    photos = calibration_views(bundled_photos()[0], size, max(batch, FLAGS.calibration_images),
                               seed=0)
    images = photos[:batch].astype(np.float32)
    runners, missing, files = {}, {}, {}
    for mode in ("float32", "float16", "int8", "uint8"):
        log(f"  {variant}: LiteRT {mode}")
        files[mode] = convert(model, mode, photos, batch_size=None, progress=False)
        runners[f"LiteRT {mode} (ours)"] = _litert(files[mode], images, threads)
    compiled = {"LiteRT CompiledModel float32 (ours)": None, FP16_RUNNER: XNNPACK_FP16}
    if batch > 1:  # a crash cannot be caught and reported like the rest
        missing.update(dict.fromkeys(compiled, "not run at batch > 1: LiteRT 2.3.0 crashed "
                                               "(heap corruption) building B0's CompiledModel "
                                               "in this benchmark's batch-32 process"))
        compiled = {}
    for name, flags_ in compiled.items():
        try:
            runners[name] = _compiled_model(files["float32"], images, threads, flags_)
        except Exception as exc:  # noqa: BLE001 - no CompiledModel, or no fp16 arithmetic
            missing[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    try:
        log(f"  {variant}: ONNX")
        onnx_path = to_onnx(model, os.path.join(folder, f"{variant}.onnx"), overwrite=True)
        runners["ONNX Runtime float32 (ours)"] = _onnx(onnx_path, images, threads)
        for activations, int8 in _onnx_int8(str(onnx_path), photos).items():
            runners[f"ONNX Runtime int8 QDQ, {activations} activations (ours)"] = _onnx(
                int8, images, threads)
    except ImportError as exc:
        missing["ONNX Runtime"] = str(exc)
    try:
        log(f"  {variant}: PyTorch peer")
        eager, session = _torch_peer(variant, size, folder, images, threads)
        runners["PyTorch eager (peer)"] = eager
        runners["ONNX Runtime float32 (PyTorch peer, torch export)"] = session
    except (ImportError, KeyError) as exc:
        missing["PyTorch peer"] = f"{type(exc).__name__}: {exc}"
    runners["TensorFlow (ours)"] = _keras(model, images)
    if variant in KERAS_APPS:
        runners["TensorFlow (keras.applications)"] = _keras(
            _bench.keras_applications(KERAS_APPS[variant]), images)
    return runners, missing


def _keras(model, images):
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False))
    x = tf.constant(images)
    function(x)
    return lambda: function(x).numpy()


def _interleaved(runners: dict, runs: int) -> dict:
    stats = _bench.interleaved(runners, runs, REFERENCE)
    return {name: {**{k: v for k, v in row.items() if k != "ratio"},
                   "ratio_to_ours_float32": row["ratio"]} for name, row in stats.items()}


def _one_setting(setting: str) -> dict:
    import tensorflow as tf

    batch, threads = SETTINGS[setting]
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
    result = {"batch": batch, "threads": threads, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench_runtimes_") as folder:
        for variant in FLAGS.models:
            print(f"{setting}: {variant} (batch {batch}, {threads} threads)", flush=True)
            runners, missing = _runners(variant, batch, threads, folder, print)
            result["models"][variant] = {"missing": missing,
                                         "runners": _interleaved(runners, FLAGS.runs)}
    return result


def _markdown(data) -> list[str]:
    cpu = data["cpu"]
    md = ["# Runtimes: the same EfficientNet in every runtime", "",
          (f"Generated by `benchmarks/runtimes.py` on {cpu['model']} ({data['machine']['cpus']} "
           f"CPUs; {' '.join(cpu['flags'])}). Median of {data['runs']} interleaved rounds, "
           "p10-p90 in brackets; ratio: the median per-round time over ours in LiteRT "
           "float32 (below 1: faster). Random weights. PyTorch peer: "
           "efficientnet_lite_pytorch, the same layers and MACs as timm's model.")]
    for result in data["settings"].values():
        md += ["", f"Batch {result['batch']}, {result['threads']} thread(s):", "",
               "| model | runner | median ms | p10-p90 ms | ratio to ours float32 |",
               "|---|---|---|---|---|"]
        for variant, row in result["models"].items():
            for name, r in row["runners"].items():
                md.append(f"| {variant} | {name} | {r['median_ms']:.1f} | {_bench.spread(r)} | "
                          f"{r['ratio_to_ours_float32']:.2f} |")
            for name, why in row["missing"].items():
                md.append(f"| {variant} | {name} | skipped: {why[:80]} | | |")
    return md


def main(argv):
    del argv
    import warnings

    from absl import logging

    logging.set_verbosity(logging.WARNING)  # ONNX Runtime's quantizer logs every bias
    warnings.filterwarnings("ignore", module="torch")
    if FLAGS.setting:
        print("RESULT " + json.dumps(_one_setting(FLAGS.setting)), flush=True)
        return 0
    data = {"machine": _bench.machine(), "cpu": _bench.cpu_info(), "runs": FLAGS.runs,
            "settings": {}}
    for setting in SETTINGS:
        command = [sys.executable, __file__, f"--setting={setting}",
                   f"--models={','.join(FLAGS.models)}", f"--runs={FLAGS.runs}",
                   f"--calibration_images={FLAGS.calibration_images}"]
        process = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            print(process.stdout[-3000:], process.stderr[-5000:])
            raise RuntimeError(f"the {setting} setting failed")
        data["settings"][setting] = json.loads(lines[-1][len("RESULT "):])
        print(f"{setting}: done", flush=True)
    _bench.publish(FLAGS.name, data, _markdown(data), FLAGS.out, FLAGS.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
