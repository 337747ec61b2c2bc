"""Writing `.pth` files without torch, and mutation fuzzing of the safe reader.

`write_pth` reproduces torch.save's two layouts (legacy and zip) with the standard
pickle module; placeholder `torch` modules stand in while it pickles, so neither the
tests nor the fuzz worker need torch.

The fuzz cases start from *coded* files: element j of every storage holds the number
j. A tensor read correctly from such a file therefore holds offset + sum(i_k * stride_k)
at index i with every value inside its storage; a read outside the storage or through
a negative stride gives numbers that break that pattern (`check_coded`). The worker
(`python tests/pth_fuzz.py BASE...`) reads case numbers on stdin, builds each mutated
file from (base, seed, number), reads it with `read_state_dict` and answers one JSON
line; `run_cases` restarts it whenever it dies, so a crash fails the case that ran.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tempfile
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_TYPES = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                 "int64": "LongStorage", "int32": "IntStorage"}
HOSTILE_INTS = (-1, -2, -1000, -(2**31), -(2**63), 0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1,
                2**32, 2**62, 2**63 - 1, 2**64, 2**100)


@dataclass(frozen=True)
class Tensor:
    """One state-dict entry: a view of `storage` (a key of the storages dict)."""
    storage: str
    offset: int
    size: tuple
    stride: tuple
    storage_type: str | None = None  # a dtype name: describe the storage as another type


@contextlib.contextmanager
def fake_torch():
    """Placeholder `torch` and `torch._utils` modules, so pickle can name their globals."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in STORAGE_TYPES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: the reader resolves it to its own stand-in")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch, utils
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_pth(path, storages: dict, tensors: dict, zip_format: bool,
              claimed: dict | None = None) -> None:
    """Write a state dict of `tensors` ({name: Tensor}) over `storages` ({key: array}),
    as torch.save would; `claimed` ({key: numel}) makes the file state other lengths."""
    claimed = {key: array.size for key, array in storages.items()} | (claimed or {})
    class _Ref:
        def __init__(self, key, tensor):
            self.key, self.tensor = key, tensor

        def __reduce__(self):
            t = self.tensor
            return (utils._rebuild_tensor_v2,
                    (("storage", t.storage, t.storage_type), t.offset, t.size, t.stride, False,
                     collections.OrderedDict()))

    with fake_torch() as (torch, utils):
        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, tuple) and len(obj) == 3 and obj[0] == "storage":
                    array = storages[obj[1]]
                    kind = getattr(torch, STORAGE_TYPES[obj[2] or array.dtype.name])
                    return ("storage", kind, obj[1], "cpu", claimed[obj[1]])
                return None

        body = io.BytesIO()
        Pickler(body, protocol=2).dump(collections.OrderedDict(
            (name, _Ref(name, t)) for name, t in tensors.items()))
    used = list(dict.fromkeys(t.storage for t in tensors.values()))
    if zip_format:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            for key in used:
                archive.writestr(f"archive/data/{key}", storages[key].tobytes())
        return
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(body.getvalue())
        pickle.dump(used, f, protocol=2)
        for key in used:
            f.write(struct.pack("<q", claimed[key]))
            f.write(storages[key].tobytes())


def contiguous(storage: str, shape: tuple, offset: int = 0) -> Tensor:
    stride = tuple(int(np.prod(shape[k + 1:])) for k in range(len(shape)))
    return Tensor(storage, offset, tuple(shape), stride)


def hand_made_coded(path, zip_format: bool) -> None:
    """A small coded file: several dtypes, a shared storage with an offset, a
    transposed view, a scalar and an empty tensor."""
    storages = {"0": np.arange(216, dtype=np.float32), "1": np.arange(64, dtype=np.float16),
                "2": np.arange(1, dtype=np.int64), "3": np.arange(40, dtype=np.float64)}
    tensors = {
        "stem.weight": contiguous("0", (8, 3, 3, 3)),
        "bn.weight": contiguous("1", (32,)),
        "bn.bias": contiguous("1", (32,), offset=32),
        "bn.num_batches_tracked": Tensor("2", 0, (), ()),
        "fc.weight": Tensor("3", 0, (5, 8), (1, 5)),  # a transposed view
        "empty": Tensor("3", 40, (0,), (1,)),
    }
    write_pth(path, storages, tensors, zip_format)


class _Outline(pickle.Unpickler):
    """Unpickles a trusted file's state dict into plain tuples: storage records as
    ('storage', type name, key, location, numel), tensors as their rebuild arguments."""

    def find_class(self, module, name):
        if module == "torch":
            return name
        if module == "torch._utils":
            return lambda *args: args
        return super().find_class(module, name)

    def persistent_load(self, pid):
        return pid


