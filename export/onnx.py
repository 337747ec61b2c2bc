"""Keras model -> ONNX, for users who serve on ONNX Runtime.

Keras 3's own `model.export(format="onnx")` does the conversion (on the TensorFlow
backend it goes through tf2onnx, the maintained converter). tf2onnx leaves shape round
trips in each squeeze-excitation branch (the pooled (N, C, 1, 1) squeezed to (N, C) and
reshaped back, for a 1x1 conv that takes (N, C, 1, 1) anyway); ONNX Runtime runs them,
and they cut its NCHWc layout into pieces that it reorders in and out
(benchmarks/op_account.py). `drop_shape_round_trips` removes every Reshape/Squeeze/
Unsqueeze chain that ends in the shape it started from. The file has one input,
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

__all__ = ["drop_shape_round_trips", "onnx_session", "run_onnx", "to_onnx"]

_SHAPE_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


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


def _static_shapes(graph) -> dict:
    """Tensor name -> shape tuple, a symbolic dimension as None; only tensors with at
    most one symbolic dimension (the batch), whose equal shapes mean equal sizes."""
    shapes = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        if info.type.tensor_type.HasField("shape") and shape.count(None) <= 1:
            shapes[info.name] = shape
    return shapes


def _round_trips(graph) -> dict:
    """Output of the last node of each shape-op chain that restores the chain's input
    shape -> that input (the earliest tensor of the chain with the same shape)."""
    shapes = _static_shapes(graph)
    producer = {name: node for node in graph.node for name in node.output}
    uses: dict = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    rename = {}
    for node in graph.node:
        target = shapes.get(node.output[0])
        if node.op_type not in _SHAPE_OPS or node.output[0] in outputs or target is None:
            continue
        source, earliest = node.input[0], None
        while True:
            if shapes.get(source) == target:
                earliest = source
            before = producer.get(source)
            if before is None or before.op_type not in _SHAPE_OPS or uses.get(source) != 1:
                break
            source = before.input[0]
        if earliest is not None:
            rename[node.output[0]] = earliest
    return rename


def drop_shape_round_trips(model):
    """`model` (an onnx ModelProto) without the chains of Reshape/Squeeze/Unsqueeze/Flatten
    nodes whose output has the shape of the chain's input: their consumers read that
    input instead, and nodes left without a consumer are dropped. The same function
    (these ops only relabel the same values in the same order)."""
    import onnx

    rename = _round_trips(onnx.shape_inference.infer_shapes(model).graph)
    if not rename:
        return model

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name

    kept = list(model.graph.node)
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    outputs = {o.name for o in model.graph.output}
    while True:  # drop what nothing reads any more
        read = {name for node in kept for name in node.input} | outputs
        alive = [node for node in kept if any(name in read for name in node.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


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
        import onnx

        content = drop_shape_round_trips(onnx.load(partial)).SerializeToString()
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
