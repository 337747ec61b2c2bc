"""Safe writes: every artifact is built under a temporary name beside its
destination and renamed into place, so a crash or a SIGKILL mid-export leaves
nothing at the destination, and an existing destination is kept unless the
caller says `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "check_destination"]

_TMP_MARK = ".partial-"


def check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work is done when `path` exists and may not be replaced."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (--overwrite) to replace it, "
            "or choose another path"
        )
    if path.name in ("", ".", ".."):
        raise ValueError(f"expected a file or folder name for the artifact, got {str(path)!r}")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sweep_stale(path: Path) -> None:
    """Remove temporaries that a killed export of the same destination left behind."""
    prefix = f".{path.name}{_TMP_MARK}"
    for leftover in path.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _remove(leftover)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write a file or folder to; rename it to `path` on success.

    The temporary sits in the destination's folder (same filesystem, so the
    rename is atomic for files) and carries this process' id, so a later
    export can tell an abandoned one from a running one.
    """
    path = check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    tmp = path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
