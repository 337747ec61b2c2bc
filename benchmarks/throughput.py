"""Batched inference throughput on every core, and peak memory, B0-B7 against
keras.applications.

    python benchmarks/throughput.py [--variants b0,b1,...,b7] [--runs 5] [--peer]

Throughput: per variant, one process builds ours and the keras.applications
peer and times batches of the two interleaved (_bench.paired: A, B, then B, A,
...), at the variant's resolution and the same batch; the ratio is the median
of the per-pair ratios, ours / peer images per second. Memory: each (model,
variant) is built and run once more in a process of its own, so that its peak
resident memory is its own: the figure after building and the figure after
one inference batch, each also as the increase over the process after
importing Keras and its backend. Big variants use small batches and fewer runs
(B7: 2 images x 3 pairs). With KERAS_BACKEND=jax the models run as jax.jit
of their stateless call (use --name throughput_jax). Writes
benchmarks/results/<name>.{json,md} and the README block <name>.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", [f"b{i}" for i in range(8)], "B variants")
flags.DEFINE_integer("runs", 5, "timed batches per model, interleaved with the peer's "
                     "(B6-B7: 3)")
flags.DEFINE_boolean("peer", True, "also run keras.applications' same variant")
flags.DEFINE_string("child", None, "internal: measure one model's memory in this process")
flags.DEFINE_string("pair", None, "internal: time one variant's models in this process")
flags.DEFINE_string("out", str(_bench.RESULTS), "output folder")
flags.DEFINE_string("name", "throughput", "results file and README block name (e.g. "
                    "throughput_jax for KERAS_BACKEND=jax)")
flags.DEFINE_boolean("update_readme", True, "rewrite the README block named --name")

# images per batch, by variant: large enough to fill the cores, small enough for 24 GB
BATCH = {"b0": 32, "b1": 32, "b2": 16, "b3": 16, "b4": 8, "b5": 4, "b6": 4, "b7": 2}


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _batch_runner(model, name: str):
    """A compiled batched call of `model` on random images at the variant's size:
    a tf.function on TensorFlow, jax.jit of the stateless call on JAX."""
    import keras
    import numpy as np

    import keras_effnet as ke

    size = ke.get_variant(name).resolution
    images = np.random.default_rng(0).uniform(
        0, 255, (BATCH.get(name, 8), size, size, 3)).astype("float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda x: model(x, training=False))
        images = tf.constant(images)
        run = lambda: function(images).numpy()
    elif backend == "jax":
        import jax

        function = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        run = lambda: function(trainable, frozen, images).block_until_ready()
    else:
        run = lambda: model.predict_on_batch(images)
    run()  # trace and compile
    return run


def _memory(key: str) -> dict:
    """Runs in a child process (key `ours:b3` or `keras:b3`): build, one inference
    batch, peak RSS of each."""
    import keras_effnet as ke

    owner, variant = key.split(":")
    base = _rss_mb()
    start = time.perf_counter()
    model = _bench.build_model(_model_key(owner, ke.get_variant(variant)))
    build_s = time.perf_counter() - start
    built = _rss_mb()
    _batch_runner(model, variant)()
    return {"key": key, "build_s": build_s, "import_rss_mb": base, "build_rss_mb": built,
            "inference_rss_mb": _rss_mb(), "params": model.count_params()}


def _model_key(owner: str, variant) -> str:
    """_bench.build_model's key: ours by short name, the peer by its class name."""
    return f"ours:{variant.name}" if owner == "ours" else f"keras:{variant.constructor_name}"


def _throughput(name: str, runs: int, peer: bool) -> dict:
    """Runs in a child process: ours and the peer timed interleaved."""
    import numpy as np

    import keras_effnet as ke

    variant = ke.get_variant(name)
    batch = BATCH.get(name, 8)
    ours = _batch_runner(_bench.build_model(_model_key("ours", variant)), name)
    out = {"variant": variant.constructor_name, "resolution": variant.resolution,
           "batch": batch, "runs": runs}
    try:
        theirs = _batch_runner(_bench.build_model(_model_key("keras", variant)),
                               name) if peer else None
    except _bench.PeerUnavailable as exc:
        theirs, out["peer_skipped"] = None, str(exc)
    if theirs is None:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            ours()
            times.append(time.perf_counter() - start)
        return {**out, "ours": _rate(times, batch)}
    times_peer, times_ours, ratio = _bench.paired(theirs, ours, runs, warmup=1)
    return {**out, "ours": _rate(times_ours, batch), "keras": _rate(times_peer, batch),
            "ratio": ratio, "ratio_spread": [float(np.percentile(
                np.asarray(times_peer) / np.asarray(times_ours), q)) for q in (10, 90)]}


