"""Keeping native libraries' start-up chatter off the command line's output.

TensorFlow, its converter, LiteRT and MediaPipe write from C++ straight to file
descriptor 2 ("oneDNN custom operations are on", "failed call to cuInit", "fully_quantize:
0, inference_type: 6", "Created TensorFlow Lite XNNPACK delegate"), past Python's logging
and past TF_CPP_MIN_LOG_LEVEL. While quiet, file descriptor 2 goes to a temporary file
and Python's `sys.stderr` (warnings, logging, progress bars, error lines) to the
terminal; the native text is dropped at the end, or replayed when the command fails
unexpectedly, so nothing that explains an error is lost.

The `keras-effnet` command is quiet unless `--verbose`. It must start before the
package imports TensorFlow, so `keras_effnet/__init__.py` calls `quiet_for_command()`
first. In Python, `quiet()` does the same around what prints such lines: importing
TensorFlow (and its first look for a GPU), converting, and creating LiteRT and MediaPipe
runtimes; Python's own warnings and progress bars still show. KERAS_EFFNET_VERBOSE=1
keeps everything.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile

__all__ = ["COMMAND", "VERBOSE_ENV", "quiet", "quiet_at_exit", "quiet_for_command", "quieted",
           "start_quiet", "stop_quiet"]

VERBOSE_ENV = "KERAS_EFFNET_VERBOSE"

COMMAND = "keras-effnet"
_state: dict = {}


def start_quiet() -> None:
    """Send native writes to fd 2 to a temporary file, Python's stderr to the terminal
    (when Python's stderr is fd 2; a notebook's is its own stream and stays as it is)."""
    if _state:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    caught = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - open until stop_quiet
    terminal = _terminal()
    os.dup2(caught.fileno(), 2)
    _state.update(saved=saved, caught=caught, terminal=terminal, python_stderr=sys.stderr)
    if _on_fd2(sys.stderr):
        sys.stderr = terminal


def _terminal():
    """One stream on the terminal's stderr for the whole process, never closed: a logging
    handler made while quiet (absl's, when TensorFlow is imported) keeps the sys.stderr it
    saw then, and must still be able to write after the quiet block."""
    if "stream" not in _terminal_stream:
        _terminal_stream["stream"] = os.fdopen(os.dup(2), "w", buffering=1)
    return _terminal_stream["stream"]


_terminal_stream: dict = {}


def _on_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


@contextlib.contextmanager
def quiet():
    """Drop what native code writes to fd 2 inside the block (replayed if the block
    raises, so nothing that explains an error is lost); nested or under the quiet
    command, or with KERAS_EFFNET_VERBOSE=1, it does nothing."""
    if _state or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        yield
        return
    start_quiet()
    try:
        yield
    except BaseException:
        stop_quiet(replay=True)
        raise
    stop_quiet()


def stop_quiet(replay: bool = False) -> None:
    """Give fd 2 back; with `replay`, first write out what native code wrote meanwhile."""
    if not _state:
        return
    terminal, caught = _state["terminal"], _state["caught"]
    if replay:
        caught.seek(0)
        terminal.write(caught.read().decode(errors="replace"))
    terminal.flush()
    sys.stderr = _state["python_stderr"]
    os.dup2(_state["saved"], 2)
    os.close(_state["saved"])
    caught.close()  # the terminal stream stays open (see _terminal)
    _state.clear()


def quieted(function):
    """`function` run inside `quiet()`: for the library's calls into native runtimes."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        with quiet():
            return function(*args, **kwargs)

    return run


def quiet_at_exit() -> None:
    """LiteRT's environment says goodbye from C++ after Python has finished
    ("DestroyAccelerator ..."): at exit, send fd 2 nowhere (not with KERAS_EFFNET_VERBOSE=1).
    Registered by whoever creates that environment; Python's own output is done by then."""
    if _exit_hooks or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return
    import atexit

    def silence():
        sys.stderr.flush()
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)

    atexit.register(silence)
    _exit_hooks.append(silence)


_exit_hooks: list = []


def quiet_for_command() -> None:
    """Start quiet when this process is the `keras-effnet` command without --verbose
    (with it, everything shows: the library's own `quiet()` blocks too)."""
    if os.path.basename(sys.argv[0]) != COMMAND:
        return
    if "--verbose" in sys.argv[1:]:
        os.environ[VERBOSE_ENV] = "1"
    else:
        start_quiet()
