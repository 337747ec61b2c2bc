"""Score a model or an exported file on a labelled folder: what a user asks of a
classifier before shipping it, and again after each export.

    report = evaluate("run/model.keras", "flowers/test")          # a .keras file
    report = evaluate("out/model_uint8.tflite", "flowers/test",   # the phone's runtime
                      runtime="mediapipe")
    report.accuracy, report.per_class["roses"]["recall"]
    report.plot("confusion.png")

`model` is a `keras.Model`, a `.keras` file, a SavedModel folder, a `.tflite` file or a
variant name ('lite0': its ImageNet weights). `data` is a folder of class folders
(`<data>/<class>/<image>`, the names matched to the model's class names) or of
ImageNet-named files (`207_n02099601_golden.JPEG`, the leading number is the class),
or a `keras_effnet.training.ImageFolder` (one side of `training.split`). Every image
is centre-cropped and resized to the model's input size as `keras_effnet.load_image`
does (the EfficientNet evaluation protocol, the same crop `classify`, `export` and
training's validation use). Files that cannot be read are
skipped and counted, never scored.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from keras_effnet.console import quieted
from keras_effnet.preprocessing import IMAGE_SUFFIXES, LABELLED_NAME, imagenet_classes, load_image

__all__ = ["RUNTIMES", "EvalReport", "LabelledFolder", "evaluate", "format_report",
           "labelled_folder", "load_labelled", "model_class_names", "plot_confusion"]

RUNTIMES = ("litert", "mediapipe")
_CHUNK = 64  # images loaded and scored at a time: memory stays flat on any folder size


@dataclasses.dataclass(frozen=True)
class LabelledFolder:
    """A folder's image files with the model's class index of each."""

    root: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    layout: str  # "class folders" or "imagenet names"
    skipped: tuple[str, ...] = ()  # not images (wrong magic bytes, empty)


@dataclasses.dataclass
class EvalReport:
    """What `evaluate` measured; `to_dict()` is what `--json` prints."""

    model: str
    runtime: str
    data: str
    images: int
    skipped: int
    accuracy: float
    top5: float | None
    class_names: list[str]
    per_class: dict
    confusion: list[list[int]]
    skipped_files: list[str] = dataclasses.field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def plot(self, path: str | os.PathLike) -> str:
        """The confusion matrix as a PNG at `path` (matplotlib: the `plots` extra)."""
        return plot_confusion(self, path)


def _names_from_tflite(path: Path) -> list[str] | None:
    """The labels a `.tflite` carries: through MediaPipe's metadata reader when it is
    installed, else from the zip the metadata writer appends (the same file)."""
    from keras_effnet.export.metadata import MetadataUnavailableError, read_metadata

    try:
        info = read_metadata(path)
        return (list(info.labels) or None) if info is not None else None
    except MetadataUnavailableError:
        pass
    content = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            texts = [n for n in archive.namelist() if n.endswith(".txt")]
            if texts:
                return archive.read(texts[0]).decode("utf-8").splitlines() or None
    except zipfile.BadZipFile:
        pass
    return None


def model_class_names(model, classes: int) -> list[str] | None:
    """The class names `model` carries (its saved names; a `.tflite`'s labels; a
    SavedModel's labels.txt; ImageNet's for 1000 classes), or None."""
    from keras_effnet.export.metadata import class_names_for

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix == ".tflite":
            names = _names_from_tflite(path)
        elif (path / "labels.txt").is_file():
            names = (path / "labels.txt").read_text(encoding="utf-8").splitlines()
        else:
            names = None
        if names is not None and len(names) == classes:
            return names
        return [name for _, name in imagenet_classes()] if classes == 1000 else None
    return class_names_for(model)


def labelled_folder(folder: str | os.PathLike, class_names: list[str] | None,
                    classes: int) -> tuple[LabelledFolder, str | None]:
    """The images of `folder` with the model's class index of each, and a note when the
    labels had to be guessed. Class folders are matched to `class_names` by name (a
    folder the model does not know is an error that names it); with no names, the
    sorted folders are taken as classes 0..K-1, as training numbers them. Flat folders
    need ImageNet-style names starting with the class index. Files that are not images
    are left out (and counted); a class folder with no readable image is an error."""
    from keras_effnet.training.data import ImageFolder, scan_folder

    if isinstance(folder, ImageFolder):  # e.g. one side of training.split
        found, root = folder, Path(folder.root)
    else:
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"expected a folder of labelled images, {str(root)!r} is not a "
                             "folder (one sub-folder per class, or names like "
                             "207_n02099601_x.JPEG)")
        found = scan_folder(root, min_classes=1)
    flat = not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    note = None
    if flat:  # scan_folder's class names are the indices the file names start with
        index = [int(name) for name in found.class_names]
        beyond = [i for i in index if i >= classes]
        if beyond:
            raise ValueError(f"{str(root)!r} names class(es) {beyond[:5]} but the model has "
                             f"{classes} classes (0..{classes - 1})")
    elif class_names is not None:
        unknown = [n for n in found.class_names if n not in class_names]
        if unknown:
            raise ValueError(
                f"{str(root)!r} has class folder(s) the model does not know: "
                f"{', '.join(unknown[:10])}; the model's classes are "
                f"{', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}. "
                "Rename or remove those folders")
        index = [class_names.index(n) for n in found.class_names]
    else:
        if found.num_classes > classes:
            raise ValueError(f"{str(root)!r} has {found.num_classes} class folders but the "
                             f"model has {classes} classes and no class names to match them by")
        index = list(range(found.num_classes))
        note = (f"the model carries no class names: the {found.num_classes} folders, sorted, "
                f"are taken as classes 0..{found.num_classes - 1}; results name classes by "
                "index")
    return LabelledFolder(str(root), found.files, tuple(index[i] for i in found.labels),
                          "imagenet names" if flat else "class folders",
                          tuple(path for path, _ in found.skipped)), note


def load_labelled(folder: str | os.PathLike, size: int, class_names: list[str] | None,
                  classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(images at `size`, the model's class index of each or None) for a folder of class
    folders or ImageNet-named files, as `evaluate` reads it; a flat folder of other names
    gives its images unlabelled. Unreadable images are skipped with a warning."""
    root = Path(folder)
    flat = root.is_dir() and not any(p.is_dir() and not p.name.startswith(".")
                                     for p in root.iterdir())
    if flat and any(not LABELLED_NAME.match(p.name) for p in root.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES):
        from keras_effnet.export.data import load_folder

        return load_folder(root, size)[0], None
    found, note = labelled_folder(root, class_names, classes)
    if note:
        warnings.warn(note, stacklevel=2)
    images, labels, skipped = _read(found.files, found.labels, size)
    _warn_skipped(skipped, root)
    if not images:
        raise ValueError(f"none of the images in {str(root)!r} could be read")
    return np.stack(images), np.asarray(labels)


