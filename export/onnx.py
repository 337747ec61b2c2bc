"""Keras model -> ONNX, for users who serve on ONNX Runtime.

Keras 3's own `model.export(format="onnx")` does the conversion (on the TensorFlow
backend it goes through tf2onnx, the maintained converter). The file has one input,
`images` float32 [N, H, W, 3] with pixels 0-255 (the preprocessing is inside), and
the outputs `probabilities` and, when the model ends in a softmax classifier, `logits`
(what `verify` compares against Keras). Needs the `onnx` extra:
pip install "keras-effnet[onnx]".
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from keras_effnet.files import check_destination, write_bytes

__all__ = ["onnx_session", "run_onnx", "to_onnx"]


def _with_logits(model):
    """`model` with a second output, the logits, when it ends in a softmax Dense (a twin
    Dense with no activation on the same input and weights); else `model`."""
    import keras

    dense = model.layers[-1]
    if not isinstance(dense, keras.layers.Dense) or \
            getattr(dense.activation, "__name__", "") != "softmax":
        return model
    config = dense.get_config()
    config.update(activation="linear", name="logits")
    twin = keras.layers.Dense.from_config(config)
    logits = twin(dense.input)
    twin.set_weights(dense.get_weights())
    return keras.Model(model.input, [model.output, logits], name=model.name)


def to_onnx(model, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `model` as an ONNX file (any batch size) and return its path."""
    try:
        import tf2onnx  # noqa: F401  (Keras' exporter needs it on the TensorFlow backend)
    except ImportError as exc:
        raise ImportError("ONNX export needs tf2onnx: pip install 'keras-effnet[onnx]'") from exc
    path = check_destination(path, overwrite)
    exported = _with_logits(model)
    shape = tuple(model.input_shape[1:])
    if None in shape:
        raise ValueError(f"ONNX export needs a fixed image size, the model takes {shape}: "
                         "build it with input_shape=(H, W, 3)")
    exported(np.zeros((1, *shape), np.float32))  # Keras exports only models that have run
    with tempfile.TemporaryDirectory(prefix="keras-effnet-onnx-") as folder:
        partial = os.path.join(folder, "model.onnx")
        exported.export(partial, format="onnx", verbose=False)
        content = Path(partial).read_bytes()
    write_bytes(path, content, overwrite)
    return path


def onnx_session(path, threads: int | None = None):
    """An ONNX Runtime CPU session; `threads` fixes the intra-op thread count."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("running .onnx files needs onnxruntime: pip install "
                          "'keras-effnet[onnx]'") from exc
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, batch_size: int = 16):
    """(probabilities, logits or None) of an exported file on float pixels 0-255."""
    name = session.get_inputs()[0].name
    probs, logits = [], []
    for start in range(0, len(images), batch_size):
        outputs = session.run(None, {name: images[start:start + batch_size]})
        probs.append(outputs[0])
        if len(outputs) > 1:
            logits.append(outputs[1])
    return np.concatenate(probs), (np.concatenate(logits) if logits else None)
