"""Every export format x SE strategy, each verified against the Keras model.

    python benchmarks/export_matrix.py --model lite0,b0,edgetpu-s [--images DIR] [--out DIR]

For each model and SE strategy the artifacts are exported and verified
(top-1 agreement with Keras, accuracy when the images are labelled, logit
SQNR, max probability error, size, 1-thread batch-1 latency) and the Edge TPU
op report is summarised. Strategies that do not apply (SE changes on a model
without SE, se=float on a float artifact) are listed as skipped, with why.

B0's ImageNet weights cannot be downloaded here: when the official file is in
the Keras cache it is used; otherwise proxies (--b0_proxy), and the output says
which was used (models other than B without weights, e.g. EdgeTPU-S, get the
re-estimated proxy: their Edge TPU op report does not depend on weights):
  reestimated  random weights whose BatchNorm statistics are re-estimated on
               real photos (realistic activation ranges, random classifier:
               compare agreement and SQNR, not accuracy). Such a deep random
               net is chaotic: any perturbation, quantization included, grows
               layer by layer, so its SQNRs say little about a trained B0.
  distilled    B0 initialised from Lite0's real weights and fitted to Lite0's
               logits on photos (benchmarks/b0_proxy.py, cached after the first
               run, ~10 min): trained SE gates and swish activations.
Writes export_matrix.json and export_matrix.md.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FLAGS = flags.FLAGS
flags.DEFINE_list("model", ["lite0", "b0", "edgetpu-s"], "variants to export")
flags.DEFINE_string("images", str(SHARED / "imagenet-sample"),
                    "labelled evaluation photos (default ../shared/data/imagenet-sample; "
                    "scikit-image's photos when absent)")
flags.DEFINE_string("calibration", str(SHARED / "photos"),
                    "extra calibration photos, expanded with scikit-image's to 100 views")
flags.DEFINE_list("formats", None, "formats (default: all for SE-free models; for SE models "
                  "the integer ones, where SE matters)")
flags.DEFINE_list("se", None, "strategies (default keep,float,hard,pool,remove,hard+pool)")
flags.DEFINE_integer("runs", 20, "timed batch-1 runs per artifact")
flags.DEFINE_integer("bn_images", 64, "photos for re-estimating B0's BatchNorm statistics")
flags.DEFINE_list("b0_proxy", ["distilled", "reestimated"],
                  "stand-ins for B models without official weights: distilled, reestimated")
flags.DEFINE_multi_integer("seeds", [0], "random-weight seeds of the re-estimated proxy "
                           "(one table each)")
flags.DEFINE_string("out", str(REPO / "benchmarks" / "results"), "output folder")
flags.DEFINE_string("name", "export_matrix", "results file name (<out>/<name>.json and .md)")

ALL_SE = ["keep", "float", "hard", "pool", "remove", "hard+pool"]
SE_FORMATS = ["float32", "uint8", "edgetpu"]


def reestimate_batchnorm(model, images, batch_size: int = 32):
    """Set every BatchNormalization's moving statistics to those of `images`
    (a random-weight model then has activations of realistic range)."""
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0  # the moving statistics become the batch's
    model(images[:batch_size], training=True)
    for layer in bns:
        layer.momentum = 0.99


def load_models(name: str, photos) -> list[tuple[str, object, str]]:
    """[(label, model, weights description)]: the official weights, or the proxies."""
    import keras_effnet as ke

    try:
        return [(name, ke.build(name, weights="imagenet"), "ImageNet weights")]
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
    # B models: the proxies asked for; others (EdgeTPU, Lite3-4, whose checkpoints are not
    # here): the re-estimated one, for the Edge TPU op report (mapping needs no weights)
    proxies = FLAGS.b0_proxy if name.startswith("b") else ["reestimated"]
    print(f"{name}: official ImageNet weights unavailable ({reason}); using {proxies}")
    models = []
    for proxy in proxies:
        if proxy == "distilled":
            if name != "b0":
                raise ValueError("the distilled proxy exists for b0 only (Lite0 is its teacher)")
            import b0_proxy

            model, record = b0_proxy.load_or_distil()
            description = (f"proxy: distilled from Lite0's real weights, {record['steps']} "
                           f"steps, {100 * record['agreement_after']:.0f}% top-1 agreement "
                           "with Lite0 on held-out crops")
            models.append((f"{name}-distilled", model, description))
        elif proxy == "reestimated":
            import keras

            count = min(len(photos), FLAGS.bn_images)
            for seed in FLAGS.seeds:
                keras.utils.set_random_seed(seed)  # the same random network every run
                # no stochastic depth or dropout while the statistics are measured
                model = ke.build(name, weights=None, drop_connect_rate=0.0, dropout_rate=0.0)
                reestimate_batchnorm(model, photos[:count], batch_size=count)
                description = (f"proxy: random weights (seed {seed}), BatchNorm re-estimated "
                               f"on {count} real photos")
                models.append((f"{name}-reestimated" + (f"-seed{seed}" if seed else ""), model,
                               description))
        else:
            raise ValueError(f"unknown --b0_proxy {proxy!r}: expected distilled or reestimated")
    return models


def _skip_reason(model, fmt, se, has_se):
    if se != "keep" and not has_se and se != "hard":
        return "no SE blocks in this model"
    if "float" in se and fmt in ("saved_model", "float32", "float16", "dynamic"):
        return "se=float applies to integer artifacts"
    if se != "keep" and fmt == "saved_model":
        return "SE strategies are export-time rewrites for TFLite"
    return ""


def _edgetpu_cell(report) -> str:
    if report is None:
        return "-"
    first = report.get("first_unmapped")
    if first is None:
        return f"all {report['ops']} ops mapped"
    return (f"{report['mapped']}/{report['ops']} mapped; stops at {first['op']} "
            f"({first['layer']})")


def _matrix(label, variant, model, weights, images, labels, source):
    """Export and verify one model in every format x SE strategy: (result, Markdown)."""
    from keras_effnet.export import find_se_blocks
    from keras_effnet.export.pipeline import FORMATS, calibration_set, export_all

    size = variant.resolution
    has_se = bool(find_se_blocks(model))
    extra = [FLAGS.calibration] if pathlib.Path(FLAGS.calibration).is_dir() else []
    calibration = calibration_set(size, extra)
    # models with SE, and proxies (whose accuracy means nothing): the formats where
    # quantization and the Edge TPU matter
    formats = FLAGS.formats or (SE_FORMATS if has_se or label != variant.name
                                else list(FORMATS))
    strategies = FLAGS.se or (ALL_SE if has_se else ["keep", "hard"])
    rows, skipped = [], []
    for se in strategies:
        todo = []
        for fmt in formats:
            reason = _skip_reason(model, fmt, se, has_se)
            if reason:
                skipped.append({"se": se, "format": fmt, "reason": reason})
            else:
                todo.append(fmt)
        if not todo:
            continue
        with tempfile.TemporaryDirectory(prefix="export_matrix_") as folder:
            start = time.perf_counter()
            report = export_all(model, folder, todo, se=se, calibration=calibration,
                                eval_sets={source: (images, labels)}, runs=FLAGS.runs,
                                progress=False)
            print(f"{label} se={se}: {time.perf_counter() - start:.0f} s")
        for row in report["verify"][source]:
            row["se"] = se
            row["edgetpu"] = _edgetpu_cell(report["edgetpu"]) if row["artifact"] == \
                "edgetpu" else "-"
            rows.append(row)
    result = {"weights": weights, "images": source, "count": len(images), "rows": rows,
              "skipped": skipped}
    title = variant.constructor_name + (f" `{label}`" if label != variant.name else "")
    md = [f"## {title} ({weights}; {len(images)} images from {source})", "",
          ("| SE | format | top-1 agree | top-1 acc (Keras) | logit SQNR dB | max abs dp | "
           "size MB | latency ms | Edge TPU |"), "|" + "---|" * 9]
    for r in rows:
        acc = "-" if r["top1_accuracy"] is None else \
            f"{100 * r['top1_accuracy']:.1f}% ({100 * r['keras_top1_accuracy']:.1f}%)"
        sqnr = r["sqnr_db"] if isinstance(r["sqnr_db"], str) else f"{r['sqnr_db']:.1f}"
        latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
        md.append(f"| {r['se']} | {r['artifact']} | {100 * r['top1_agreement']:.1f}% | {acc} "
                  f"| {sqnr} | {r['max_abs_prob_error']:.2e} | {r['size_bytes'] / 1e6:.2f} "
                  f"| {latency} | {r['edgetpu']} |")
    if skipped:
        md += ["", "Skipped: " + "; ".join(sorted({f"{s['se']} ({s['reason']})"
                                                  for s in skipped}))]
    md.append("")
    return result, md


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer logs at INFO

    import keras_effnet as ke
    from keras_effnet.export import labels_from_names, load_folder

    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": os.uname().machine, "cpus": os.cpu_count(), "models": {}}
    md = ["# Export matrix", "",
          ("Generated by `benchmarks/export_matrix.py"
           + "".join(f" {arg}" for arg in sys.argv[1:]) + "`; every row verified against the "
           "Keras model. Latency: batch 1, one thread, median of "
          f"{FLAGS.runs} runs (LiteRT; TensorFlow for the SavedModel)."), ""]
    for name in FLAGS.model:
        variant = ke.get_variant(name)
        size = variant.resolution
        if FLAGS.images and pathlib.Path(FLAGS.images).is_dir():
            images, names = load_folder(FLAGS.images, size)
            labels, source = labels_from_names(names), FLAGS.images
        else:
            from keras_effnet.export import bundled_photos

            images, _ = bundled_photos(size)
            labels, source = None, "scikit-image photos"
            print(f"{FLAGS.images} not found: evaluating on scikit-image's photos")
        for label, model, weights in load_models(name, images):
            results["models"][label], section = _matrix(label, variant, model, weights, images,
                                                        labels, source)
            md += section
    print("\n".join(md))
    _bench.write_results(FLAGS.name, results, md, out)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
