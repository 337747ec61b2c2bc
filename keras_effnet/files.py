"""Writing files and folders whole or not at all, locally or through `tf.io.gfile`.

    with atomic_output("out/model.tflite", overwrite=True) as tmp:   # write to tmp
        tmp.write_bytes(content)
    write_bytes("gs://bucket/run/model.tflite", content, overwrite=True)
    write_json("ram://run/summary.json", {"step": 3})

Everything the package and its benchmarks write goes through here. A destination is
first built under a temporary name beside it, then renamed into place, so a crash or a
SIGKILL mid-write leaves nothing at the destination; an existing destination is kept
unless `overwrite=True`.

Local paths use the operating system (the rename of a file is atomic; temporaries of a
killed process are swept by the next write of the same destination, which can tell
them from a running one by the process id in their name). Paths with a scheme (`gs://`,
`ram://`, `hdfs://`, ...) go through TensorFlow's `tf.io.gfile`: the temporary is a
sibling object, renamed (copied, for a folder) when complete; there the rename is as
atomic as the filesystem makes it. Local `atomic_output` yields a `pathlib.Path`, remote
ones a string; `write_bytes`, `write_text` and `write_json` take either.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_output",
    "check_destination",
    "copy",
    "exists",
    "is_remote",
    "makedirs",
    "read_bytes",
    "write_bytes",
    "write_json",
    "write_text",
]

_TMP_MARK = ".partial-"


def is_remote(path) -> bool:
    """True for paths that need tf.io.gfile (`gs://...`, `ram://...`)."""
    return "://" in os.fspath(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path) -> bool:
    return _gfile().exists(os.fspath(path)) if is_remote(path) else os.path.exists(path)


def makedirs(path) -> None:
    """Create a folder and its parents; nothing happens when it exists."""
    if is_remote(path):
        _gfile().makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
    if is_remote(path):
        with _gfile().GFile(os.fspath(path), "rb") as handle:
            return handle.read()
    return Path(path).read_bytes()


def check_destination(path, overwrite: bool) -> Path | str:
    """Fail before any work is done when `path` exists and may not be replaced. Returns
    the path as a Path (local) or a string (remote)."""
    name = os.path.basename(os.fspath(path).rstrip("/"))
    if name in ("", ".", ".."):
        raise ValueError(f"expected a file or folder name for the artifact, got "
                         f"{os.fspath(path)!r}")
    if exists(path) and not overwrite:
        raise FileExistsError(
            f"{os.fspath(path)} already exists; pass overwrite=True (--overwrite) to replace "
            "it, or choose another path")
    return os.fspath(path) if is_remote(path) else Path(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path) -> None:
    if is_remote(path):
        gfile = _gfile()
        if gfile.isdir(path):
            gfile.rmtree(path)
        elif gfile.exists(path):
            gfile.remove(path)
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sweep_stale(path: Path) -> None:
    """Remove local temporaries that a killed writer of the same destination left."""
    prefix = f".{path.name}{_TMP_MARK}"
    for leftover in path.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _remove(leftover)


def _copy_tree(source: str, target: str) -> None:
    gfile = _gfile()
    for folder, _, files in gfile.walk(source):
        relative = folder[len(source):].lstrip("/")
        destination = f"{target}/{relative}" if relative else target
        gfile.makedirs(destination)
        for name in files:
            gfile.copy(f"{folder}/{name}", f"{destination}/{name}", overwrite=True)


def _temporary_name(name: str, suffix: str) -> str:
    return f".{name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


@contextlib.contextmanager
def _remote_output(path: str, overwrite: bool, suffix: str) -> Iterator[str]:
    gfile = _gfile()
    parent, name = os.path.dirname(path.rstrip("/")), os.path.basename(path.rstrip("/"))
    gfile.makedirs(parent)
    tmp = f"{parent}/{_temporary_name(name, suffix)}"
    try:
        yield tmp
        if not gfile.exists(tmp):
            raise RuntimeError(f"nothing was written to the temporary path for {path}")
        check_destination(path, overwrite)
        if gfile.exists(path):
            _remove(path)
        if gfile.isdir(tmp):
            _copy_tree(tmp, path)  # object stores cannot rename a folder
        else:
            gfile.rename(tmp, path, overwrite=True)
    finally:
        if gfile.exists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def _local_output(path: Path, overwrite: bool, suffix: str) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    tmp = path.parent / _temporary_name(path.name, suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to the temporary path for {path}")
        check_destination(path, overwrite)  # someone may have created it meanwhile
        if tmp.is_dir():
            # folders cannot be renamed over a non-empty folder: move the old one aside first
            old = None
            if path.exists():
                old = path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}-old"
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                _remove(old)
        else:
            if path.is_dir():
                _remove(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


@contextlib.contextmanager
def atomic_output(path, overwrite: bool = False, suffix: str = "") -> Iterator[Path | str]:
    """Yield a temporary path to write a file or folder to; rename it to `path` on success.

    The temporary sits beside the destination (same filesystem) and carries this
    process' id; `suffix` ends its name, for writers that insist on one (Keras:
    `.keras`, `.weights.h5`). A Path for local destinations, a string for remote ones."""
    destination = check_destination(path, overwrite)
    if isinstance(destination, str):
        with _remote_output(destination, overwrite, suffix) as tmp:
            yield tmp
    else:
        with _local_output(destination, overwrite, suffix) as tmp:
            yield tmp


def _write(tmp, data: bytes) -> None:
    if isinstance(tmp, str):
        with _gfile().GFile(tmp, "wb") as handle:
            handle.write(data)
    else:
        tmp.write_bytes(data)


def write_bytes(path, data: bytes, overwrite: bool = True) -> None:
    """Write `data` to `path` whole or not at all."""
    with atomic_output(path, overwrite) as tmp:
        _write(tmp, data)


def write_text(path, text: str, overwrite: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path, payload, overwrite: bool = True, **dumps) -> None:
    write_text(path, json.dumps(payload, indent=2, **dumps), overwrite)


def copy(source, destination, overwrite: bool = False) -> None:
    """Copy a local file or folder to `destination` (local or remote) whole or not at all."""
    source = os.fspath(source)
    if not os.path.exists(source):
        raise FileNotFoundError(f"nothing to copy: {source} does not exist")
    with atomic_output(destination, overwrite) as tmp:
        if os.path.isdir(source):
            if isinstance(tmp, str):
                _copy_tree(source, tmp)
            else:
                shutil.copytree(source, tmp)
        elif isinstance(tmp, str):
            _gfile().copy(source, tmp, overwrite=True)
        else:
            shutil.copyfile(source, tmp)