def _read(files, labels, size: int) -> tuple[list, list, list]:
    """(images at `size`, their labels, the paths that could not be read)."""
    images, kept, skipped = [], [], []
    for path, label in zip(files, labels):
        try:
            images.append(load_image(path, size))
            kept.append(label)
        except ValueError:
            skipped.append(path)
    return images, kept, skipped


def _warn_skipped(skipped: list, root) -> None:
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {root}: "
                      f"{', '.join(Path(p).name for p in skipped[:5])}", stacklevel=3)


class _Runner:
    """(N, H, W, 3) pixels -> (N, classes) scores for one kind of model."""

    def __init__(self, model, runtime: str):
        self.runtime = runtime
        self.path = None
        if isinstance(model, (str, os.PathLike)) and not _is_variant(model):
            self.path = Path(model)
            if not self.path.exists():
                raise ValueError(f"no model at {str(self.path)!r}: expected a .keras file, a "
                                 "SavedModel folder, a .tflite file or a variant name (lite0)")
            self.kind = "tflite" if self.path.suffix == ".tflite" else \
                "saved_model" if self.path.is_dir() else "keras"
        else:
            self.kind = "keras"
        if runtime == "mediapipe" and self.kind != "tflite":
            raise ValueError("runtime='mediapipe' runs .tflite files (MediaPipe's "
                             f"ImageClassifier); {model!s} is a {self.kind} model")
        self.model = None
        if self.kind == "keras":
            self.model = _keras_model(model)
            self.name = self.model.name if self.path is None else str(self.path)
            shape, classes = tuple(self.model.input_shape), self.model.output_shape[-1]
        elif self.kind == "saved_model":
            import tensorflow as tf

            if not (self.path / "saved_model.pb").exists():
                raise ValueError(f"{self.path} is a folder but not a SavedModel (no "
                                 "saved_model.pb)")
            self.serve = tf.saved_model.load(str(self.path)).signatures["serving_default"]
            spec = self.serve.structured_input_signature[1]["images"]
            shape = tuple(spec.shape)
            classes = self.serve.structured_outputs["probabilities"].shape[-1]
            self.name = str(self.path)
        else:
            from keras_effnet.export.flatbuffer import read_model
            from keras_effnet.export.verify import check_runnable

            self.graph = read_model(self.path)
            check_runnable(self.path, self.graph)
            shape = tuple(self.graph.inputs[0].shape)
            classes = int(self.graph.outputs[0].shape[-1])
            self.name = str(self.path)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{self.name} takes input of shape {shape}; expected an image "
                             "classifier taking (N, H, W, 3) RGB images")
        self.size = shape[1] if shape[1] == shape[2] and shape[1] not in (None, -1) else None
        self.classes = int(classes)
        if runtime == "mediapipe":
            from keras_effnet.export.runtimes import mediapipe_available

            if not mediapipe_available():
                raise ValueError("runtime='mediapipe' needs MediaPipe Tasks: "
                                 "pip install 'keras-effnet[android]'")

    def scores(self, images: np.ndarray, top: int) -> np.ndarray:
        """(N, top) class indices, best first."""
        if self.runtime == "mediapipe":
            from keras_effnet.export.runtimes import mediapipe_classify

            rows = mediapipe_classify(self.path, images, top=top)
            return np.array([[index for index, _, _ in row] for row in rows])
        if self.kind == "keras":
            probs = self.model.predict(images, batch_size=32, verbose=0)
        elif self.kind == "saved_model":
            import tensorflow as tf

            probs = self.serve(images=tf.constant(images, tf.float32))["probabilities"].numpy()
        else:
            from keras_effnet.export.verify import tflite_outputs

            probs = tflite_outputs(self.path, self.graph, images)[0]
        return np.argsort(-probs, axis=1, kind="stable")[:, :top]


