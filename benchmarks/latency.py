"""Batch-1 latency on one thread, the paper's Table 4 protocol, against the peers.

    python benchmarks/latency.py [--variants b0,b1] [--threads 1] [--runs 20]
                                 [--runtimes keras,float32,int8]

Each comparison runs both models in the same process, interleaved (see
_bench.paired), after a warm-up, and reports medians with a 10-90% spread and
the median of the per-pair ratios:
  - ours vs keras.applications.EfficientNetBx (same architecture: the ratio
    is our overhead or gain; in the float32 and int8 rows the peers are
    converted the plain way and our models through keras_effnet.export; in
    the plain-float32 and plain-int8 rows both the plain way, model.export
    then TFLiteConverter, as most users do),
  - B1 vs keras.applications.ResNet152 (the paper: 5.7x faster) and B0 vs
    ResNet50,
  - Lite0 vs B0 (what dropping SE and swish buys),
and, per model, "% of peak": its multiply-adds per second as a share of a
matrix-multiply probe's in the same runtime, run in the same process on the
same threads (TensorFlow's matmul for Keras rows, one LiteRT FULLY_CONNECTED
op in float32 or int8 for TFLite rows). Keras runs are a compiled
tf.function on the TensorFlow runtime; TFLite runs are LiteRT with XNNPACK.
Weights do not change latency, so every model is built with weights=None
(nothing is downloaded); our B models get their keras.applications peer's random
weights, so that in those comparisons only the graphs differ. Writes
benchmarks/results/latency.{json,md}.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["b0", "b1"], "our B variants to compare with keras.applications")
RUNTIMES = ("keras", "float32", "int8", "plain-float32", "plain-int8")
flags.DEFINE_list("runtimes", ["keras", "float32", "int8", "plain-float32", "plain-int8"],
                  "keras (TensorFlow); float32 and int8: TFLite in LiteRT, ours through "
                  "keras_effnet.export, peers the plain way; plain-float32 and plain-int8: "
                  "every model the plain way (model.export, then TFLiteConverter), the path "
                  "most users take")
flags.DEFINE_integer("threads", 1, "threads for TensorFlow and LiteRT (paper: one core)")
flags.DEFINE_integer("runs", 20, "timed runs per model and comparison (paper: 20)")
flags.DEFINE_integer("warmup", 3, "untimed runs first")
flags.DEFINE_integer("calibration", 16, "calibration crops for the int8 files (latency does not "
                     "depend on their number)")
flags.DEFINE_boolean("resnet", True, "include the ResNet-50/152 comparisons")
flags.DEFINE_string("out", str(_bench.RESULTS), "output folder")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated table in README.md")

PAPER_B1_VS_RESNET152 = 5.7  # paper Table 4


class Models:
    """Builds each model once, converts each once per runtime, caches both."""

    def __init__(self, calibration_count: int):
        self._models, self._artifacts = {}, {}
        self.calibration_count = calibration_count

    def model(self, key: str):
        if key not in self._models:
            model = _bench.build_model(key)
            peer = _keras_peer(key)
            if peer is not None:  # the same (random) weights: only the graphs differ
                model.set_weights(self.model(peer).get_weights())
            self._models[key] = model
        return self._models[key]

    def runner(self, key: str, runtime: str, image):
        if runtime == "keras":
            return _bench.keras_runner(self.model(key), image)
        _bench.litert_interpreter()  # before a conversion that could not be run
        if (key, runtime) not in self._artifacts:
            model = self.model(key)
            mode = _mode(runtime)
            calibration = None
            if mode == "int8":
                calibration = self._calibration(model.input_shape[1])
            start = time.perf_counter()
            if key.startswith("ours:") and mode == runtime:
                from keras_effnet.export.tflite import convert

                content = convert(model, mode, images=calibration, progress=False)
            else:
                content = _bench.plain_tflite(model, mode, calibration)
            print(f"  converted {key} to {runtime} in {time.perf_counter() - start:.0f} s")
            self._artifacts[key, runtime] = content
        return _bench.tflite_runner(self._artifacts[key, runtime], image, FLAGS.threads)

    def _calibration(self, size: int):
        from keras_effnet.export import bundled_photos, calibration_views

        return calibration_views(bundled_photos()[0], size, self.calibration_count)


def _keras_peer(key: str) -> str | None:
    """keras.applications' model with our model's layers, in order (ours:b0 ->
    keras:EfficientNetB0), or None."""
    import keras_effnet as ke

    owner, name = key.split(":")
    if owner != "ours" or not name.startswith("b") or name in ("b8",):
        return None
    return f"keras:{ke.get_variant(name).constructor_name}"


def _mode(runtime: str) -> str:
    """The TFLite mode of a runtime name (plain-int8 -> int8)."""
    return runtime.removeprefix("plain-")


def _label(key: str) -> str:
    import keras_effnet as ke

    owner, name = key.split(":")
    if owner == "ours":
        return f"ours {ke.get_variant(name).constructor_name}"
    return f"keras.applications.{name}"


def _peak_macs_per_second(size: int = 1024, repeats: int = 10) -> float:
    """Single-precision multiply-adds per second of a square matmul on the
    configured threads in TensorFlow: the practical peak of the Keras runtime."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    return size ** 3 / _best_seconds(lambda: matmul(a, b).numpy(), repeats)