def _rate(times, batch: int) -> dict:
    import numpy as np

    return {"images_per_s": batch / float(np.median(times)), **_bench.summary(times)}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args],
                         capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise _bench.PeerUnavailable(f"{' '.join(args)} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(_memory(FLAGS.child)))
        return 0
    if FLAGS.pair:
        runs = 3 if FLAGS.pair in ("b6", "b7") else FLAGS.runs
        print(json.dumps(_throughput(FLAGS.pair, runs, FLAGS.peer)))
        return 0
    import keras_effnet as ke

    rows, skipped = [], []
    for name in FLAGS.variants:
        variant = ke.get_variant(name)
        if variant.name not in BATCH:
            raise app.UsageError(f"--variants takes b0-b7, got {name!r}")
        try:
            row = _child(f"--pair={variant.name}", f"--runs={FLAGS.runs}",
                         "--peer" if FLAGS.peer else "--nopeer")
        except _bench.PeerUnavailable as exc:
            print(f"  skipped: {exc}")
            skipped.append({"variant": variant.constructor_name, "model": "ours",
                            "reason": str(exc)})
            continue
        if "peer_skipped" in row:
            skipped.append({"variant": variant.constructor_name, "model": "keras",
                            "reason": row["peer_skipped"]})
        row["memory"] = {}
        for owner in ("ours", "keras") if "keras" in row else ("ours",):
            try:
                row["memory"][owner] = _child(f"--child={owner}:{variant.name}")
            except _bench.PeerUnavailable as exc:
                print(f"  no memory figures: {exc}")
                skipped.append({"variant": variant.constructor_name,
                                "model": f"{owner} memory", "reason": str(exc)})
        rows.append(row)
        line = (f"{variant.constructor_name}: {row['ours']['images_per_s']:.1f} images/s "
                f"(batch {row['batch']}, {row['resolution']} px)")
        if "keras" in row:
            line += (f"; keras.applications {row['keras']['images_per_s']:.1f} images/s, "
                     f"ratio {row['ratio']:.3f}")
        if "ours" in row["memory"]:
            line += f"; peak RSS {row['memory']['ours']['inference_rss_mb']:.0f} MB"
        print(line, flush=True)
    import keras

    data = {**_bench.machine(), "backend": keras.backend.backend(), "keras": keras.__version__,
            "rows": rows, "skipped": skipped}
    _bench.publish(FLAGS.name, data, _markdown(data), FLAGS.out, FLAGS.update_readme)
    return 0


def _markdown(data) -> list[str]:
    runtime = {"tensorflow": "compiled tf.function, TensorFlow runtime",
               "jax": "jax.jit of the stateless call, XLA on the CPU"}.get(
        data.get("backend", "tensorflow"), "predict_on_batch")
    md = ["# Throughput and memory" + ("" if data.get("backend", "tensorflow") == "tensorflow"
                                       else f" (Keras on {data['backend']})"), "",
          (f"Generated by `benchmarks/throughput.py`: batched inference on all "
           f"{data['cpus']} CPUs ({runtime}, Keras {data.get('keras')}). Throughput: ours "
           "and keras.applications in one process, batches interleaved; ours / peer is the "
           "median of the per-pair ratios (10-90% spread). Peak RSS: each model in a process "
           "of its own, the maximum resident memory after building and after one inference "
           "batch; + is the increase over importing Keras and its backend."), "",
          ("| model | px | batch | pairs | ours images/s | keras.applications images/s "
           "| ours / peer (p10-p90) | build peak MB (+) | inference peak MB (+) "
           "| peer inference peak MB |"),
          "|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        ours, peer = row["ours"], row.get("keras")
        cells = [row["variant"], str(row["resolution"]), str(row["batch"]), str(row["runs"]),
                 f"{ours['images_per_s']:.1f}"]
        if peer:
            low, high = row["ratio_spread"]
            cells += [f"{peer['images_per_s']:.1f}",
                      f"{row['ratio']:.3f} ({low:.3f}-{high:.3f})"]
        else:
            cells += ["-", "-"]
        memory = row["memory"].get("ours")
        for stage in ("build", "inference"):
            cells.append(f"{memory[stage + '_rss_mb']:.0f} (+"
                         f"{memory[stage + '_rss_mb'] - memory['import_rss_mb']:.0f})"
                         if memory else "-")
        peer_memory = row["memory"].get("keras")
        cells.append(f"{peer_memory['inference_rss_mb']:.0f}" if peer_memory else "-")
        md.append("| " + " | ".join(cells) + " |")
    if data["skipped"]:
        md += ["", "Skipped: " + "; ".join(f"{s['variant']} {s['model']} ({s['reason']})"
                                           for s in data["skipped"])]
    return md


if __name__ == "__main__":
    sys.exit(app.run(main))