def _is_variant(model) -> bool:
    from keras_effnet.specs import variant_names

    return isinstance(model, str) and not os.path.exists(model) and \
        model.lower() in variant_names()


def _keras_model(model):
    if not isinstance(model, (str, os.PathLike)):
        return model
    if _is_variant(model):
        from keras_effnet import build

        return build(model, weights="imagenet")
    from keras_effnet.saving import load_model

    if not os.fspath(model).endswith(".keras"):
        raise ValueError(f"{model!s}: expected a .keras file, a SavedModel folder, a .tflite "
                         "file or a variant name")
    return load_model(model, compile=False)


@quieted
def evaluate(model, data, *, runtime: str = "litert",
             image_size: int | None = None, class_names: list[str] | None = None,
             plot: str | os.PathLike | None = None, progress: bool = True) -> EvalReport:
    """Top-1 (and top-5 from 5 classes up) accuracy, per-class precision and recall and
    the confusion matrix of `model` on the labelled folder `data`.

    Args:
        model: a `keras.Model`, a `.keras` file, a SavedModel folder, a `.tflite` file,
            or a variant name ('lite0', its ImageNet weights).
        data: class folders (matched to the model's class names), ImageNet-named files, or
            a `training.ImageFolder`.
        runtime: for a `.tflite`: 'litert' (our LiteRT runner) or 'mediapipe'
            (MediaPipe's ImageClassifier, as Android's task runtime reads the file).
        image_size: only for a model that takes any size; a fixed-size model's own
            size is used, and another is an error.
        class_names: the model's class names when it carries none.
        plot: also write the confusion matrix as a PNG there.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    runner = _Runner(model, runtime)
    size = runner.size
    if size is None and image_size is None:
        raise ValueError(f"{runner.name} takes images of any size: pass image_size")
    if size is not None and image_size is not None and image_size != size:
        raise ValueError(f"{runner.name} takes {size}x{size} images, not {image_size}x"
                         f"{image_size}: leave image_size out, or export the model at "
                         f"{image_size} px")
    size = size or image_size
    names = list(class_names) if class_names is not None else \
        model_class_names(runner.model if runner.model is not None else runner.path,
                          runner.classes)
    if names is not None and len(names) != runner.classes:
        raise ValueError(f"{len(names)} class names for a model of {runner.classes} classes")
    folder, note = labelled_folder(data, names, runner.classes)
    if note:
        warnings.warn(note, stacklevel=2)
    top = min(5, runner.classes)
    predicted, truth, skipped = [], [], list(folder.skipped)
    bar = _progress(len(folder.files), progress, f"evaluating {Path(runner.name).name}")
    for start in range(0, len(folder.files), _CHUNK):
        images, labels, unreadable = _read(folder.files[start:start + _CHUNK],
                                           folder.labels[start:start + _CHUNK], size)
        skipped += unreadable
        if images:
            predicted.append(runner.scores(np.stack(images), top))
            truth += labels
        bar(min(start + _CHUNK, len(folder.files)))
    if not truth:
        raise ValueError(f"none of the {len(folder.files)} images in {folder.root!r} could be "
                         "read")
    _warn_skipped(skipped, folder.root)
    ranked = np.concatenate(predicted)
    return _report(runner, folder, names, np.asarray(truth), ranked, skipped, note, plot)


def _report(runner, folder, names, truth, ranked, skipped, note, plot) -> EvalReport:
    top1 = ranked[:, 0]
    # the classes the folder holds, and any others the model predicted
    present = sorted(set(truth.tolist()) | set(top1.tolist()))
    label = (lambda i: names[i]) if names is not None else str
    confusion = np.zeros((len(present), len(present)), dtype=int)
    position = {c: i for i, c in enumerate(present)}
    for t, p in zip(truth, top1):
        confusion[position[t], position[p]] += 1
    per_class = {}
    for c in sorted(set(truth.tolist())):
        hit = int(np.sum((truth == c) & (top1 == c)))
        predicted_c, support = int(np.sum(top1 == c)), int(np.sum(truth == c))
        per_class[label(c)] = {"index": c, "support": support,
                               "precision": hit / predicted_c if predicted_c else 0.0,
                               "recall": hit / support}
    report = EvalReport(
        model=runner.name, runtime=runner.runtime if runner.kind == "tflite" else runner.kind,
        data=folder.root, images=len(truth), skipped=len(skipped),
        accuracy=float(np.mean(top1 == truth)),
        top5=float(np.mean(np.any(ranked[:, :5] == truth[:, None], axis=1)))
        if runner.classes >= 5 else None,
        class_names=[label(c) for c in present], per_class=per_class,
        confusion=confusion.tolist(), skipped_files=list(skipped), note=note)
    if plot is not None:
        report.plot(plot)
    return report


def _progress(total: int, enabled: bool, title: str):
    if not enabled or total < 2 * _CHUNK:
        return lambda done: None
    import keras

    bar = keras.utils.Progbar(total, unit_name="image")
    print(title)
    return lambda done: bar.update(done)


def format_report(report: EvalReport) -> str:
    """The report as a few lines and a per-class Markdown table."""
    top5 = "" if report.top5 is None else f", top-5 {100 * report.top5:.1f}%"
    lines = [f"{report.model} ({report.runtime}) on {report.data}: {report.images} images"
             + (f" ({report.skipped} unreadable, skipped)" if report.skipped else ""),
             f"top-1 {100 * report.accuracy:.1f}%{top5}", "",
             "| class | images | precision | recall |", "|---|---:|---:|---:|"]
    for name, row in report.per_class.items():
        lines.append(f"| {name} | {row['support']} | {100 * row['precision']:.1f}% | "
                     f"{100 * row['recall']:.1f}% |")
    if report.note:
        lines += ["", f"note: {report.note}"]
    return "\n".join(lines)


def plot_confusion(report: EvalReport, path: str | os.PathLike) -> str:
    """Row-normalised confusion matrix (rows: true class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_effnet.files import atomic_output

    counts = np.asarray(report.confusion)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(report.class_names)
    side = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), report.class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), report.class_names)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                            color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{Path(report.model).name}\n{report.runtime}: top-1 "
                 f"{100 * report.accuracy:.1f}% of {report.images} images", fontsize=10)
    fig.tight_layout()
    with atomic_output(os.fspath(path), True, suffix=".png") as tmp:
        fig.savefig(str(tmp), dpi=120)
    plt.close(fig)
    return os.fspath(path)
