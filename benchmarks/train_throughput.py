"""Training throughput: ours against keras.applications' same variant, in one run.

    python benchmarks/train_throughput.py [--variant b0] [--image_size 224] [--batch 16]
        [--runs 10] [--configs float32,float32+jit,mixed_bfloat16,mixed_bfloat16+jit]

For each configuration (dtype policy, with or without XLA) both models are
built under that policy, compiled with the same optimizer (the paper's
RMSprop) and loss, and trained on the same fixed batch with
`train_on_batch` (a compiled step: eager off). Steps of ours and of the peer
alternate, and the ratio is the median of the per-pair step-time ratios
(peer / ours, so above 1.0 means ours trains more images per second).
Mixed precision runs where the hardware has it: `mixed_float16` on a GPU,
`mixed_bfloat16` on a TPU, a GPU, or a CPU with bfloat16 instructions; a
configuration the machine lacks is reported as skipped. On the JAX or
PyTorch backend (KERAS_BACKEND) the "+jit" configurations are the only
compiled ones. Writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "b0", "B variant (keras.applications has the same one)")
flags.DEFINE_integer("image_size", 224, "training resolution")
flags.DEFINE_integer("batch", 16, "images per step")
flags.DEFINE_integer("runs", 10, "timed steps per model and configuration")
flags.DEFINE_list("configs", ["float32", "float32+jit", "mixed_bfloat16", "mixed_bfloat16+jit",
                              "mixed_float16", "mixed_float16+jit"],
                  "dtype policy, '+jit' for XLA")
flags.DEFINE_string("out", str(_bench.RESULTS), "output folder")
flags.DEFINE_string("name", "train_throughput", "results file name (per machine, e.g. _gpu)")
flags.DEFINE_boolean("update_readme", True, "rewrite the README block named --name")


def _accelerator() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform  # cpu / gpu / tpu
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def _cpu_has_bfloat16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags_line = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags_line.split() for flag in ("avx512_bf16", "amx_bf16"))


def _unsupported(config: str, accelerator: str, backend: str) -> str | None:
    policy, _, jit = config.partition("+")
    if policy not in ("float32", "mixed_float16", "mixed_bfloat16") or jit not in ("", "jit"):
        return f"unknown configuration {config!r}: expected a policy and optionally '+jit'"
    if backend != "tensorflow" and not jit:
        return f"the {backend} backend always compiles: see {policy}+jit"
    if policy == "mixed_float16" and accelerator != "gpu":
        return f"float16 arithmetic is emulated on {accelerator.upper()}: GPUs only"
    if policy == "mixed_bfloat16" and accelerator == "cpu" and not _cpu_has_bfloat16():
        return "this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16)"
    return None


def _compiled(model, jit: bool):
    from keras_effnet import training

    model.compile(optimizer=training.rmsprop(0.016), loss="categorical_crossentropy",
                  jit_compile=jit)
    return model


def _measure(config: str, variant, size: int, batch: int, runs: int) -> dict:
    import keras

    import keras_effnet as ke

    policy, _, jit = config.partition("+")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        ours = ke.build(variant.name, weights=None, input_shape=(size, size, 3))
        peer = _bench.keras_applications(variant.constructor_name, input_shape=(size, size, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 1000, batch), 1000)
    compile_s = {}
    for label, model in (("ours", ours), ("peer", peer)):
        _compiled(model, bool(jit))
        start = time.perf_counter()
        model.train_on_batch(x, y)  # trace (and XLA-compile) the step
        compile_s[label] = time.perf_counter() - start
    times_ours, times_peer, ratio = _bench.paired(
        lambda: ours.train_on_batch(x, y), lambda: peer.train_on_batch(x, y), runs, warmup=1)
    losses = [float(np.asarray(m.train_on_batch(x, y))) for m in (ours, peer)]
    return {
        "config": config, "policy": policy, "jit_compile": bool(jit),
        "ours": {**_bench.summary(times_ours), "images_per_s": batch / np.median(times_ours),
                 "first_step_s": compile_s["ours"], "loss": losses[0]},
        "peer": {**_bench.summary(times_peer), "images_per_s": batch / np.median(times_peer),
                 "first_step_s": compile_s["peer"], "loss": losses[1]},
        # paired returns median(ours / peer) step time; images/s is its inverse
        "ours_over_peer_images_per_s": 1.0 / ratio,
        "finite": bool(np.isfinite(losses).all()),
    }


def _markdown(data: dict) -> list[str]:
    lines = [
        "# Training throughput: ours vs keras.applications",
        "",
        (f"Generated by `benchmarks/train_throughput.py`: {data['variant']}, "
        f"{data['image_size']} px, batch {data['batch']}, Keras {data['keras']} on "
        f"{data['backend']} ({data['accelerator']}, {data['machine']['cpus']} CPUs); "
        f"`train_on_batch` with the paper's RMSprop, {data['runs']} paired steps per "
        "configuration after one warm-up. Ratio: median over pairs of peer step time / ours "
        "(above 1.0: ours trains faster)."),
        "",
        ("| configuration | ours images/s | keras.applications images/s | ours / peer | "
        "ours ms (p10-p90) | peer ms (p10-p90) | first step s (ours / peer) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["results"]:
        o, p = row["ours"], row["peer"]
        lines.append(
            f"| {row['config']} | {o['images_per_s']:.1f} | {p['images_per_s']:.1f} | "
            f"{row['ours_over_peer_images_per_s']:.3f} | {o['median_ms']:.0f} "
            f"({_bench.spread(o, 0)}) | {p['median_ms']:.0f} "
            f"({_bench.spread(p, 0)}) | {o['first_step_s']:.1f} / "
            f"{p['first_step_s']:.1f} |")
    for config, reason in data["skipped"].items():
        lines.append(f"\nSkipped {config}: {reason}.")
    return lines


def main(argv):
    del argv
    import keras

    import keras_effnet as ke

    variant = ke.get_variant(FLAGS.variant)
    backend, accelerator = keras.backend.backend(), _accelerator()
    data = {"variant": variant.constructor_name, "image_size": FLAGS.image_size,
            "batch": FLAGS.batch, "runs": FLAGS.runs, "keras": keras.__version__,
            "backend": backend, "accelerator": accelerator, "machine": _bench.machine(),
            "results": [], "skipped": {}}
    for config in FLAGS.configs:
        reason = _unsupported(config, accelerator, backend)
        if reason:
            print(f"skipped {config}: {reason}")
            data["skipped"][config] = reason
            continue
        try:
            row = _measure(config, variant, FLAGS.image_size, FLAGS.batch, FLAGS.runs)
        except _bench.PeerUnavailable as exc:
            print(f"skipped {config}: {exc}")
            data["skipped"][config] = str(exc)
            continue
        print(f"{config}: ours {row['ours']['images_per_s']:.1f} images/s, "
              f"peer {row['peer']['images_per_s']:.1f}, "
              f"ratio {row['ours_over_peer_images_per_s']:.3f}", flush=True)
        data["results"].append(row)
    _bench.publish(FLAGS.name, data, _markdown(data), FLAGS.out, FLAGS.update_readme)
    return 0 if data["results"] else 1


if __name__ == "__main__":
    app.run(main)
