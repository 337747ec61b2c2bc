"""The whole export job in one call: every format, each verified, one table.

`keras-effnet export` and `make demo` run this; a notebook can too:

    results = export_all(model, "build/lite0", calibration=calibration_set(224))
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from keras_effnet import files
from keras_effnet.export.data import (
    MIN_CALIBRATION_IMAGES,
    bundled_photos,
    calibration_views,
    image_files,
)
from keras_effnet.export.edgetpu import to_edgetpu
from keras_effnet.export.metadata import check_image_classifier, class_names_for
from keras_effnet.export.onnx import to_onnx
from keras_effnet.export.saved_model import export_saved_model
from keras_effnet.export.se import check_se
from keras_effnet.export.tflite import MODES, input_size, to_tflite
from keras_effnet.export.verify import format_runtime_table, format_table, keras_outputs, verify
from keras_effnet.files import write_json

__all__ = ["FORMATS", "OPTIONAL_FORMATS", "TARGETS", "artifact_name", "calibration_set",
           "default_calibration", "default_eval_sets", "export_all", "target_formats",
           "trained_on"]

FORMATS = ("saved_model",) + MODES + ("edgetpu",)
# also on request (the onnx extra): not in the default set, which needs no extra
OPTIONAL_FORMATS = ("onnx",)
# what each place a model ships to takes: phones get the two files MediaPipe runs best
# (uint8: integer kernels, raw-pixel input; float16: GPU delegates), Coral boards the
# Edge TPU file and its op report, servers the SavedModel
TARGETS = {"android": ("uint8", "float16"), "coral": ("edgetpu",), "server": ("saved_model",),
           "all": FORMATS}


def target_formats(target: str) -> tuple[str, ...]:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    return TARGETS[target]


def artifact_name(model_name: str, fmt: str, se: str = "keep") -> str:
    suffix = "" if se == "keep" else "_se-" + se.replace("+", "-")
    if fmt == "saved_model":
        return f"{model_name}_saved_model{suffix}"
    if fmt == "onnx":
        return f"{model_name}{suffix}.onnx"
    return f"{model_name}_{fmt}{suffix}.tflite"


def calibration_set(size: int, folders: list | None = None,
                    count: int = MIN_CALIBRATION_IMAGES, seed: int = 0):
    """Calibration images: a folder with `count` or more images is used as it is;
    otherwise `count` random crops and flips of scikit-image's photos plus those in
    `folders`, so a handful of photos still gives varied activation ranges."""
    folders = [Path(f) for f in folders or []]
    files = [p for folder in folders for p in image_files(folder)]
    if len(folders) == 1 and len(files) >= count:
        return str(folders[0])
    sources = list(bundled_photos()[0]) + [str(p) for p in files]
    return calibration_views(sources, size, count, seed)


def trained_on(model) -> dict:
    """{"train": folder, "val": folder or None} of the photos `model` was fine-tuned on, as
    `keras-effnet train` records them in its `.keras` file; {} when unknown or gone."""
    data = getattr(model, "training_data", None) or {}
    return {k: v for k, v in data.items() if v and (files.is_remote(v) or os.path.isdir(v))}


def default_calibration(model, size: int):
    """What an integer export of `model` calibrates on when the caller gives nothing: the
    photos it was trained on when they are known, scikit-image's photos for an ImageNet
    classifier, else a ValueError (a flower classifier quantized on photos of cups reads
    its own classes' activation ranges wrongly)."""
    data = trained_on(model)
    if "train" in data:
        return calibration_set(size, [data["train"]])
    if model.output_shape[-1] == 1000:
        return calibration_set(size)
    raise ValueError(
        f"{model.name} classifies {model.output_shape[-1]} classes of its own and nothing says "
        "which photos it was trained on, so its int8/uint8/edgetpu files have nothing to "
        "calibrate on: pass calibration= (keras-effnet export --calibration DIR) with a "
        "hundred or more photos of its classes")


def default_eval_sets(model, size: int, class_names=None) -> dict:
    """{name: (images, labels or None)} a verification table uses when the caller gives
    none: the labelled validation photos `model` was trained with when known, else
    scikit-image's photos (unlabelled)."""
    from keras_effnet.export.evaluate import load_labelled

    data = trained_on(model)
    if data.get("val"):
        names = class_names_for(model, class_names)
        return {data["val"]: load_labelled(data["val"], size, names, model.output_shape[-1])}
    return {"photos": (bundled_photos(size)[0], None)}


def export_all(model, out_dir: str | os.PathLike, formats=FORMATS, se: str = "keep",
               calibration=None, eval_sets: dict | None = None, overwrite: bool = False,
               runs: int = 20, progress: bool = True, log=print, target: str | None = None,
               labels=None) -> dict:
    """Export `model` to every format in `formats` (or those of `target`: android,
    coral, server, all) under `out_dir`, verify each on every evaluation set ({name:
    (images, labels or None)}) in Keras' place and in the runtimes users ship into,
    print the tables, and write `<out_dir>/export_report.json`. Returns the same data.
    `labels`: the class names the artifacts carry (a list or a file; default: the
    model's own, or ImageNet's).

    `out_dir` may be remote (`gs://...`, any `tf.io.gfile` scheme): the runtimes that
    verify an artifact read local files, so each is written and verified in a local
    staging folder, then copied to `out_dir` whole."""
    if target is not None:
        formats = target_formats(target)
    unknown = [f for f in formats if f not in FORMATS + OPTIONAL_FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}: expected some of "
                         f"{', '.join(FORMATS + OPTIONAL_FORMATS)}")
    check_se(model, se)
    if target == "android":
        check_image_classifier(model)
    names = class_names_for(model, labels)
    out_dir = os.fspath(out_dir)
    for fmt in formats:  # refuse before anything is written, not after the first files
        files.check_destination(os.path.join(out_dir, artifact_name(model.name, fmt, se)),
                                overwrite)
    if not files.is_remote(out_dir):
        return _export_to(model, Path(out_dir), formats, se, calibration, eval_sets, overwrite,
                          runs, progress, log, target, names, publish=None)
    with tempfile.TemporaryDirectory(prefix="keras-effnet-export-") as stage:
        return _export_to(model, Path(stage), formats, se, calibration, eval_sets, overwrite,
                          runs, progress, log, target, names, publish=out_dir)


