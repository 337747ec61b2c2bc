"""Batched inference throughput on every core, and peak memory, B0-B7 against
keras.applications.

    python benchmarks/throughput.py [--variants b0,b1,...,b7] [--runs 3] [--peer]

Each (model, variant) runs in its own process so that its peak resident memory
is its own: the figure after building the model and the figure after
inference, each also as the increase over the process after importing
TensorFlow and Keras. Ours and the keras.applications peer of the same variant
run back to back, at the variant's resolution and the same batch; the ratio is
ours / peer images per second. Big variants use small batches and fewer runs
(B7: 2 images x 2 runs). Writes benchmarks/results/throughput.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", [f"b{i}" for i in range(8)], "B variants")
flags.DEFINE_integer("runs", 3, "timed batches per model (B6-B7: 2)")
flags.DEFINE_boolean("peer", True, "also run keras.applications' same variant")
flags.DEFINE_string("child", None, "internal: measure one model in this process")
flags.DEFINE_string("out", str(_bench.RESULTS), "output folder")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated table in README.md")

# images per batch, by variant: large enough to fill the cores, small enough for 24 GB
BATCH = {"b0": 32, "b1": 32, "b2": 16, "b3": 16, "b4": 8, "b5": 4, "b6": 4, "b7": 2}


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure(key: str, runs: int) -> dict:
    """Runs in the child process: build, then time batched inference."""
    import time

    import numpy as np
    import tensorflow as tf

    import keras_effnet as ke

    base = _rss_mb()
    owner, name = key.split(":")
    variant = ke.get_variant(name)
    start = time.perf_counter()
    if owner == "ours":
        model = ke.build(name, weights=None)
    else:
        model = _bench.keras_applications(variant.constructor_name)
    build_s = time.perf_counter() - start
    built = _rss_mb()
    batch = BATCH.get(name, 8)
    size = variant.resolution
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)),
                         tf.float32)
    function = tf.function(lambda x: model(x, training=False))
    function(images).numpy()  # trace and warm up
    start = time.perf_counter()
    for _ in range(runs):
        function(images).numpy()
    seconds = time.perf_counter() - start
    return {"key": key, "variant": variant.constructor_name, "resolution": size,
            "batch": batch, "runs": runs, "images_per_s": batch * runs / seconds,
            "build_s": build_s, "import_rss_mb": base, "build_rss_mb": built,
            "inference_rss_mb": _rss_mb(), "params": model.count_params()}


def _child(key: str, runs: int) -> dict:
    out = subprocess.run([sys.executable, __file__, f"--child={key}", f"--runs={runs}"],
                         capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise _bench.PeerUnavailable(f"{key} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(_measure(FLAGS.child, FLAGS.runs)))
        return 0
    import keras_effnet as ke

    rows, skipped = [], []
    for name in FLAGS.variants:
        variant = ke.get_variant(name)
        if variant.name not in BATCH:
            raise app.UsageError(f"--variants takes b0-b7, got {name!r}")
        runs = 2 if variant.name in ("b6", "b7") else FLAGS.runs
        row = {"variant": variant.constructor_name}
        for owner in ("ours", "keras") if FLAGS.peer else ("ours",):
            try:
                row[owner] = _child(f"{owner}:{variant.name}", runs)
            except _bench.PeerUnavailable as exc:
                print(f"  skipped: {exc}")
                skipped.append({"variant": variant.constructor_name, "model": owner,
                                "reason": str(exc)})
        if "ours" not in row:
            continue
        if "keras" in row:
            row["ratio"] = row["ours"]["images_per_s"] / row["keras"]["images_per_s"]
        rows.append(row)
        ours = row["ours"]
        print(f"{variant.constructor_name}: {ours['images_per_s']:.1f} images/s "
              f"(batch {ours['batch']}, {ours['resolution']} px), peak RSS "
              f"{ours['inference_rss_mb']:.0f} MB"
              + (f"; keras.applications {row['keras']['images_per_s']:.1f} images/s, ratio "
                 f"{row['ratio']:.3f}" if "ratio" in row else ""))
    data = {**_bench.machine(), "rows": rows, "skipped": skipped}
    _bench.publish("throughput", data, _markdown(data), FLAGS.out, FLAGS.update_readme)
    return 0


def _markdown(data) -> list[str]:
    md = ["# Throughput and memory", "",
          (f"Generated by `benchmarks/throughput.py`: batched inference on all "
           f"{data['cpus']} CPUs (compiled tf.function, TensorFlow runtime), each model in its "
           "own process. Peak RSS: the process' maximum resident memory after building and "
           "after inference; + is the increase over importing TensorFlow and Keras."), "",
          ("| model | px | batch | ours images/s | keras.applications images/s | ours / peer "
           "| build peak MB (+) | inference peak MB (+) | peer inference peak MB |"),
          "|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        ours, peer = row["ours"], row.get("keras")
        md.append(
            f"| {row['variant']} | {ours['resolution']} | {ours['batch']} | "
            f"{ours['images_per_s']:.1f} | {peer['images_per_s']:.1f} | {row['ratio']:.3f} | "
            if peer else
            f"| {row['variant']} | {ours['resolution']} | {ours['batch']} | "
            f"{ours['images_per_s']:.1f} | - | - | ")
        md[-1] += (f"{ours['build_rss_mb']:.0f} (+{ours['build_rss_mb'] - ours['import_rss_mb']:.0f})"
                   f" | {ours['inference_rss_mb']:.0f} "
                   f"(+{ours['inference_rss_mb'] - ours['import_rss_mb']:.0f}) | "
                   + (f"{peer['inference_rss_mb']:.0f} |" if peer else "- |"))
    if data["skipped"]:
        md += ["", "Skipped: " + "; ".join(f"{s['variant']} {s['model']} ({s['reason']})"
                                           for s in data["skipped"])]
    return md


if __name__ == "__main__":
    sys.exit(app.run(main))