def pickle_spans(data: bytes, count: int) -> list[tuple[int, int]]:
    """(start, end) of the first `count` pickles in `data`."""
    f, spans = io.BytesIO(data), []
    for _ in range(count):
        start = f.tell()
        for _op in pickletools.genops(f):
            pass
        spans.append((start, f.tell()))
    return spans


def coded_legacy(data: bytes) -> bytes:
    """A legacy file with its storage payloads replaced by codes (element j = j);
    the pickles, the storage headers and the layout are the file's own."""
    spans = pickle_spans(data, 5)  # magic, protocol, sys info, state dict, storage keys
    state = _Outline(io.BytesIO(data[slice(*spans[3])])).load()
    names = {v: k for k, v in STORAGE_TYPES.items()}
    dtypes = {args[0][2]: np.dtype(names[args[0][1]]) for args in state.values()}
    out, position = bytearray(data), spans[4][1]
    for key in pickle.loads(data[slice(*spans[4])]):
        (numel,) = struct.unpack_from("<q", data, position)
        codes = np.arange(numel).astype(dtypes[key]).tobytes()
        out[position + 8:position + 8 + len(codes)] = codes
        position += 8 + len(codes)
    return bytes(out)


# ---- mutations -------------------------------------------------------------------------

_INT_OPS = {"BININT1", "BININT2", "BININT", "LONG1", "INT", "LONG"}


def encode_int(value: int) -> bytes:
    """`value` as one pickle opcode (BININT when it fits in 32 bits, else LONG1)."""
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _int_spans(pickled: bytes) -> list[tuple[int, int, int]]:
    """(start, end, value) of every integer opcode in one pickle."""
    ops = list(pickletools.genops(io.BytesIO(pickled)))
    return [(pos, ops[i + 1][2], arg) for i, (op, arg, pos) in enumerate(ops[:-1])
            if op.name in _INT_OPS]


def _hostile_int(rng, original: int) -> int:
    choices = HOSTILE_INTS + (original - 1, original + 1, -original)
    return int(choices[rng.integers(len(choices))])


def mutate_pickle(pickled: bytes, rng) -> tuple[bytes, str]:
    """One mutation of a pickle: a hostile integer (most often), random bytes, or one
    byte inserted or deleted."""
    kind = ("int", "int", "int", "bytes", "insert", "delete")[rng.integers(6)]
    spans = _int_spans(pickled)
    if kind == "int" and not spans:
        kind = "bytes"
    out = bytearray(pickled)
    if kind == "int":
        start, end, value = spans[rng.integers(len(spans))]
        out[start:end] = encode_int(_hostile_int(rng, value))
    elif kind == "bytes":
        for _ in range(rng.integers(1, 5)):
            out[rng.integers(len(out))] = rng.integers(256)
    elif kind == "insert":
        out.insert(int(rng.integers(len(out) + 1)), int(rng.integers(256)))
    else:
        del out[rng.integers(len(out))]
    return bytes(out), kind


def mutate_legacy(data: bytes, rng) -> tuple[bytes, str]:
    spans = pickle_spans(data, 5)
    kind = rng.choice(["pickle"] * 6 + ["header", "truncate"])
    if kind == "truncate":
        return data[:rng.integers(len(data))], "truncate"
    if kind == "header":
        headers, position = [], spans[4][1]
        dtypes = _legacy_dtypes(data, spans)
        for key in pickle.loads(data[slice(*spans[4])]):
            (numel,) = struct.unpack_from("<q", data, position)
            headers.append((position, numel))
            position += 8 + numel * dtypes[key].itemsize
        position, numel = headers[rng.integers(len(headers))]
        value = _hostile_int(rng, numel) % 2**64
        return data[:position] + struct.pack("<Q", value) + data[position + 8:], "header"
    start, end = spans[rng.integers(5)]
    pickled, kind = mutate_pickle(data[start:end], rng)
    return data[:start] + pickled + data[end:], kind


def _legacy_dtypes(data: bytes, spans) -> dict:
    state = _Outline(io.BytesIO(data[slice(*spans[3])])).load()
    names = {v: k for k, v in STORAGE_TYPES.items()}
    return {args[0][2]: np.dtype(names[args[0][1]]) for args in state.values()}