def _litert_peak_macs_per_second(mode: str, rows: int = 256, depth: int = 1024,
                                 repeats: int = 10) -> float:
    """Multiply-adds per second of one FULLY_CONNECTED op ([rows, depth] x
    [depth, depth]) in LiteRT on the configured threads: float32 (XNNPACK) or
    int8 (full-integer kernels), the practical peak of that TFLite runtime."""
    import numpy as np
    import tensorflow as tf

    _bench.litert_interpreter()
    rng = np.random.default_rng(0)
    weights = tf.constant(rng.normal(size=(depth, depth)).astype("float32"))
    matmul = tf.function(lambda x: tf.matmul(x, weights),
                         input_signature=[tf.TensorSpec((rows, depth), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [matmul.get_concrete_function()], matmul)
    if mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.normal(size=(rows, depth)).astype("float32")] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    image = rng.integers(-100, 100, (rows, depth)).astype("float32")
    run = _bench.tflite_runner(converter.convert(), image, FLAGS.threads, batch=False)
    run()
    return rows * depth * depth / _best_seconds(run, repeats)


def _best_seconds(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _peaks() -> dict:
    """Each runtime's probe, measured in this run; a runtime whose probe
    cannot run (LiteRT missing) has none."""
    peaks = {"keras": _peak_macs_per_second()}
    for mode in ("float32", "int8"):
        if mode in {_mode(runtime) for runtime in FLAGS.runtimes}:
            try:
                peaks[mode] = _litert_peak_macs_per_second(mode)
            except _bench.PeerUnavailable as exc:
                print(f"  no {mode} probe: {exc}")
    for runtime, peak in peaks.items():
        print(f"matmul probe, {runtime}: {peak / 1e9:.1f} G multiply-adds/s on "
              f"{FLAGS.threads} thread(s)")
    return peaks


def _comparisons() -> list[tuple[str, str, str, list[str], str]]:
    """(title, key A, key B, runtimes, what the ratio means)."""
    import keras_effnet as ke

    out = []
    for name in FLAGS.variants:
        variant = ke.get_variant(name)
        if not variant.name.startswith("b"):
            raise ValueError(f"--variants takes B variants (keras.applications has no "
                             f"{variant.constructor_name}), got {name!r}")
        out.append((f"ours vs keras.applications ({variant.constructor_name})",
                    f"ours:{variant.name}", f"keras:{variant.constructor_name}",
                    FLAGS.runtimes, "ours / peer (<= 1.00: not slower)"))
    runtimes = [r for r in FLAGS.runtimes if r in ("keras", "float32")]
    if FLAGS.resnet and "b1" in FLAGS.variants:
        out.append(("B1 vs ResNet-152 (paper Table 4: 5.7x)", "ours:b1", "keras:ResNet152",
                    runtimes, "B1 / ResNet-152 (speedup = 1 / ratio)"))
    if FLAGS.resnet and "b0" in FLAGS.variants:
        out.append(("B0 vs ResNet-50", "ours:b0", "keras:ResNet50", runtimes,
                    "B0 / ResNet-50 (speedup = 1 / ratio)"))
    out.append(("Lite0 vs B0", "ours:lite0", "ours:b0",
                [r for r in FLAGS.runtimes if r in ("float32", "int8")] or FLAGS.runtimes,
                "Lite0 / B0"))
    return out


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    # one core, as in the paper; must happen before TensorFlow runs anything
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras_effnet as ke
    from keras_effnet.export import bundled_photos

    unknown = set(FLAGS.runtimes) - set(RUNTIMES)
    if unknown:
        raise app.UsageError(f"unknown --runtimes {sorted(unknown)}: expected "
                             f"{', '.join(RUNTIMES)}")
    peaks = _peaks()
    photos = bundled_photos()[0]
    models = Models(FLAGS.calibration)
    pairs, per_model, skipped = [], {}, []
    for title, key_a, key_b, runtimes, meaning in _comparisons():
        print(f"\n{title}")
        for runtime in runtimes:
            try:
                size_a = models.model(key_a).input_shape[1]
                size_b = models.model(key_b).input_shape[1]
                run_a = models.runner(key_a, runtime, ke.load_image(photos[0], size_a))
                run_b = models.runner(key_b, runtime, ke.load_image(photos[0], size_b))
            except _bench.PeerUnavailable as exc:
                print(f"  skipped {runtime}: {exc}")
                skipped.append({"comparison": title, "runtime": runtime, "reason": str(exc)})
                continue
            times_a, times_b, ratio = _bench.paired(run_a, run_b, FLAGS.runs, FLAGS.warmup)
            row = {"comparison": title, "runtime": runtime, "a": _label(key_a),
                   "b": _label(key_b), "a_stats": _bench.summary(times_a),
                   "b_stats": _bench.summary(times_b), "ratio": ratio, "meaning": meaning}
            pairs.append(row)
            for key, times in ((key_a, times_a), (key_b, times_b)):
                per_model.setdefault((key, runtime), []).extend(times)
            print(f"  {runtime:8s} {row['a']}: {row['a_stats']['median_ms']:.1f} ms, "
                  f"{row['b']}: {row['b_stats']['median_ms']:.1f} ms, ratio {ratio:.3f}")
    model_rows = []
    for (key, runtime), times in per_model.items():
        stats = _bench.summary(times)
        macs = ke.profile(models.model(key)).macs
        rate = macs / (stats["median_ms"] / 1e3)
        model_rows.append({"model": _label(key), "runtime": runtime, **stats, "macs": macs,
                           "macs_per_s": rate, "percent_of_peak":
                           100 * rate / peaks[_mode(runtime)] if _mode(runtime) in peaks
                           else None})
    data = {**_bench.machine(), "threads": FLAGS.threads, "runs": FLAGS.runs,
            "peak_macs_per_s": peaks, "pairs": pairs, "models": model_rows, "skipped": skipped,
            "checks": _checks(pairs)}
    _bench.publish("latency", data, _markdown(data), FLAGS.out, FLAGS.update_readme)
    return 0


def _checks(pairs) -> list[dict]:
    checks = []
    for row in pairs:
        if row["comparison"].startswith("ours vs keras.applications") and \
                row["runtime"] in ("keras", "float32", "plain-float32"):
            checks.append({"check": f"{row['comparison']}, {row['runtime']}: ours / peer <= 1.00",
                           "value": row["ratio"], "passed": row["ratio"] <= 1.0})
        if row["comparison"].startswith("B1 vs ResNet-152") and row["runtime"] == "float32":
            speedup = 1 / row["ratio"]
            checks.append({"check": f"B1 vs ResNet-152, TFLite float32: speedup >= "
                           f"{PAPER_B1_VS_RESNET152}", "value": speedup,
                           "passed": speedup >= PAPER_B1_VS_RESNET152})
    return checks


def _markdown(data) -> list[str]:
    names = {"keras": "Keras (TF)", "float32": "TFLite float32", "int8": "TFLite int8",
             "plain-float32": "TFLite float32, plain path", "plain-int8": "TFLite int8, plain path"}
    md = ["# Latency", "",
          (f"Generated by `benchmarks/latency.py`: batch 1, {data['threads']} thread(s), median "
           f"of {data['runs']} interleaved runs after warm-up (paper Table 4 protocol), "
           f"{data['cpus']}-CPU {data['machine']} machine. Ratio: median of the per-pair "
           "ratios A / B. % of peak: the model's multiply-adds per second over a matrix-multiply "
           "probe in the same runtime, same run and threads: "
           + ", ".join(f"{names[runtime]} {peak / 1e9:.1f} G/s"
                       for runtime, peak in data["peak_macs_per_s"].items())
           + " (TensorFlow tf.matmul 1024^3; LiteRT one FULLY_CONNECTED 256x1024x1024)."), "",
          "| comparison | runtime | A | B | A ms (p10-p90) | B ms (p10-p90) | A / B |",
          "|---|---|---|---|---|---|---|"]
    for row in data["pairs"]:
        a, b = row["a_stats"], row["b_stats"]
        md.append(f"| {row['comparison']} | {names[row['runtime']]} | {row['a']} | {row['b']} | "
                  f"{a['median_ms']:.1f} ({a['p10_ms']:.1f}-{a['p90_ms']:.1f}) | "
                  f"{b['median_ms']:.1f} ({b['p10_ms']:.1f}-{b['p90_ms']:.1f}) | "
                  f"{row['ratio']:.3f} |")
    md += ["", "| model | runtime | median ms | MACs (B) | G MACs/s | % of peak |",
           "|---|---|---|---|---|---|"]
    for row in sorted(data["models"], key=lambda r: (r["runtime"], r["model"])):
        share = row["percent_of_peak"]
        md.append(f"| {row['model']} | {names[row['runtime']]} | {row['median_ms']:.1f} | "
                  f"{row['macs'] / 1e9:.3f} | {row['macs_per_s'] / 1e9:.1f} | "
                  + ("-" if share is None else f"{share:.1f}%") + " |")
    if data["checks"]:
        md += ["", "| check | value | |", "|---|---|---|"]
        for check in data["checks"]:
            md.append(f"| {check['check']} | {check['value']:.3f} | "
                      f"{'pass' if check['passed'] else 'FAIL'} |")
    if data["skipped"]:
        md += ["", "Skipped: " + "; ".join(f"{s['comparison']} {s['runtime']} ({s['reason']})"
                                           for s in data["skipped"])]
    return md


if __name__ == "__main__":
    sys.exit(app.run(main))
