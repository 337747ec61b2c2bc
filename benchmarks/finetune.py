"""A user's real job, measured: a folder of photos -> fine-tune -> a file MediaPipe runs.

    python benchmarks/finetune.py --flowers DIR [--models lite0,lite2,lite4] [--seeds 0,1,2]
    python benchmarks/finetune.py --replot      # the tables and the figure from the JSON

TensorFlow's flower_photos (3,670 photos, 5 classes), split 80/10/10 per class with a
seeded shuffle (train: round(0.8 n), val: round(0.1 n), test: the rest; the split seed
and the counts are in the results). For each model, two protocols, each run as the
commands a user types:

- "Model Maker's protocol": `keras-effnet train --freeze_backbone --epochs 10`
  (a frozen backbone, the head only);
- "our default": `keras-effnet train --epochs 10`, nothing else (the transfer recipe).

Then `keras-effnet evaluate` of the `.keras` file on the test photos, `keras-effnet
export --target android` (uint8 + float16 with metadata; calibrated on the training
photos recorded in the model), and `keras-effnet evaluate --runtime mediapipe` of both
files. Reported per row: test accuracy in Keras and in MediaPipe, the train time
(the command's own `train_seconds`: features + fit), the command's wall time, images/s
(training images x epochs / train seconds) and the fraction of the machine's measured
float32 matmul peak the training computation reached. Model Maker's numbers are quoted
as published (it cannot be installed on this stack), not rerun.

The SE study (`--se_study`, on by default) answers which SE strategy to export a
fine-tuned SE model with: B0 (squeeze-excitation in every block) fine-tuned with the
default command from the distilled proxy of `b0_proxy.py` (B0's ImageNet weights cannot
be downloaded offline), exported uint8 with `--se keep`, `float` and `pool`, and through
quantization-aware training (`export.qat.distil_from_float` on crops of the training
photos), each scored in MediaPipe on the test photos against the Keras model.

flower_photos is not in this repository: `DIR` holds its five class folders (the data
README of the workplace names a public copy; tf.keras.utils.get_file can fetch the
original tarball where the network allows).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("flowers", None, "flower_photos: a folder with its 5 class folders")
flags.DEFINE_list("models", ["lite0", "lite2", "lite4"], "variants to fine-tune")
flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds of Lite0 (others: the first)")
flags.DEFINE_integer("split_seed", 0, "seed of the 80/10/10 split")
flags.DEFINE_integer("epochs", 10, "epochs of both protocols")
flags.DEFINE_list("protocols", ["frozen", "default"], "frozen (Model Maker's) and/or default")
flags.DEFINE_string("work", str(_bench.REPO / "build" / "finetune"), "split and runs go here")
flags.DEFINE_string("out", str(_bench.RESULTS), "results folder")
flags.DEFINE_string("name", "finetune", "results file name and README block")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated block in README.md")
flags.DEFINE_boolean("se_study", True, "also fine-tune B0 (SE blocks; from the distilled proxy "
                     "of b0_proxy.py) and export uint8 with each SE strategy and through QAT")
flags.DEFINE_integer("proxy_steps", 400, "SE study: distillation steps of the B0 proxy "
                     "(b0_proxy.py; cached)")
flags.DEFINE_integer("qat_crops", 512, "SE study: random crops of training photos for QAT")
flags.DEFINE_integer("qat_epochs", 2, "SE study: epochs of QAT over those crops")
flags.DEFINE_boolean("replot", False, "only redraw the Markdown, README block and PNG from "
                     "the results JSON already written (no training)")

# google-ai-edge/mediapipe-samples examples/customization/image_classifier.ipynb,
# "Performance benchmarks": flower_photos, 80/10/10, 10 epochs, batch 2, frozen backbone
MODEL_MAKER = {"source": "MediaPipe Model Maker, published (mediapipe-samples "
                         "examples/customization/image_classifier.ipynb, Performance "
                         "benchmarks); not rerun",
               "accuracy": {"mobilenet_v2": 0.854, "lite0": 0.913, "lite2": 0.915,
                            "lite4": 0.908}}
SUFFIXES = (".jpg", ".jpeg", ".png")


def split(flowers: pathlib.Path, root: pathlib.Path, seed: int) -> dict:
    """train/val/test class folders of symbolic links to the photos; the counts."""
    rng = np.random.default_rng(seed)
    counts = {}
    classes = sorted(p.name for p in flowers.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise SystemExit(f"{flowers} has no class folders: expected flower_photos' five")
    for name in classes:
        photos = sorted(p for p in (flowers / name).iterdir() if p.suffix.lower() in SUFFIXES)
        order = rng.permutation(len(photos))
        train, val = round(0.8 * len(photos)), round(0.1 * len(photos))
        parts = {"train": order[:train], "val": order[train:train + val],
                 "test": order[train + val:]}
        for part, picked in parts.items():
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in picked:
                link = folder / photos[i].name
                if not link.exists():
                    link.symlink_to(photos[i].resolve())
            counts.setdefault(part, {})[name] = len(picked)
    return counts


def cli(*args) -> tuple[subprocess.CompletedProcess, float]:
    command = [str(pathlib.Path(sys.executable).parent / "keras-effnet"), *args]
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result, seconds


def evaluate_json(model: str, data: pathlib.Path, runtime: str = "litert") -> dict:
    result, _ = cli("evaluate", "--model", model, "--data", str(data), "--runtime", runtime,
                    "--json")
    return json.loads(result.stdout.strip().splitlines()[-1])


def matmul_peak() -> float:
    """GFLOP/s of a large float32 matmul in TensorFlow on every core: the machine's
    practical peak, against which the training computation is measured."""
    import tensorflow as tf

    a = tf.random.normal((2048, 2048))
    b = tf.random.normal((2048, 2048))
    (a @ b).numpy()
    best = 0.0
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(4):
            c = a @ b
        c.numpy()
        best = max(best, 4 * 2 * 2048**3 / (time.perf_counter() - began) / 1e9)
    return best


def training_flops(summary: dict, variant: str) -> float:
    """FLOPs of the training computation a run did: the trunk's forward pass once per view
    of each training photo (and per validation photo), the top's forward and backward
    (3x its forward) for every training image of every epoch. From the profiler's MACs."""
    import keras_effnet as ke
    from keras_effnet.training import classifier
    from keras_effnet.training.transfer import split_at

    size, train_size = summary["image_size"], summary["train_size"]
    model = classifier(variant, summary["classes"], weights=None, image_size=size)
    trunk, top = split_at(model, summary["trunk_end"])
    trunk_macs, top_macs = ke.profile(trunk).macs, ke.profile(top).macs
    scale = (train_size / size) ** 2
    images = summary["train_images"]
    macs = (summary["views"] * images * trunk_macs * scale + summary["val_images"] * trunk_macs
            + summary["epochs"] * (images // summary["global_batch"]) * summary["global_batch"]
            * 3 * top_macs * scale)
    return 2 * macs


def train(variant: str, seed: int, data: pathlib.Path, out: pathlib.Path,
          *extra: str) -> tuple[dict, str, float]:
    """`keras-effnet train` on the split's train/val folders into `out` (a rerun starts
    over): its summary, the command as written in the results, and its wall seconds."""
    args = ["train", "--model", variant, *extra, "--data", str(data / "train"), "--val_data",
            str(data / "val"), "--out", str(out), "--epochs", str(FLAGS.epochs),
            "--seed", str(seed)]
    if out.exists():
        import shutil

        shutil.rmtree(out)
    _, wall = cli(*args)
    command = "keras-effnet " + " ".join(
        pathlib.Path(a).name if a.startswith("/") else a for a in args)
    return json.loads((out / "summary.json").read_text()), command, wall


def run_row(variant: str, protocol: str, seed: int, data: pathlib.Path, work: pathlib.Path,
            peak: float) -> dict:
    out = work / f"{variant}_{protocol}_s{seed}"
    summary, command, wall = train(variant, seed, data, out,
                                   *(["--freeze_backbone"] if protocol == "frozen" else []))
    row = {"model": variant, "protocol": protocol, "seed": seed, "command": command,
           "train_seconds": summary["train_seconds"], "command_seconds": round(wall, 1),
           "images_per_second": summary["images_per_second"],
           "feature_seconds": summary["feature_seconds"], "fit_seconds": summary["fit_seconds"],
           "views": summary["views"], "train_size": summary["train_size"],
           "best_epoch": summary["best_epoch"], "val_accuracy": summary["final_eval"]["accuracy"]}
    flops = training_flops(summary, variant)
    row["gflops_per_second"] = round(flops / summary["train_seconds"] / 1e9, 1)
    row["fraction_of_peak"] = round(flops / summary["train_seconds"] / 1e9 / peak, 3)
    row["keras"] = evaluate_json(str(out / "model.keras"), data / "test")["accuracy"]
    exported = out / "android"
    cli("export", "--model", str(out / "model.keras"), "--target", "android", "--out",
        str(exported), "--runs", "0", "--overwrite")
    for mode in ("uint8", "float16"):
        path = next(exported.glob(f"*_{mode}.tflite"))
        row[f"mediapipe_{mode}"] = evaluate_json(str(path), data / "test", "mediapipe")[
            "accuracy"]
    print(json.dumps(row), flush=True)
    return row


SE_STRATEGIES = ("keep", "float", "pool")  # what the uint8 export offers for SE blocks


def run_se_study(data: pathlib.Path, work: pathlib.Path, seed: int) -> dict:
    """B0, whose SE blocks are what integer files lose accuracy on, fine-tuned on the
    training photos with the default command (from the distilled proxy: B0's ImageNet
    weights cannot be had offline), then exported uint8 with each SE strategy
    (`export --se`) and through QAT, each scored on the test photos in MediaPipe."""
    import b0_proxy

    b0_proxy.load_or_distil(FLAGS.proxy_steps)
    out = work / f"b0proxy_default_s{seed}"
    summary, command, wall = train("b0", seed, data, out, "--weights",
                                   str(b0_proxy.cache_path()))
    model_file = out / "model.keras"
    study = {"model": "b0 (distilled proxy)", "seed": seed, "recipe": summary["recipe"],
             "command": command, "train_seconds": summary["train_seconds"],
             "command_seconds": round(wall, 1),
             "keras": evaluate_json(str(model_file), data / "test")["accuracy"], "files": []}
    for se in SE_STRATEGIES:
        folder = out / f"uint8_se_{se}"
        _, seconds = cli("export", "--model", str(model_file), "--formats", "uint8", "--se", se,
                         "--out", str(folder), "--runs", "0", "--overwrite")
        path = next(folder.glob("*.tflite"))
        score = evaluate_json(str(path), data / "test", "mediapipe")["accuracy"]
        study["files"].append({"artifact": f"uint8, --se {se}",
                               "export_seconds": round(seconds, 1), "mediapipe": score})
    study["files"].append(_qat_file(model_file, data, out))
    print(json.dumps(study), flush=True)
    return study


def _qat_file(model_file: pathlib.Path, data: pathlib.Path, out: pathlib.Path) -> dict:
    """QAT of the fine-tuned model: ranges calibrated on training photos, then fitted to
    the float model's probabilities on random crops of them (export.qat.distil_from_float),
    written uint8 and scored in MediaPipe."""
    import random

    from keras_effnet.export import calibration_views
    from keras_effnet.export.qat import distil_from_float, qat_to_tflite, quantize_aware
    from keras_effnet.saving import load_model
    from keras_effnet.training import scan_folder

    began = time.perf_counter()
    model = load_model(str(model_file))
    size = model.input_shape[1]
    photos = list(scan_folder(data / "train").files)
    random.Random(0).shuffle(photos)
    qat = quantize_aware(model, calibration=calibration_views(photos[:200], size, 200, seed=1))
    crops = calibration_views(photos[:FLAGS.qat_crops], size, FLAGS.qat_crops, seed=7)
    distil_from_float(qat, model, crops, epochs=FLAGS.qat_epochs)
    path = qat_to_tflite(qat, out / "qat" / "b0_qat_uint8.tflite", "uint8", overwrite=True,
                         labels=list(model.class_names))
    return {"artifact": f"uint8, QAT ({FLAGS.qat_epochs} epochs over {FLAGS.qat_crops} crops)",
            "export_seconds": round(time.perf_counter() - began, 1),
            "mediapipe": evaluate_json(str(path), data / "test", "mediapipe")["accuracy"]}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _aggregate(rows: list[dict], key: str, digits: int = 1, percent: bool = True) -> str:
    """The mean over the rows' seeds, with (min-max) when there are several."""
    values = [r[key] for r in rows]
    mean = statistics.mean(values)
    text = _pct(mean) if percent else f"{mean:.{digits}f}"
    if len(values) > 1:
        low, high = min(values), max(values)
        text += f" ({_pct(low)}-{_pct(high)})" if percent else \
            f" ({low:.{digits}f}-{high:.{digits}f})"
    return text


def markdown(data: dict) -> list[str]:
    published = data["model_maker"]["accuracy"]
    split_ = data["split"]
    lines = ["# Fine-tuning on flower_photos", "",
             (f"flower_photos, {split_['test_images']} test photos (split seed "
              f"{split_['seed']}: {split_['train_images']} train / {split_['val_images']} val / "
              f"{split_['test_images']} test); {data['cpu']['model']}, "
              f"{data['machine']['cpus']} cores, float32 matmul peak "
              f"{data['peak_gflops']:.0f} GFLOP/s. Model Maker: published, not rerun."), "",
             ("| model | protocol | seeds | test top-1 Keras | MediaPipe uint8 | MediaPipe "
              "float16 | Model Maker (published) | train s | command s | images/s | of peak |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict = {}
    for row in data["rows"]:
        groups.setdefault((row["model"], row["protocol"]), []).append(row)
    for (variant, protocol), rows in groups.items():
        def agg(key, digits=1, percent=True, rows=rows):
            return _aggregate(rows, key, digits, percent)

        name = "Model Maker's (frozen, head only)" if protocol == "frozen" else "our default"
        mm = _pct(published.get(variant)) if protocol == "frozen" else ""
        lines.append(
            f"| {variant} | {name} | {len(rows)} | {agg('keras')} | {agg('mediapipe_uint8')} | "
            f"{agg('mediapipe_float16')} | {mm} | {agg('train_seconds', 0, False)} | "
            f"{agg('command_seconds', 0, False)} | {agg('images_per_second', 0, False)} | "
            f"{agg('fraction_of_peak', 2, False)} |")
    for variant, reason in data["unavailable"].items():
        lines.append(f"| {variant} | - | 0 | {reason} | | | {_pct(published.get(variant))} "
                     "| | | | |")
    lines += _se_markdown(data.get("se_study"))
    lines += ["", "Each row: the commands of the benchmark (`" + data["rows"][0]["command"]
              + "`, then `keras-effnet evaluate` on the test photos, `export --target "
              "android`, `evaluate --runtime mediapipe`). Train s: features + fit as the "
              "command reports them; command s: the whole process. Several seeds: mean "
              "(min-max)."]
    return lines


def _se_markdown(study: dict | None) -> list[str]:
    if not study:
        return []
    keras_top1 = study["keras"]
    lines = ["", (f"SE blocks on real photos: B0 fine-tuned with the default command from the "
                  f"distilled proxy (`benchmarks/b0_proxy.py`; B0's ImageNet weights cannot be "
                  f"downloaded offline), seed {study['seed']}, test top-1 in Keras "
                  f"{_pct(keras_top1)}; each uint8 file in MediaPipe on the same test photos:"),
             "", "| B0 uint8 file | MediaPipe | - Keras (points) | export s |",
             "|---|---:|---:|---:|"]
    for row in study["files"]:
        gap = 100 * (row["mediapipe"] - keras_top1)
        lines.append(f"| {row['artifact']} | {_pct(row['mediapipe'])} | {gap:+.1f} | "
                     f"{row['export_seconds']:.0f} |")
    return lines


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for row in data["rows"]:
        groups.setdefault((row["model"], row["protocol"]), []).append(row)
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = []
    for x, ((variant, protocol), rows) in enumerate(groups.items()):
        for offset, key, colour, name in ((-0.25, "keras", "#4c72b0", "Keras"),
                                          (0.0, "mediapipe_uint8", "#55a868",
                                           "MediaPipe, uint8 file"),
                                          (0.25, "mediapipe_float16", "#8172b2",
                                           "MediaPipe, float16 file")):
            values = [100 * r[key] for r in rows]
            ax.bar(x + offset, statistics.mean(values), 0.25, color=colour,
                   label=name if x == 0 else None)
            if len(values) > 1:
                ax.plot([x + offset] * 2, [min(values), max(values)], color="black", lw=1)
        published = data["model_maker"]["accuracy"].get(variant)
        if protocol == "frozen" and published:
            ax.plot([x - 0.4, x + 0.4], [100 * published] * 2, color="#c44e52", lw=2,
                    label="Model Maker (published)" if "Model Maker (published)" not in
                    ax.get_legend_handles_labels()[1] else None)
        labels.append(f"{variant}\n{'frozen' if protocol == 'frozen' else 'default'}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(80, 100)
    ax.set_ylabel("test top-1 (%); bars: mean, lines: min-max")
    ax.set_title(f"flower_photos, {data['split']['test_images']} test photos")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv):
    del argv
    if FLAGS.replot:
        data = json.loads((pathlib.Path(FLAGS.out) / f"{FLAGS.name}.json").read_text())
        _bench.publish(FLAGS.name, data, markdown(data), FLAGS.out, FLAGS.update_readme)
        plot(data, pathlib.Path(FLAGS.out) / f"{FLAGS.name}.png")
        return
    if not FLAGS.flowers or not pathlib.Path(FLAGS.flowers).is_dir():
        raise SystemExit("--flowers DIR: flower_photos' five class folders are needed")
    work = pathlib.Path(FLAGS.work)
    data_dir = work / f"split_s{FLAGS.split_seed}"
    counts = split(pathlib.Path(FLAGS.flowers), data_dir, FLAGS.split_seed)
    peak = matmul_peak()
    print(f"float32 matmul peak {peak:.0f} GFLOP/s; split {counts}", flush=True)
    rows, unavailable = [], {}
    for variant in FLAGS.models:
        seeds = [int(s) for s in FLAGS.seeds] if variant == "lite0" else [int(FLAGS.seeds[0])]
        for protocol in FLAGS.protocols:
            for seed in seeds:
                try:
                    rows.append(run_row(variant, protocol, seed, data_dir, work, peak))
                except RuntimeError as exc:
                    if "Hugging Face" in str(exc):  # weights only the Hub has, offline
                        unavailable[variant] = ("ImageNet weights not downloadable on this "
                                                "machine (Hugging Face Hub unreachable)")
                        break
                    raise
            if variant in unavailable:
                break
    se_study = run_se_study(data_dir, work, int(FLAGS.seeds[0])) if FLAGS.se_study else None
    data = {"machine": _bench.machine(), "cpu": _bench.cpu_info(), "peak_gflops": peak,
            "split": {"seed": FLAGS.split_seed, "counts": counts,
                      **{f"{part}_images": sum(c.values()) for part, c in counts.items()}},
            "epochs": FLAGS.epochs, "model_maker": MODEL_MAKER, "rows": rows,
            "unavailable": unavailable, "se_study": se_study}
    md = markdown(data)
    _bench.publish(FLAGS.name, data, md, FLAGS.out, FLAGS.update_readme)
    plot(data, pathlib.Path(FLAGS.out) / f"{FLAGS.name}.png")


if __name__ == "__main__":
    app.run(main)
