"""Saving and loading a classifier together with its class names.

    save_model(model, "out/model.keras", class_names=["daisy", "rose", "tulip"])
    model = load_model("out/model.keras")
    model.class_names        # ('daisy', 'rose', 'tulip'), or None
    model.training_data      # {"train": "/data/train", "val": "/data/val"}, or None

The names travel inside the `.keras` archive (an extra member, `keras_effnet/
class_names.json`, which Keras' loader leaves alone), so a model file moved on its own
still names its classes when it is exported; `labels.txt` beside it is for people.
`keras-effnet train` saves through here and `keras-effnet export --model FILE.keras`
loads through here.

A file written here loads in plain Keras, without keras_effnet installed: our layers
(the stem's Normalization, the fused BatchNormalization, the XLA-friendly
DepthwiseConv2D) are saved as Keras' own, which compute the same function
(`keras_effnet.layers.plain_twin`), and `load_model` here puts ours back, so a model
loaded through keras_effnet keeps their speed. The file holds the weights, not a
compiled optimizer (training state lives in the run's checkpoints).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

from keras_effnet.files import exists, is_remote, read_bytes, write_bytes, write_text

__all__ = ["CLASS_NAMES_MEMBER", "PLAIN_LAYERS_MEMBER", "TRAINING_DATA_MEMBER", "class_names_in",
           "load_model", "plain_keras", "save_model", "training_data_in", "with_fast_layers"]

CLASS_NAMES_MEMBER = "keras_effnet/class_names.json"
TRAINING_DATA_MEMBER = "keras_effnet/training_data.json"
PLAIN_LAYERS_MEMBER = "keras_effnet/plain_layers.json"  # our layers saved as Keras' own


def save_model(model, path: str | os.PathLike, class_names=None, *,
               labels_file: bool = True, training_data: dict | None = None) -> str:
    """Save `model` to a `.keras` file at `path` (local, `gs://`, `ram://`; whole or not
    at all), with `class_names` inside; also `labels.txt` beside it when `labels_file`.
    `training_data` ({"train": folder, "val": folder or None}) records where the photos
    it was trained on are, so an export can calibrate and verify on them."""
    from keras_effnet.export.metadata import LABELS_FILE, check_labels

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"expected a path ending in .keras, got {path!r}")
    classes = model.output_shape[-1]
    names = None if class_names is None else check_labels(class_names, classes, "class_names")
    plain, swapped = plain_keras(model)
    with tempfile.TemporaryDirectory(prefix="keras_effnet_save_") as folder:
        local = os.path.join(folder, "model.keras")
        plain.save(local)
        with zipfile.ZipFile(local, "a") as archive:
            archive.writestr(PLAIN_LAYERS_MEMBER, json.dumps(swapped))
            if names is not None:
                archive.writestr(CLASS_NAMES_MEMBER, json.dumps(names))
            if training_data:
                archive.writestr(TRAINING_DATA_MEMBER, json.dumps(training_data))
        with open(local, "rb") as handle:
            write_bytes(path, handle.read())
    if names is not None and labels_file:
        write_text(os.path.join(os.path.dirname(path), LABELS_FILE), "\n".join(names) + "\n")
    return path


def _swap(model, twin) -> tuple:
    """A copy of `model` with `twin(layer)`'s replacements, every other layer cloned (not
    shared: a shared layer would gain a second call in the caller's model), all weights
    copied; and the names of the replaced layers."""
    from keras_effnet import graph

    twins = {id(layer): (layer.name, found) for layer in graph.layers(model, nested="leaves")
             if (found := twin(layer)) is not None}
    if not twins:
        return model, []
    copies: list = []

    def replace(layer):
        _, found = twins.get(id(layer), (None, None))
        if found is None:
            found = type(layer).from_config(layer.get_config()), layer.get_weights()
        copies.append(found)
        return found[0]

    new = graph.rebuild(model, replace=replace, recursive=True)
    for layer, weights in copies:
        if weights:
            layer.set_weights(weights)
    return new, sorted(name for name, _ in twins.values())


def plain_keras(model):
    """(`model` with Keras' own layers in place of ours, the names of those layers): the
    same function, loadable by Keras alone. `model` itself is not changed."""
    from keras_effnet.layers import plain_twin

    return _swap(model, plain_twin)


def with_fast_layers(model, names=None):
    """`model` with our layers back in place of the Keras ones `plain_keras` put there
    (`names`: those layers; default: every one that has a twin)."""
    from keras_effnet.layers import fast_twin

    chosen = None if names is None else set(names)
    return _swap(model, lambda layer: fast_twin(layer)
                 if chosen is None or layer.name in chosen else None)[0]


def _archive(path) -> io.BytesIO:
    if not exists(path):
        raise ValueError(f"no model file at {os.fspath(path)!r}: expected a .keras file "
                         "(keras-effnet train writes OUT/model.keras)")
    data = io.BytesIO(read_bytes(path))
    if not zipfile.is_zipfile(data):
        raise ValueError(f"{os.fspath(path)} is not a .keras archive")
    return data


def class_names_in(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names saved inside a `.keras` file, or None."""
    return _class_names(_archive(path), path)


def training_data_in(path: str | os.PathLike) -> dict | None:
    """Where the photos a `.keras` file was trained on are ({"train", "val"}), or None."""
    return _training_data(_archive(path))


def _member(data: io.BytesIO, name: str):
    with zipfile.ZipFile(data) as archive:
        if name not in archive.namelist():
            return None
        return json.loads(archive.read(name))


def _training_data(data: io.BytesIO) -> dict | None:
    return _member(data, TRAINING_DATA_MEMBER)


def _class_names(data: io.BytesIO, path) -> tuple[str, ...] | None:
    names = _member(data, CLASS_NAMES_MEMBER)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: {CLASS_NAMES_MEMBER} is not a list of class names")
    return tuple(names)


def load_model(path: str | os.PathLike, **kwargs):
    """`keras.saving.load_model` (local, `gs://`, `ram://`), plus `model.class_names` (a
    tuple, or None). The training recipe's optimizer and schedule are registered first,
    so a model that `keras-effnet train` saved loads compiled."""
    import keras

    import keras_effnet.training.recipe  # noqa: F401 - registers RMSpropEMA and its schedule

    data = _archive(path)
    if is_remote(path):  # Keras reads local files; the bytes are in memory already
        with tempfile.TemporaryDirectory(prefix="keras_effnet_load_") as folder:
            local = os.path.join(folder, "model.keras")
            with open(local, "wb") as handle:
                handle.write(data.getvalue())
            model = keras.saving.load_model(local, **kwargs)
    else:
        model = keras.saving.load_model(os.fspath(path), **kwargs)
    swapped = _member(data, PLAIN_LAYERS_MEMBER)
    if swapped:
        model = with_fast_layers(model, swapped)
    model.class_names = _class_names(data, path)
    model.training_data = _training_data(data)
    return model
