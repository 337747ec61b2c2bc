"""Edge TPU: a uint8 `.tflite` ready for `edgetpu_compiler`, and a report of which
ops the Edge TPU would run.

The report reads the converted flatbuffer op by op and checks each against
Coral's published requirements (coral.ai/docs/edgetpu/models-intro: the
supported-operation table with its known limitations, 8-bit tensors only,
static shapes, at most 3 dimensions larger than 1), plus the limits Coral's
maintainers have stated on their tracker, each cited where it is used. The
compiler maps ops in order until the first one it cannot map; that op and
every op after it run on the CPU. When `edgetpu_compiler` is on PATH it is run
and its own log is parsed into the same report. Coral ships it only for x86-64
Debian/Ubuntu through apt, so where it is missing the report says so and the
file is still written, ready to compile elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from keras_effnet.export.data import representative_images
from keras_effnet.export.flatbuffer import OpInfo, read_model
from keras_effnet.export.metadata import class_names_for, model_metadata
from keras_effnet.export.se import check_se
from keras_effnet.export.tflite import convert, input_size
from keras_effnet.files import check_destination, write_bytes

__all__ = [
    "EDGETPU_OPS",
    "EdgeTPUMappingError",
    "EdgeTPUReport",
    "OpStatus",
    "analyze_edgetpu",
    "parse_compiler_log",
    "to_edgetpu",
]

# Coral's supported-operation table (coral.ai/docs/edgetpu/models-intro), as
# TFLite builtin names, with the known limitation the table gives.
EDGETPU_OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weight format; one-dimensional output",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional only",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction over the batch; a z-reduction needs a multiple of 4 channels",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension",
    "PRELU": "alpha one-dimensional",
    "QUANTIZE": "",
    "REDUCE_MAX": "not over the batch dimension",
    "REDUCE_MIN": "not over the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "large reshapes may stay on the CPU",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU for precision",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may stay on the CPU for precision",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no split in the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "",
    "SUB": "",
    "SUM": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}
# google-coral/edgetpu#461: a Coral maintainer found a Mean over a 1x256x128 map
# unmappable and the same split into 1x64x128 parts mapped; #183 reports a
# compiler failure for a global mean over 256x256. We flag reductions above the
# largest extent known to map.
MEAN_MAX_REDUCED = 64 * 128
SOFTMAX_MAX_ELEMENTS = 16_000
_NOT_LISTED_NOTES = {
    "HARD_SWISH": "not on Coral's list (google-coral/edgetpu#272); use se='hard' through "
                  "to_edgetpu, which writes hard swish as MUL/ADD/RELU/MINIMUM",
    "DEQUANTIZE": "float output: not on Coral's list",
}
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
_EIGHT_BIT = ("INT8", "UINT8")
_POOL_LIKE = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")


class EdgeTPUMappingError(ValueError):
    """strict=True and some op would not run on the Edge TPU."""


def _layer_of(tensor_name: str) -> str:
    """'model/block1a_se_squeeze_1/Mean' -> 'block1a_se_squeeze' (the converter's naming)."""
    chunk = tensor_name.split(";")[-1] or tensor_name
    parts = chunk.split("/")
    name = parts[1] if len(parts) > 2 else parts[0]
    return re.sub(r"_\d+$", "", name)


def _big_dims(shape) -> int:
    return sum(1 for d in shape if d > 1)


def _check_tensors(op: OpInfo) -> str:
    """Coral's rules for every non-constant tensor: 8-bit, static, at most 3-D."""
    for t in op.inputs + op.outputs:
        if t.constant:
            continue
        if t.dtype not in _EIGHT_BIT and not (op.op == "QUANTIZE" and t in op.inputs):
            return f"{t.dtype.lower()} tensor {t.name!r}: the Edge TPU runs 8-bit tensors only"
        if any(d < 0 for d in t.signature):
            return f"dynamic shape {list(t.signature)}: the Edge TPU needs static shapes"
        if _big_dims(t.shape[:-3]) > 0:
            return f"tensor shape {list(t.shape)}: only the 3 innermost dimensions may exceed 1"
    return ""


def _check_pool_like(op: OpInfo) -> str:
    if getattr(op.options, "fusedActivationFunction", 0):
        return "fused activation function (Coral: not supported on this op)"
    return ""


def _check_conv(op: OpInfo) -> str:
    dh = getattr(op.options, "dilationHFactor", 1)
    dw = getattr(op.options, "dilationWFactor", 1)
    return f"dilation {dh}x{dw}: Coral needs the same dilation in x and y" if dh != dw else ""


def _check_mean(op: OpInfo) -> str:
    shape = op.inputs[0].shape
    axes = op.inputs[1].data.view(np.int32) if op.inputs[1].data is not None else []
    axes = sorted(int(a) % len(shape) for a in axes)
    if 0 in axes:
        return "reduces over the batch dimension"
    if len(shape) - 1 in axes and shape[-1] % 4:
        return f"reduces over {shape[-1]} channels, not a multiple of 4"
    extent = int(np.prod([shape[a] for a in axes])) if axes else 1
    if extent > MEAN_MAX_REDUCED:
        dims = "x".join(str(shape[a]) for a in axes)
        return (f"mean over {dims} = {extent} values, above the largest Coral has seen map "
                f"({MEAN_MAX_REDUCED}, google-coral/edgetpu#461): use se='pool'")
    return ""


def _check_softmax(op: OpInfo) -> str:
    shape = op.inputs[0].shape
    if _big_dims(shape) > 1 or int(np.prod(shape)) > SOFTMAX_MAX_ELEMENTS:
        return f"softmax over {list(shape)}: Coral maps 1-D inputs of <= 16,000 elements"
    return ""


def _check_fully_connected(op: OpInfo) -> str:
    if _big_dims(op.outputs[0].shape) > 1:
        return f"output {list(op.outputs[0].shape)} is not one-dimensional"
    return ""


# the op-specific rules of Coral's table, beyond the tensor rules every op obeys
_OP_RULES = {
    **dict.fromkeys(_POOL_LIKE, _check_pool_like),
    "CONV_2D": _check_conv,
    "DEPTHWISE_CONV_2D": _check_conv,
    "MEAN": _check_mean,
    "SOFTMAX": _check_softmax,
    "FULLY_CONNECTED": _check_fully_connected,
}


def _check_op(op: OpInfo) -> str:
    """Why this op would not map, or '' when Coral's rules allow it."""
    if op.op not in EDGETPU_OPS:
        return _NOT_LISTED_NOTES.get(op.op, "not on Coral's supported-op list")
    rule = _OP_RULES.get(op.op)
    return _check_tensors(op) or (rule(op) if rule is not None else "")


@dataclasses.dataclass
class OpStatus:
    index: int
    op: str
    layer: str
    status: str          # "mapped", "unmapped" or "cpu" (after the first unmapped op)
    reason: str = ""


@dataclasses.dataclass
class EdgeTPUReport:
    """Which ops of a `.tflite` the Edge TPU runs, and where mapping stops."""

    path: str | None
    ops: list
    compiled: bool = False
    compiler: dict | None = None
    note: str = ""

    @property
    def first_unmapped(self) -> OpStatus | None:
        return next((o for o in self.ops if o.status == "unmapped"), None)

    @property
    def mapped(self) -> int:
        return sum(o.status == "mapped" for o in self.ops)

    @property
    def on_cpu(self) -> int:
        return len(self.ops) - self.mapped

    @property
    def all_mapped(self) -> bool:
        if self.compiler is not None:
            return self.compiler.get("cpu_ops", 1) == 0
        return not self.compiled and self.on_cpu == 0

    def counts(self) -> list[tuple[str, int, str]]:
        """(op, count, status) rows, like the compiler's own summary."""
        rows = Counter((o.op, o.status, o.reason) for o in self.ops)
        return [(op, n, status if not reason else f"{status}: {reason}")
                for (op, status, reason), n in sorted(rows.items())]

    def summary(self) -> str:
        if self.compiled:
            return self.note
        lines = [(f"Edge TPU report for {self.path or 'the model'}: {self.mapped} of "
                 f"{len(self.ops)} ops map to the Edge TPU, {self.on_cpu} run on the CPU")]
        first = self.first_unmapped
        if first is not None:
            lines.append(f"  mapping stops at op {first.index} {first.op} ({first.layer}): "
                         f"{first.reason}")
        lines.append(f"  {'operator':<24} {'count':>5}  status")
        lines += [f"  {op:<24} {n:>5}  {status}" for op, n, status in self.counts()]
        if self.compiler is not None:
            lines.append(f"  edgetpu_compiler {self.compiler.get('version', '?')}: "
                         f"{self.compiler.get('edgetpu_ops', '?')} ops on the Edge TPU, "
                         f"{self.compiler.get('cpu_ops', '?')} on the CPU")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        first = self.first_unmapped
        return {
            "path": self.path, "compiled": self.compiled, "ops": len(self.ops),
            "mapped": self.mapped, "cpu": self.on_cpu, "all_mapped": self.all_mapped,
            "first_unmapped": dataclasses.asdict(first) if first else None,
            "counts": [list(row) for row in self.counts()],
            "unmapped": [dataclasses.asdict(o) for o in self.ops if o.status == "unmapped"],
            "compiler": self.compiler, "note": self.note,
        }


def analyze_edgetpu(source) -> EdgeTPUReport:
    """The Edge TPU report for a `.tflite` (bytes or a path) without compiling it."""
    graph = read_model(source)
    path = None if isinstance(source, (bytes, bytearray)) else str(source)
    custom = [op for op in graph.ops if op.op == EDGETPU_CUSTOM_OP]
    if custom:
        rest = [op.op for op in graph.ops if op.op != EDGETPU_CUSTOM_OP]
        note = (f"{path or 'this model'} is already compiled for the Edge TPU: "
                f"{len(custom)} {EDGETPU_CUSTOM_OP} op(s) hold the mapped part"
                + (f", {len(rest)} op(s) run on the CPU ({', '.join(sorted(set(rest)))})"
                   if rest else ", nothing runs on the CPU")
                + ". It runs only through the Edge TPU delegate (libedgetpu) on a Coral device;"
                " analyse or verify the uncompiled .tflite instead.")
        ops = [OpStatus(op.index, op.op, _layer_of(op.output_names[0]) if op.outputs else "",
                        "mapped" if op.op == EDGETPU_CUSTOM_OP else "cpu") for op in graph.ops]
        return EdgeTPUReport(path, ops, compiled=True, note=note)
    statuses, stopped = [], False
    for op in graph.ops:
        layer = _layer_of(op.output_names[0]) if op.outputs else ""
        if stopped:
            statuses.append(OpStatus(op.index, op.op, layer, "cpu",
                                     "after the first unmapped op"))
            continue
        reason = _check_op(op)
        if reason:
            stopped = True
            statuses.append(OpStatus(op.index, op.op, layer, "unmapped", reason))
        else:
            statuses.append(OpStatus(op.index, op.op, layer, "mapped"))
    return EdgeTPUReport(path, statuses)


_LOG_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """edgetpu_compiler's summary (stdout or the .log file) as data."""
    result: dict = {"ops": []}
    version = re.search(r"Edge TPU Compiler version (\S+)", text)
    if version:
        result["version"] = version.group(1)
    for key, pattern in (("edgetpu_ops", r"operations that will run on Edge TPU:\s*(\d+)"),
                         ("cpu_ops", r"operations that will run on CPU:\s*(\d+)"),
                         ("subgraphs", r"Number of Edge TPU subgraphs:\s*(\d+)"),
                         ("total_ops", r"Total number of operations:\s*(\d+)")):
        match = re.search(pattern, text)
        if match:
            result[key] = int(match.group(1))
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status", line):
            in_table = True
            continue
        match = _LOG_ROW.match(line.strip()) if in_table else None
        if match:
            result["ops"].append((match.group(1), int(match.group(2)), match.group(3)))
    if "cpu_ops" not in result and result["ops"]:
        result["cpu_ops"] = sum(n for _, n, status in result["ops"]
                                if not status.startswith("Mapped to Edge TPU"))
        result["edgetpu_ops"] = sum(n for _, n, status in result["ops"]
                                    if status.startswith("Mapped to Edge TPU"))
    return result


def _run_compiler(compiler: str, path: Path, overwrite: bool) -> tuple[dict, Path]:
    compiled = path.with_name(path.stem + "_edgetpu.tflite")
    check_destination(compiled, overwrite)
    with tempfile.TemporaryDirectory(prefix="keras_effnet_edgetpu_") as out:
        run = subprocess.run([compiler, "-s", "-o", out, str(path)], capture_output=True,
                             text=True, timeout=900, check=False)
        log_file = Path(out) / (path.stem + "_edgetpu.log")
        text = run.stdout + "\n" + (log_file.read_text() if log_file.exists() else "")
        if run.returncode != 0:
            raise RuntimeError(f"edgetpu_compiler failed (exit {run.returncode}) on {path}:\n"
                               f"{run.stdout}{run.stderr}")
        produced = Path(out) / compiled.name
        if not produced.exists():
            raise RuntimeError(f"edgetpu_compiler wrote no {compiled.name}:\n{run.stdout}")
        write_bytes(compiled, produced.read_bytes(), overwrite)
    return parse_compiler_log(text), compiled


def to_edgetpu(model, path: str | os.PathLike, representative_data, se="keep", *,
               batch_size: int | None = 1, image_size: int | None = None, strict: bool = False,
               overwrite: bool = False, compiler: str | None = "edgetpu_compiler",
               progress: bool = True, labels=None, metadata: bool = True) -> EdgeTPUReport:
    """Full-integer uint8 `.tflite` at `path` for the Edge TPU, and its op report.

    The file has a static (1, H, W, 3) uint8 input (raw pixels) and uint8
    probabilities. With `strict=True` a model that would not map entirely raises
    `EdgeTPUMappingError` and nothing is written. When `compiler` is found on
    PATH it is run, writing `<name>_edgetpu.tflite` beside `path`. `labels` and
    `metadata` as for `to_tflite`: the file names its classes.
    """
    if batch_size != 1:
        raise ValueError(f"the Edge TPU needs a static batch of 1, got batch_size={batch_size!r}: "
                         "dynamic or larger batches do not compile")
    check_se(model, se)
    path = check_destination(path, overwrite)
    height, width = input_size(model, image_size)
    names = class_names_for(model, labels) if metadata else None
    images = representative_images(representative_data, (height, width, 3))
    # the space-to-depth stem is for CPU integer kernels; what the Edge TPU does with
    # it is not measurable here, so its files keep the stem Coral's compiler has seen
    content = convert(model, "uint8", se=se, batch_size=1, image_size=image_size,
                      progress=progress, images=images, space_to_depth=False)
    if metadata:
        content = model_metadata(content, model, names)
    report = analyze_edgetpu(content)
    report.path = str(path)
    if strict and not report.all_mapped:
        raise EdgeTPUMappingError(
            f"strict=True: {report.on_cpu} of {len(report.ops)} ops would run on the CPU, so "
            f"nothing was written.\n{report.summary()}\nTry se='hard+pool' for SE models.")
    write_bytes(path, content, overwrite)
    found = shutil.which(compiler) if compiler else None
    if found:
        report.compiler, compiled = _run_compiler(found, path, overwrite)
        report.note = f"compiled with {found}: {compiled}"
    else:
        report.note = (f"{compiler or 'edgetpu_compiler'} is not on PATH (Coral ships it for "
                       "x86-64 Debian/Ubuntu: apt-get install edgetpu-compiler), so this report "
                       f"comes from Coral's published op table; compile with "
                       f"`edgetpu_compiler -s {path}`")
    return report
