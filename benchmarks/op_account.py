"""Where the float32 time goes: our ONNX and TFLite files against the PyTorch peer's ONNX
file, op type by op type, batch 1 on one thread.

    python benchmarks/op_account.py [--models b0,lite0] [--runs 60]

Two measurements per model, each in this one process:

1. ONNX Runtime's own profiler on our ONNX export and on the peer's (torch's export of
   efficientnet_lite_pytorch: the same layers and MACs), same runtime, same settings:
   milliseconds per run and calls per run for every op type of ONNX Runtime's optimised
   graph (its NCHWc layout reorders and fused activations included). The difference
   is what our graph costs more, or less, inside one runtime.
2. What the activation costs in each runtime: our model and the same model with ReLU in
   place of its activation (weights equal), in LiteRT and in ONNX Runtime, interleaved.
   TFLite has no swish op, so LiteRT runs swish as LOGISTIC then MUL (two passes over
   each tensor); ONNX Runtime fuses it into one QuickGelu kernel. ReLU and ReLU6 fuse
   into the preceding convolution in both.
3. Where int8 gains and where it does not, in LiteRT: every distinct convolution of the
   model (with its BatchNorm and activation, which the converter folds or fuses),
   outside the squeeze-excitation branches, as a model of its own in float32 and in
   int8 (int8 in and out, so no QUANTIZE or DEQUANTIZE around it), interleaved with the
   whole model in both; times multiplied by how often the
   layer occurs and summed by kind (stem, 1x1 expansion, depthwise kxk / stride, 1x1
   projection, head). Isolated layers carry each invoke's fixed cost, so their sum is
   above the whole model's; the ratios are what to read. (The same isolation in ONNX
   Runtime is not comparable: each isolated ONNX file transposes NHWC to NCHW and back
   and reorders into ONNX Runtime's blocked layout, work the whole model does once.)

Writes op_account.json and .md, and the README's `op_account` block.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["b0", "lite0"], "variants the PyTorch peer has")
flags.DEFINE_integer("runs", 60, "profiled runs per file; interleaved rounds in part 2")
flags.DEFINE_string("out", str(_bench.RESULTS), "output folder")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated block in README.md")


def _profiled_session(path: str, profile_prefix: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _profile(path: str, images: np.ndarray, runs: int, folder: str) -> dict:
    """{op type: (ms per run, calls per run)} and the total, from ONNX Runtime's
    profiler; the first run (memory planning) is left out."""
    session = _profiled_session(path, os.path.join(folder, os.path.basename(path)))
    name = session.get_inputs()[0].name
    for _ in range(runs + 1):
        session.run(None, {name: images})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first_end = starts[1] if len(starts) > 1 else float("inf")
    ms, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") \
                and event["ts"] >= first_end:
            ms[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
            calls[event["args"]["op_name"]] += 1
    return {"ops": {op: {"ms": ms[op], "calls": calls[op] // runs} for op in ms},
            "total_ms": sum(ms.values())}


def _account(variant: str, folder: str) -> dict:
    import keras

    import keras_effnet as ke
    from keras_effnet.export import bundled_photos, to_onnx
    from keras_effnet.export.tflite import convert

    keras.utils.set_random_seed(0)
    model = ke.build(variant, weights=None)
    size = model.input_shape[1]
    image = ke.load_image(bundled_photos()[0][0], size)[None].astype("float32")
    ours = str(to_onnx(model, os.path.join(folder, f"{variant}.onnx"), overwrite=True))
    peer = _bench.torch_peer_onnx(_bench.torch_peer(variant, size), size,
                                  os.path.join(folder, f"{variant}_peer.onnx"))
    peer_image = ((image - 255 * np.array(model.get_layer("normalization").mean)) /
                  (255 * np.array(model.get_layer("normalization").std))).astype("float32")
    profiles = {"ours": _profile(ours, image, FLAGS.runs, folder),
                "peer": _profile(peer, peer_image.transpose(0, 3, 1, 2).copy(), FLAGS.runs,
                                 folder)}
    tflite = convert(model, "float32", progress=False)  # parts 2 and 3 share both files
    return {"size": size, "profiles": profiles,
            "activation": _activation_cost(model, variant, image, folder, tflite, ours),
            "convolutions": _conv_account(model, image, tflite)}


def _activation_cost(model, variant: str, image: np.ndarray, folder: str, tflite: bytes,
                     onnx_path: str) -> dict:
    """Interleaved medians: ours (`tflite`, `onnx_path`) and ours with ReLU, in LiteRT
    and ONNX Runtime."""
    import keras_effnet as ke
    from keras_effnet.builder import build_efficientnet
    from keras_effnet.export import to_onnx
    from keras_effnet.export.onnx import onnx_session
    from keras_effnet.export.tflite import convert

    spec = ke.get_variant(variant)
    relu = build_efficientnet(dataclasses.replace(spec, activation="relu"), weights=None)
    relu.set_weights(model.get_weights())
    relu_onnx = str(to_onnx(relu, os.path.join(folder, f"{variant}_relu.onnx"), overwrite=True))
    runners = {}
    for label, content, path in ((spec.activation, tflite, onnx_path),
                                 ("relu", convert(relu, "float32", progress=False), relu_onnx)):
        runners[f"LiteRT {label}"] = _bench.tflite_runner(content, image[0], 1)
        session = onnx_session(path, threads=1)
        name = session.get_inputs()[0].name
        runners[f"ONNX Runtime {label}"] = (
            lambda s=session, n=name: s.run(None, {n: image}))
    stats = _bench.interleaved(runners, FLAGS.runs, f"LiteRT {spec.activation}")
    cost = {}
    for runtime in ("LiteRT", "ONNX Runtime"):
        full = stats[f"{runtime} {spec.activation}"]["median_ms"]
        cost[runtime] = {"activation": spec.activation, "ms": full,
                         "relu_ms": stats[f"{runtime} relu"]["median_ms"],
                         "activation_cost_ms": full - stats[f"{runtime} relu"]["median_ms"]}
    return {"runners": stats, "cost": cost}


def _kind(layer) -> str:
    name = layer.name
    if "stem" in name or "top" in name:
        return "stem 3x3 / 2" if "stem" in name else "head 1x1"
    if "dwconv" in name:
        return f"depthwise {layer.kernel_size[0]}x{layer.kernel_size[1]} / {layer.strides[0]}"
    return "1x1 expansion" if "expand" in name else "1x1 projection"


def _conv_models(model) -> dict:
    """{(kind, key): (count, keras model)}: each distinct convolution outside SE
    branches, with the BatchNorm and activation that follow it, as a model of its own."""
    import keras

    from keras_effnet import graph

    found = {}
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) or \
                "_se_" in layer.name:
            continue
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        shape = tuple(layer.input.shape[1:])
        key = (_kind(layer), json.dumps([shape, config], sort_keys=True, default=str))
        if key in found:
            found[key] = (found[key][0] + 1, found[key][1])
            continue
        chain, tensor = [layer], layer.output
        for kind in (keras.layers.BatchNormalization, keras.layers.Activation):
            consumers = graph.consumers(model, tensor)
            if len(consumers) != 1 or not isinstance(consumers[0], kind):
                break
            chain.append(consumers[0])
            tensor = consumers[0].output
        x = inputs = keras.Input(shape, batch_size=1)
        for original in chain:
            clone = type(original).from_config(original.get_config())
            x = clone(x)
            clone.set_weights(original.get_weights())
        found[key] = (1, keras.Model(inputs, x))
    return found


def _conv_account(model, image: np.ndarray, tflite: bytes) -> dict:
    """LiteRT float32 and int8 ms per kind (summed over occurrences), and the whole
    model's float32 and int8 (uint8 would add only the input's requantization)."""
    from keras_effnet.export import bundled_photos, calibration_views
    from keras_effnet.export.tflite import convert

    rng = np.random.default_rng(0)
    runners, counts = {}, {}
    for i, ((kind, _), (count, layer_model)) in enumerate(_conv_models(model).items()):
        shape = layer_model.input_shape[1:]
        calibration = rng.normal(size=(8, *shape)).astype("float32")
        for mode in ("float32", "int8"):  # int8 in and out: no (de)quantization around it
            content = _bench.plain_tflite(layer_model, mode, calibration, integer_io=True)
            runners[f"{i} {mode}"] = _bench.tflite_runner(content, calibration[0], 1)
        counts[i] = (kind, count)
    photos = calibration_views(bundled_photos()[0], model.input_shape[1], 32, seed=0)
    forms = _stem_forms(model)
    for form, stem in forms.items():
        for mode in ("float32", "int8"):
            content = _bench.plain_tflite(stem, mode, photos[:8], integer_io=True)
            runners[f"stem {form} {mode}"] = _bench.tflite_runner(content, photos[0], 1)
    for mode, content in (("float32", tflite),
                          ("int8", convert(model, "int8", photos, progress=False))):
        runners[f"model {mode}"] = _bench.tflite_runner(content, image[0], 1)
    stats = _bench.interleaved(runners, FLAGS.runs, "model float32")
    kinds: dict = {}
    for i, (kind, count) in counts.items():
        row = kinds.setdefault(kind, {"layers": 0, "float32": 0.0, "int8": 0.0})
        row["layers"] += count
        for mode in ("float32", "int8"):
            row[mode] += count * stats[f"{i} {mode}"]["median_ms"]
    return {"kinds": kinds,
            "stem_forms": {form: {mode: stats[f"stem {form} {mode}"]["median_ms"]
                                  for mode in ("float32", "int8")}
                           for form in forms},
            "model": {mode: stats[f"model {mode}"]["median_ms"]
                      for mode in ("float32", "int8")}}


def _stem_forms(model) -> dict:
    """The exported stem (preprocessing as one 1x1 depthwise conv, stem conv, BN,
    activation) as a model, in its 3x3 stride-2 form and as space-to-depth + 2x2,
    the form `convert` writes in the integer modes."""
    import keras

    from keras_effnet.export.preprocess import fold_preprocessing, space_to_depth_stem

    folded = fold_preprocessing(model)
    stem = keras.Model(folded.inputs, _output_in(folded, "stem_activation"))
    return {"3x3 / 2": stem, "space-to-depth 2x2": space_to_depth_stem(stem)}


def _output_in(model, name: str):
    """The output of layer `name` in `model`'s own graph (a rebuilt model shares layers
    with the original, whose first call is another graph)."""
    from keras_effnet import graph

    return graph.output_tensors(model.get_layer(name), -1)[0]


def _markdown(data) -> list[str]:
    md = ["# Where the float32 time goes", "",
          (f"Generated by `benchmarks/op_account.py` on {data['cpu']['model']} "
           f"({data['machine']['cpus']} CPUs): batch 1, one thread. Part 1: ONNX Runtime's "
           f"profiler over {data['runs']} runs, ms per run by op type of its optimised graph "
           "(calls per run in brackets), our ONNX export against the PyTorch peer's (torch "
           "export, input already normalised). Part 2: the same model with ReLU in place "
           "of its activation, interleaved medians: the activation's cost in each runtime. "
           "Part 3: LiteRT float32 against int8, each distinct convolution as a model of its "
           "own (times x occurrences, summed by kind) and the whole model, interleaved "
           "medians; isolated layers carry each invoke's fixed cost, read the ratios.")]
    for variant, row in data["models"].items():
        ours, peer = row["profiles"]["ours"], row["profiles"]["peer"]
        ops = sorted(set(ours["ops"]) | set(peer["ops"]),
                     key=lambda op: -abs(ours["ops"].get(op, {}).get("ms", 0.0)
                                         - peer["ops"].get(op, {}).get("ms", 0.0)))
        md += ["", f"{variant} at {row['size']} px, ONNX Runtime profile:", "",
               "| op type | ours ms (calls) | peer ms (calls) | ours - peer ms |",
               "|---|---|---|---|"]
        for op in ops:
            a = ours["ops"].get(op, {"ms": 0.0, "calls": 0})
            b = peer["ops"].get(op, {"ms": 0.0, "calls": 0})
            md.append(f"| {op} | {a['ms']:.2f} ({a['calls']}) | {b['ms']:.2f} ({b['calls']}) | "
                      f"{a['ms'] - b['ms']:+.2f} |")
        md.append(f"| total | {ours['total_ms']:.2f} | {peer['total_ms']:.2f} | "
                  f"{ours['total_ms'] - peer['total_ms']:+.2f} |")
        md += ["", f"{variant}, the activation's cost:", "",
               "| runtime | activation | ms | with ReLU ms | activation costs ms |",
               "|---|---|---|---|---|"]
        for runtime, c in row["activation"]["cost"].items():
            md.append(f"| {runtime} | {c['activation']} | {c['ms']:.2f} | {c['relu_ms']:.2f} | "
                      f"{c['activation_cost_ms']:.2f} |")
        convs = row["convolutions"]
        md += ["", (f"{variant} in LiteRT, float32 against int8: the convolutions one by one "
                    "(each with its BatchNorm and activation), summed by kind, and the whole "
                    "model:"), "",
               "| kind | layers | float32 ms | int8 ms | int8 / float32 |", "|---|---|---|---|---|"]
        totals = {"float32": 0.0, "int8": 0.0}
        for kind, c in convs["kinds"].items():
            md.append(f"| {kind} | {c['layers']} | {c['float32']:.2f} | {c['int8']:.2f} | "
                      f"{c['int8'] / c['float32']:.2f} |")
            for mode in totals:
                totals[mode] += c[mode]
        md.append(f"| all convolutions | {sum(c['layers'] for c in convs['kinds'].values())} | "
                  f"{totals['float32']:.2f} | {totals['int8']:.2f} | "
                  f"{totals['int8'] / totals['float32']:.2f} |")
        whole = convs["model"]
        md.append(f"| the whole model (as exported) | | {whole['float32']:.2f} | "
                  f"{whole['int8']:.2f} | {whole['int8'] / whole['float32']:.2f} |")
        md += ["", (f"{variant}'s exported stem (preprocessing, stem conv, BN, activation) "
                    "in its two forms; `convert` writes the space-to-depth one in the "
                    "integer modes:"), "",
               "| stem form | float32 ms | int8 ms | int8 / float32 |", "|---|---|---|---|"]
        for form, c in convs["stem_forms"].items():
            md.append(f"| {form} | {c['float32']:.2f} | {c['int8']:.2f} | "
                      f"{c['int8'] / c['float32']:.2f} |")
    return md


def main(argv):
    del argv
    import warnings

    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # the exports log every file they write

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    warnings.filterwarnings("ignore", module="torch")
    try:
        import onnxruntime  # noqa: F401
        import torch

        torch.set_num_threads(1)
    except ImportError as exc:
        raise SystemExit(f"op_account needs ONNX Runtime and the PyTorch peer ({exc}): "
                         "pip install keras-effnet[onnx,test]") from exc
    data = {"machine": _bench.machine(), "cpu": _bench.cpu_info(), "runs": FLAGS.runs,
            "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench_op_account_") as folder:
        for variant in FLAGS.models:
            print(f"{variant}: profiling", flush=True)
            data["models"][variant] = _account(variant, folder)
            row = data["models"][variant]["profiles"]
            print(f"  ONNX Runtime total: ours {row['ours']['total_ms']:.2f} ms, peer "
                  f"{row['peer']['total_ms']:.2f} ms", flush=True)
    _bench.publish("op_account", data, _markdown(data), FLAGS.out, FLAGS.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