def _export_to(model, out_dir: Path, formats, se, calibration, eval_sets, overwrite, runs,
               progress, log, target, names, publish: str | None) -> dict:
    height, _ = input_size(model)
    quantized = {"int8", "uint8", "edgetpu"} & set(formats)
    if quantized and calibration is None:
        calibration = default_calibration(model, height)
    eval_sets = eval_sets or default_eval_sets(model, height, names)
    references = {name: keras_outputs(model, images) for name, (images, _) in eval_sets.items()}

    report: dict = {"model": model.name, "se": se, "target": target, "class_names": names,
                    "artifacts": {}, "edgetpu": None}
    results: dict = {name: [] for name in eval_sets}
    edgetpu = None
    for fmt in formats:
        path = out_dir / artifact_name(model.name, fmt, se)
        start = time.perf_counter()
        if fmt == "saved_model":
            export_saved_model(model, path, overwrite=overwrite, class_names=names)
        elif fmt == "onnx":
            to_onnx(model, path, overwrite=overwrite)
        elif fmt == "edgetpu":
            edgetpu = to_edgetpu(model, path, calibration, se=se, overwrite=overwrite,
                                 progress=progress, labels=names)
            report["edgetpu"] = edgetpu.to_dict()
        else:
            to_tflite(model, path, fmt, calibration if fmt in ("int8", "uint8") else None,
                      se=se, overwrite=overwrite, progress=progress, labels=names)
        seconds = time.perf_counter() - start
        for i, (name, (images, truth)) in enumerate(eval_sets.items()):
            result = verify(path, model, images, truth, runs=runs if i == 0 else 0,
                            reference=references[name], name=fmt, class_names=names)
            results[name].append(result)
        if publish is not None:
            path = os.path.join(publish, path.name)
            files.copy(out_dir / os.path.basename(path), path, overwrite)
        log(f"wrote {path} ({fmt}, se={se}) in {seconds:.0f} s")
        report["artifacts"][fmt] = {"path": str(path), "export_seconds": round(seconds, 1)}
    _log_tables(model, se, target, results, eval_sets, edgetpu, log)
    report["verify"] = {name: [r.to_dict() for r in rows] for name, rows in results.items()}
    if publish is not None:  # the Edge TPU compiler's log and anything else written beside
        for extra in sorted(set(os.listdir(out_dir)) - {Path(a["path"]).name
                                                         for a in report["artifacts"].values()}):
            files.copy(out_dir / extra, os.path.join(publish, extra), overwrite)
    write_json(os.path.join(publish or out_dir, "export_report.json"), report,
               default=_jsonable)
    return report


def _log_tables(model, se, target, results, eval_sets, edgetpu, log) -> None:
    for name, rows in results.items():
        log("")
        log(format_table(rows, f"{model.name}, se={se}: verified on {name} "
                         f"({len(eval_sets[name][0])} images)"))
        if any(r.android_problems is not None for r in rows):
            log("")
            log(format_runtime_table(rows, f"{model.name}: the same images in the runtimes "
                                     "users ship into"))
    first = next(iter(results.values()))
    refused = [r for r in first if r.android_problems is not None and not r.android_ready]
    if target == "android" and refused:
        log("")
        for r in refused:
            log(f"NOT Android-ready: {r.artifact}: "
                + "; ".join(r.android_problems or [c.summary() for c in r.runtimes.values()]))
    if edgetpu is not None:
        log("")
        log(edgetpu.summary())


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
