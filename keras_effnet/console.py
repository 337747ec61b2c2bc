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
first; library users and notebooks see everything.
"""

from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["COMMAND", "quiet_for_command", "start_quiet", "stop_quiet"]

COMMAND = "keras-effnet"
_state: dict = {}


def start_quiet() -> None:
    """Send native writes to fd 2 to a temporary file, Python's stderr to the terminal."""
    if _state:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    caught = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - open until stop_quiet
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    os.dup2(caught.fileno(), 2)
    _state.update(saved=saved, caught=caught, terminal=terminal, python_stderr=sys.stderr)
    sys.stderr = terminal


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
    caught.close()
    terminal.close()
    _state.clear()


def quiet_for_command() -> None:
    """Start quiet when this process is the `keras-effnet` command without --verbose."""
    if os.path.basename(sys.argv[0]) == COMMAND and "--verbose" not in sys.argv[1:]:
        start_quiet()
