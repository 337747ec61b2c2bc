"""The artifacts in the runtimes users ship into, measured in one run.

    python benchmarks/deploy.py [--images DIR] [--out DIR]

For each model, each `.tflite` is exported with metadata and run unmodified by
MediaPipe Tasks' ImageClassifier (Android's task runtime) and LiteRT's CompiledModel
API on the labelled photos, fed the centre-cropped pixels Keras gets. Reported per
artifact: Keras' top-1, our LiteRT runner's (ONNX Runtime's for the .onnx file, with its
logit SQNR), MediaPipe's (with its agreement with Keras
and the share of top-1 names equal to the class name of the index), CompiledModel's,
and whether the file is Android-ready. Then the SavedModel's `serving_bytes` signature
on the photo files themselves (encoded JPEGs) against `load_image` + Keras.

Models: Lite0 with its real ImageNet weights; B0 as the proxy distilled from Lite0
(benchmarks/b0_proxy.py: B0's ImageNet weights cannot be downloaded here), also
through quantization-aware training (calibrated, then fitted to the float model's
outputs on photo crops; `--qat_epochs`); and a
3-class Lite0 fine-tuned on crops of scikit-image photos (head only), named by its
user's classes, evaluated on held-out crops.
Writes deploy.json and deploy.md, and the README's `deploy` block.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FLAGS = flags.FLAGS
flags.DEFINE_string("images", str(SHARED / "imagenet-sample"), "labelled ImageNet photos")
flags.DEFINE_list("models", ["lite0", "b0", "finetuned"], "lite0, b0 (distilled proxy), "
                  "finetuned (3-class Lite0)")
flags.DEFINE_string("out", str(REPO / "benchmarks" / "results"), "output folder")
flags.DEFINE_string("name", "deploy", "results file name")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated block in README.md")
flags.DEFINE_integer("qat_epochs", 8, "B0's quantization-aware fine-tune: epochs over the "
                     "distillation crops (0 skips the QAT row)")
flags.DEFINE_integer("qat_crops", 256, "B0's QAT fine-tune: random crops of the photos "
                     "(never the evaluation set), fitted to the float model's outputs")

FORMATS = {"lite0": ["float32", "float16", "dynamic", "int8", "uint8", "edgetpu", "onnx"],
           "b0": ["float32", "uint8"], "finetuned": ["uint8", "float16"]}
USER_CLASSES = {"cat": "chelsea", "espresso_cup": "coffee", "rocket": "rocket"}


def _finetuned(size: int):
    """Lite0 with a 3-class head fitted on random crops of scikit-image photos; returns
    (model, held-out images, their labels)."""
    import keras
    import skimage.data

    from keras_effnet import training
    from keras_effnet.export import calibration_views

    keras.utils.set_random_seed(0)
    crops, labels = [], []
    for index, photo in enumerate(USER_CLASSES.values()):
        views = calibration_views([getattr(skimage.data, photo)()], size, 40, seed=index)
        crops.append(views)
        labels += [index] * len(views)
    images, labels = np.concatenate(crops), np.array(labels)
    order = np.random.default_rng(0).permutation(len(images))
    held = order[: len(order) // 4]
    train = order[len(order) // 4:]
    model = training.classifier("lite0", classes=len(USER_CLASSES), weights="imagenet",
                                image_size=size)
    training.freeze_backbone(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=training.loss(),
                  metrics=["accuracy"])
    model.fit(images[train], keras.utils.to_categorical(labels[train], 3), epochs=10,
              batch_size=8, verbose=0)
    model.class_names = tuple(USER_CLASSES)
    return model, images[held], labels[held]


def _models(images, labels):
    import keras_effnet as ke

    for name in FLAGS.models:
        if name == "lite0":
            yield (name, "Lite0 (ImageNet weights)", ke.EfficientNetLite0(weights="imagenet"),
                   images, labels)
        elif name == "b0":
            import b0_proxy

            model, _ = b0_proxy.load_or_distil()
            yield name, "B0 (distilled proxy)", model, images, labels
        elif name == "finetuned":
            model, held, truth = _finetuned(224)
            yield name, "Lite0 fine-tuned, 3 classes", model, held, truth
        else:
            raise ValueError(f"unknown model {name!r}: expected lite0, b0 or finetuned")


def _b0_qat(model, x, y, reference, names, folder) -> dict:
    """B0 through quantization-aware training: calibrated ranges, then a fine-tune that
    fits the fake-quantized copy to the float model's probabilities (knowledge
    distillation, KL divergence) on random crops of the calibration photos, written as
    uint8 with metadata and verified like the other artifacts."""
    import b0_proxy

    from keras_effnet.export import calibration_views, verify
    from keras_effnet.export.qat import distil_from_float, qat_to_tflite, quantize_aware

    sources = b0_proxy.photo_sources()
    size = model.input_shape[1]
    qat = quantize_aware(model, calibration=calibration_views(sources, size, 100, seed=1))
    crops = calibration_views(sources, size, FLAGS.qat_crops, seed=7)
    distil_from_float(qat, model, crops, epochs=FLAGS.qat_epochs)
    path = qat_to_tflite(qat, pathlib.Path(folder) / "b0_qat_uint8.tflite", "uint8",
                         labels=names)
    result = verify(path, model, x, y, runs=0, reference=reference,
                    name=f"uint8 (QAT, {FLAGS.qat_epochs} epochs)", class_names=names)
    return result.to_dict()


def _row(label: str, r: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    if r["android_problems"] is None:  # not a .tflite: ONNX Runtime ran it, the SQNR says how
        return (f"| {label} | {r['artifact']} (ONNX Runtime) | {pct(r['keras_top1_accuracy'])} | "
                f"{pct(r['top1_accuracy'])} ({pct(r['top1_agreement'])}, logit SQNR "
                f"{r['sqnr_db']:.0f} dB) | - | - | not for Android |")
    mp, cm = r["runtimes"]["mediapipe"], r["runtimes"]["compiled_model"]
    mediapipe = "refused" if not mp["accepted"] else \
        f"{pct(mp['top1_accuracy'])} ({pct(mp['top1_agreement'])}, names {pct(mp['names_match'])})"
    compiled = "refused" if not cm["accepted"] else \
        f"{pct(cm['top1_accuracy'])} ({pct(cm['top1_agreement'])})"
    ready = "yes" if r["android_ready"] else "no: " + "; ".join(r["android_problems"])
    return (f"| {label} | {r['artifact']} | {pct(r['keras_top1_accuracy'])} | "
            f"{pct(r['top1_accuracy'])} | {mediapipe} | {compiled} | {ready} |")


def _server(model, files) -> dict:
    """serving_bytes on encoded photo files vs load_image + Keras."""
    import tensorflow as tf

    import keras_effnet as ke
    from keras_effnet.export import class_names_for, export_saved_model

    names = class_names_for(model)
    size = model.input_shape[1]
    with tempfile.TemporaryDirectory(prefix="deploy_sm_") as folder:
        path = export_saved_model(model, pathlib.Path(folder) / "sm", class_names=names)
        serve = tf.saved_model.load(str(path)).signatures["serving_bytes"]
        top1, top_names = [], []
        for start in range(0, len(files), 20):
            batch = [f.read_bytes() for f in files[start:start + 20]]
            out = serve(image_bytes=tf.constant(batch))
            top1 += out["top_k_indices"].numpy()[:, 0].tolist()
            top_names += [n.decode() for n in out["top_k_names"].numpy()[:, 0]]
    expected = model.predict(np.stack([ke.load_image(f, size) for f in files]), verbose=0)
    return {"images": len(files),
            "top1_agreement": float(np.mean(np.array(top1) == expected.argmax(1))),
            "names_match": float(np.mean([n == names[i] for n, i in zip(top_names, top1)]))}


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)

    from keras_effnet.export import labels_from_names, load_folder
    from keras_effnet.export.pipeline import calibration_set, export_all

    folder = pathlib.Path(FLAGS.images)
    if not folder.is_dir():
        print(f"{folder} is absent: this benchmark needs labelled ImageNet photos")
        return 1
    images, names = load_folder(folder, 224)
    labels = labels_from_names(names)
    calibration = calibration_set(224, [str(SHARED / "photos")] if SHARED.is_dir() else [])
    data = {"machine": _bench.machine(), "images": str(folder), "models": {}}
    md = ["# Deploy: the artifacts in the runtimes users ship into", "",
          (f"Generated by `benchmarks/deploy.py`. Top-1 on {len(images)} labelled photos "
          f"({folder.name}; the fine-tuned model: held-out crops), each runtime fed the "
          "centre-cropped pixels Keras gets; in brackets the top-1 agreement with Keras, and "
          "for MediaPipe the share of top-1 names equal to the class name of the index."), "",
          ("| model | artifact | Keras | our LiteRT runner | MediaPipe ImageClassifier | "
          "LiteRT CompiledModel | Android-ready |"), "|" + "---|" * 7]
    for key, label, model, x, y in _models(images, labels):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="deploy_") as out:
            report = export_all(model, out, FORMATS[key], calibration=calibration,
                                eval_sets={"photos": (x, y)}, runs=0, progress=False)
        rows = report["verify"]["photos"]
        if key == "b0" and FLAGS.qat_epochs:
            from keras_effnet.export import keras_outputs

            with tempfile.TemporaryDirectory(prefix="deploy_qat_") as out:
                rows.append(_b0_qat(model, x, y, keras_outputs(model, x),
                                    report["class_names"], out))
        data["models"][label] = {"class_names": report["class_names"][:5], "rows": rows,
                                 "seconds": round(time.perf_counter() - start, 1)}
        md += [_row(label, r) for r in rows]
    if "lite0" in FLAGS.models:
        import keras_effnet as ke

        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        data["server"] = _server(ke.EfficientNetLite0(weights="imagenet"), files)
        s = data["server"]
        md += ["", (f"SavedModel `serving_bytes` (Lite0, the {s['images']} photo files as "
               f"encoded JPEGs): top-1 agreement with `load_image` + Keras "
               f"{100 * s['top1_agreement']:.0f}%, class names right for "
               f"{100 * s['names_match']:.0f}%.")]
    _bench.publish(FLAGS.name, data, md, FLAGS.out, FLAGS.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
