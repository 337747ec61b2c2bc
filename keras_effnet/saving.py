"""Saving and loading a classifier together with its class names.

    save_model(model, "out/model.keras", class_names=["daisy", "rose", "tulip"])
    model = load_model("out/model.keras")
    model.class_names        # ('daisy', 'rose', 'tulip'), or None

The names travel inside the `.keras` archive (an extra member, `keras_effnet/
class_names.json`, which Keras' loader leaves alone), so a model file moved on its own
still names its classes when it is exported; `labels.txt` beside it is for people.
`keras-effnet train` saves through here and `keras-effnet export --model FILE.keras`
loads through here.
"""

from __future__ import annotations

import json
import os
import zipfile

__all__ = ["CLASS_NAMES_MEMBER", "class_names_in", "load_model", "save_model"]

CLASS_NAMES_MEMBER = "keras_effnet/class_names.json"


def save_model(model, path: str | os.PathLike, class_names=None, *,
               labels_file: bool = True) -> str:
    """Save `model` to a `.keras` file at `path` (a temporary name, then a rename), with
    `class_names` inside; also `labels.txt` beside it when `labels_file`."""
    from keras_effnet.export._atomic import atomic_output
    from keras_effnet.export.metadata import LABELS_FILE, check_labels

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"expected a path ending in .keras, got {path!r}")
    classes = model.output_shape[-1]
    names = None if class_names is None else check_labels(class_names, classes, "class_names")
    with atomic_output(path, overwrite=True) as tmp:
        temporary = f"{tmp}.keras"  # Keras insists on the suffix
        model.save(temporary)
        if names is not None:
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(CLASS_NAMES_MEMBER, json.dumps(names))
        os.replace(temporary, tmp)
    if names is not None and labels_file:
        with atomic_output(os.path.join(os.path.dirname(path), LABELS_FILE), True) as tmp:
            tmp.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


def class_names_in(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names saved inside a `.keras` file, or None."""
    with zipfile.ZipFile(path) as archive:
        if CLASS_NAMES_MEMBER not in archive.namelist():
            return None
        names = json.loads(archive.read(CLASS_NAMES_MEMBER))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: {CLASS_NAMES_MEMBER} is not a list of class names")
    return tuple(names)


def load_model(path: str | os.PathLike, **kwargs):
    """`keras.saving.load_model`, plus `model.class_names` (a tuple, or None). The
    training recipe's optimizer and schedule are registered first, so a model that
    `keras-effnet train` saved loads compiled."""
    import keras

    import keras_effnet.training.recipe  # noqa: F401 - registers RMSpropEMA and its schedule

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no model file at {path!r}: expected a .keras file "
                         "(keras-effnet train writes OUT/model.keras)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras archive")
    model = keras.saving.load_model(path, **kwargs)
    model.class_names = class_names_in(path)
    return model
