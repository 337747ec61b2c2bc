"""Fault-tolerant training state: model weights, optimizer state and the step, saved atomically.

Keras' `BackupAndRestore` keeps the model's weights and the epoch; a run
killed mid-epoch restarts that epoch, and the optimizer (its step counter,
RMSprop's accumulators, the weight average) starts again from zero, which
moves the learning-rate schedule back to its warm-up. `TrainingState` saves
all of it every N steps and at every epoch end, as one file written to a
temporary name and renamed (a kill mid-write leaves the previous save), and
`restore` puts it back so the run continues from the step it had reached.
Paths go through `tf.io.gfile`, so `--out gs://...` works on a TPU VM, and
only the chief worker writes.
"""

from __future__ import annotations

import io
import json
import time

import keras
import numpy as np

__all__ = ["STATE_FILE", "TrainingState", "load_state", "restore", "weights_norm"]

STATE_FILE = "state.npz"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _optimizer_variables(optimizer) -> list:
    return list(optimizer.variables)


def weights_norm(model_or_arrays) -> float:
    """The L2 norm of all of a model's weights (or a list of arrays): a resume fingerprint."""
    arrays = model_or_arrays.get_weights() if hasattr(model_or_arrays, "get_weights") \
        else model_or_arrays
    return float(np.sqrt(sum(np.square(np.asarray(a, np.float64)).sum() for a in arrays)))


def save_state(directory: str, model: keras.Model, meta: dict) -> str:
    """Write weights, optimizer variables and `meta` to directory/state.npz atomically."""
    gfile = _gfile()
    gfile.makedirs(directory)
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    for i, variable in enumerate(_optimizer_variables(model.optimizer)):
        arrays[f"o{i}"] = np.asarray(keras.ops.convert_to_numpy(variable))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = f"{directory}/{STATE_FILE}"
    for stale in gfile.glob(f"{path}.tmp-*"):  # left by a run killed mid-write
        gfile.remove(stale)
    temporary = f"{path}.tmp-{int(time.time() * 1e6)}"
    with gfile.GFile(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
    gfile.rename(temporary, path, overwrite=True)
    return path


def load_state(directory: str) -> tuple[dict, list, list] | None:
    """(meta, model weights, optimizer values) of the last save, or None when there is none."""
    gfile = _gfile()
    path = f"{directory}/{STATE_FILE}"
    if not gfile.exists(path):
        return None
    with gfile.GFile(path, "rb") as handle:
        data = np.load(io.BytesIO(handle.read()))
        meta = json.loads(bytes(data["meta"]).decode())
        weights = [data[f"w{i}"] for i in range(meta["model_arrays"])]
        optimizer = [data[f"o{i}"] for i in range(meta["optimizer_arrays"])]
    return meta, weights, optimizer


def restore(directory: str, model: keras.Model, expect: dict | None = None) -> dict | None:
    """Load the last save into a compiled `model` (under its strategy's scope); its meta or None.

    `expect` lists meta values that must match (global batch, steps per
    epoch, model name): resuming with another batch would replay a different
    order of images, so that is refused with a message rather than guessed.
    All or nothing: every check runs before the first value is assigned, so a
    refused checkpoint leaves the model and its optimizer as they were.
    """
    state = load_state(directory)
    if state is None:
        return None
    meta, weights, values = state
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise ValueError(
                f"the checkpoint in {directory} was written with {key}={meta.get(key)!r}, this "
                f"run has {key}={value!r}; run with the same settings to resume, or give a new "
                "--out to start over")
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = _optimizer_variables(optimizer)
    if len(variables) != len(values):
        raise ValueError(
            f"the checkpoint in {directory} holds {len(values)} optimizer variables, the "
            f"optimizer here has {len(variables)}: it was written by a different recipe "
            "(EMA, mixed precision or trainable layers differ); use a new --out")
    ours = [tuple(w.shape) for w in model.weights] + [tuple(v.shape) for v in variables]
    theirs = [tuple(np.shape(a)) for a in list(weights) + list(values)]
    if ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b) \
            if len(ours) == len(theirs) else min(len(ours), len(theirs))
        raise ValueError(
            f"the checkpoint in {directory} does not fit this model: array {first} has shape "
            f"{theirs[first] if first < len(theirs) else 'none'}, the model's "
            f"{ours[first] if first < len(ours) else 'none'}; use a new --out")
    model.set_weights(weights)
    for variable, value in zip(variables, values):
        variable.assign(value)
    return meta


class TrainingState(keras.callbacks.Callback):
    """Save every `every_steps` steps and at each epoch end; stop at `total_steps`.

    `start_step` is the global step the run resumed at (0 for a new run), so
    the saved step counts from the start of training, not of this process;
    `restored_norm` the restored weights' norm (the summary reports it).
    """

    def __init__(self, directory: str, *, start_step: int, total_steps: int,
                 steps_per_epoch: int, every_steps: int = 0, writer: bool = True,
                 meta: dict | None = None, restored_norm: float | None = None):
        super().__init__()
        self.directory = directory
        self.start_step = start_step
        self.restored_norm = restored_norm
        self.step = start_step
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.writer = writer
        self.meta = dict(meta or {})
        self.saved_at = None
        self.saves = 0

    def _save(self) -> None:
        if self.saved_at == self.step:
            return
        self.saved_at = self.step
        if not self.writer:
            return
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        meta = {**self.meta, "global_step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "step_in_epoch": self.step % self.steps_per_epoch,
                "optimizer_iterations": iterations, "saved_at": time.time(),
                "model_arrays": len(self.model.get_weights()),
                "optimizer_arrays": len(_optimizer_variables(self.model.optimizer))}
        save_state(self.directory, self.model, meta)
        self.saves += 1

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every_steps and self.step % self.every_steps == 0:
            self._save()
        if self.step >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._save()
