"""Reading `.tflite` flatbuffers without running them: ops, tensors, constants.

Uses the generated flatbuffer schema that LiteRT ships (TensorFlow carries the
same module), so a model that needs a delegate we do not have (an Edge TPU
compiled file) can still be inspected.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = ["OpInfo", "TFLiteGraph", "TensorInfo", "read_model", "with_input_quantization",
           "with_signature"]


@dataclasses.dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    signature: tuple
    constant: bool
    data: np.ndarray | None = None
    index: int = -1
    quantization: tuple | None = None  # (scale, zero point) of a per-tensor quantized tensor


@dataclasses.dataclass
class OpInfo:
    index: int
    op: str
    version: int
    inputs: list
    outputs: list
    options: object = None

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclasses.dataclass
class TFLiteGraph:
    ops: list
    inputs: list
    outputs: list


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # TensorFlow carries the same generated module
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def read_model(source) -> TFLiteGraph:
    """Ops and tensors of the first subgraph of a `.tflite` (bytes or a path)."""
    schema = _schema()
    content = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(f"{source if not isinstance(source, bytes) else 'the data'} is not a "
                         "TFLite flatbuffer (no TFL3 identifier)")
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]

    def tensor(index):
        t = graph.tensors[index]
        buffer = model.buffers[t.buffer] if model.buffers and t.buffer < len(model.buffers) \
            else None
        data = None if buffer is None or buffer.data is None else np.asarray(buffer.data)
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None \
            else shape
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        q = t.quantization
        quantization = None
        if q is not None and q.scale is not None and len(q.scale) == 1:
            quantization = (float(q.scale[0]), int(q.zeroPoint[0]))
        return TensorInfo(name, types.get(t.type, str(t.type)), shape, signature,
                          data is not None and data.size > 0, data, index, quantization)

    ops = []
    for i, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            custom = code.customCode
            name = custom.decode() if isinstance(custom, bytes) else str(custom)
        ins = [tensor(j) for j in (op.inputs if op.inputs is not None else []) if j >= 0]
        outs = [tensor(j) for j in (op.outputs if op.outputs is not None else [])]
        ops.append(OpInfo(i, name, code.version, ins, outs, op.builtinOptions))
    return TFLiteGraph(ops, [tensor(j) for j in graph.inputs], [tensor(j) for j in graph.outputs])


def with_signature(content: bytes, key: str, inputs: list[str], outputs: list[str]) -> bytes:
    """`content` with a SignatureDef `key` naming the first subgraph's inputs and outputs
    (in their order), the way a SavedModel's signature comes through the converter;
    LiteRT's signature runners and CompiledModel find a model's tensors through it.
    Call it before adding metadata: the repacked flatbuffer loses the associated files
    (labels) that MediaPipe's populator appends after it, as does
    `with_input_quantization`."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph = model.subgraphs[0]
    if (len(graph.inputs), len(graph.outputs)) != (len(inputs), len(outputs)):
        raise ValueError(f"the model has {len(graph.inputs)} inputs and {len(graph.outputs)} "
                         f"outputs; the signature names {len(inputs)} and {len(outputs)}")

    def tensor_map(name, index):
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        return entry

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = key, 0
    signature.inputs = [tensor_map(n, i) for n, i in zip(inputs, graph.inputs)]
    signature.outputs = [tensor_map(n, i) for n, i in zip(outputs, graph.outputs)]
    model.signatureDefs = [signature]
    return _pack(model)


def with_input_quantization(content: bytes, scale: float, zero_point: int) -> bytes:
    """`content` with its (quantized) input read as scale * (q - zero_point); the ops
    after it take their own quantization from their tensors, so the QUANTIZE after a
    uint8 input requantizes from the new pair."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    if tensor.quantization is None or tensor.quantization.scale is None or \
            len(tensor.quantization.scale) != 1:
        raise ValueError("the model's input is not per-tensor quantized")
    tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [zero_point]
    return _pack(model)


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output())