def _rezip(members: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


def mutate_zip(data: bytes, rng) -> tuple[bytes, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    kind = rng.choice(["pickle"] * 5 + ["member", "raw", "truncate"])
    if kind == "truncate":
        return data[:rng.integers(len(data))], "truncate"
    if kind == "raw":
        out = bytearray(data)
        for _ in range(rng.integers(1, 5)):
            out[rng.integers(len(out))] = rng.integers(256)
        return bytes(out), "raw"
    if kind == "member":
        name = rng.choice([n for n in members if "/data/" in n])
        cut = int(rng.integers(-8, 9))
        members[name] = members[name][:cut] if cut < 0 else members[name] + bytes(cut)
        return _rezip(members), "member"
    name = next(n for n in members if n.endswith("data.pkl"))
    members[name], kind = mutate_pickle(members[name], rng)
    return _rezip(members), kind


def mutate(data: bytes, rng) -> tuple[bytes, str]:
    if data[:2] == b"PK":
        return mutate_zip(data, rng)
    return mutate_legacy(data, rng)


# ---- the oracle ------------------------------------------------------------------------

def check_coded(state: dict, max_numel: int) -> str | None:
    """None when every tensor is a correct read of a coded storage, else what is wrong."""
    for name, array in state.items():
        if not isinstance(array, np.ndarray):
            return f"{name}: a {type(array).__name__}, not an array"
        if array.size == 0:
            continue
        values = array.astype(np.float64)
        first = values.flat[0]
        strides = []
        for axis, n in enumerate(array.shape):
            index = tuple(1 if (k == axis and n > 1) else 0 for k in range(array.ndim))
            strides.append(values[index] - first)
        expected = np.full(array.shape, first)
        for axis, (n, stride) in enumerate(zip(array.shape, strides)):
            expected = expected + (np.arange(n) * stride).reshape(
                [n if k == axis else 1 for k in range(array.ndim)])
        inside = first >= 0 and min(strides, default=0) >= 0 and values.max() < max_numel
        if not (inside and first == round(first) and np.array_equal(values, expected)):
            return (f"{name} {array.shape}: values {values.ravel()[:4]} are not a read inside "
                    f"its storage (first {first}, strides {strides})")
    return None


def max_numel(data: bytes) -> int:
    """The largest storage of an unmutated base file (its codes are below this)."""
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return max(info.file_size for info in archive.infolist())
    spans = pickle_spans(data, 5)
    state = _Outline(io.BytesIO(data[slice(*spans[3])])).load()
    return max(args[0][4] for args in state.values())


# ---- worker and driver -----------------------------------------------------------------

def _worker(bases: list[str]) -> None:
    from keras_effnet.torch_reader import read_state_dict

    contents = [Path(path).read_bytes() for path in bases]
    limits = [max_numel(data) for data in contents]
    folder = tempfile.mkdtemp(prefix="pth_fuzz_")
    target = os.path.join(folder, "case.pth")
    for line in sys.stdin:
        base, seed, case = (int(x) for x in line.split())
        data, kind = contents[base], "none"
        if case >= 0:
            data, kind = mutate(data, np.random.default_rng([seed, base, case]))
        with open(target, "wb") as f:
            f.write(data)
        try:
            problem = check_coded(read_state_dict(target), limits[base])
            outcome = ("ok", "") if problem is None else ("wrong", problem)
        except ValueError as exc:
            outcome = ("value_error", str(exc)[:200])
        except BaseException as exc:  # noqa: BLE001 - every other outcome is the finding
            outcome = ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
        reply = {"case": case, "kind": kind, "outcome": outcome[0], "detail": outcome[1]}
        print("CASE " + json.dumps(reply), flush=True)


def run_cases(bases: list[str], cases: list[tuple[int, int]], seed: int,
              timeout: float = 60.0) -> list[dict]:
    """Run (base index, case number) pairs in a worker process (case -1: the base
    itself); a worker that dies or hangs is one failed case, and a new one takes over."""
    results, pending = [], list(cases)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryFile(mode="w+") as stderr:
        while pending:
            _run_worker(bases, seed, timeout, pending, results, stderr, env)
    return results


def _run_worker(bases, seed, timeout, pending, results, stderr, env) -> None:
    """One worker over the pending cases, until they are done or it dies."""
    import selectors

    worker = subprocess.Popen([sys.executable, __file__, *bases], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    selector = selectors.DefaultSelector()
    selector.register(worker.stdout, selectors.EVENT_READ)
    try:
        while pending:
            base, case = pending.pop(0)
            worker.stdin.write(f"{base} {seed} {case}\n")
            worker.stdin.flush()
            reply = _reply(worker, selector, timeout)
            if reply is not None:
                results.append(dict(reply, base=base))
                continue
            worker.kill()
            rc = worker.wait()
            stderr.seek(0)
            results.append({"base": base, "case": case, "kind": "?", "outcome": "crash",
                            "detail": f"worker died or hung (exit {rc}): {stderr.read()[-500:]}"})
            stderr.seek(0)
            stderr.truncate()
            return
    finally:
        if worker.poll() is None:
            worker.stdin.close()
            worker.wait(timeout=30)


def _reply(worker, selector, timeout: float) -> dict | None:
    while True:
        if not selector.select(timeout):
            return None
        line = worker.stdout.readline()
        if not line:
            return None
        if line.startswith("CASE "):
            return json.loads(line[5:])


if __name__ == "__main__":
    _worker(sys.argv[1:])
