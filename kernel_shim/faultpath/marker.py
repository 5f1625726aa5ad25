"""The VMM side of fault-path tracing: a ``trace_marker`` line before each op, so the events of
a batch of accesses are attributed to the op that started it (``parse.py``).

Why a module flag and a lazily opened file: the worker that runs the scenarios is forked from the
process that set tracing up (and closes every inherited descriptor), so it learns only that
tracing is on and opens the marker file itself, once."""

from __future__ import annotations

import os

ENV = "PFNDIFF_FAULTPATH_TRACEFS"     # how a worker started as a new process learns it
MARKER_FILE = "trace_marker"
_root: str | None = os.environ.get(ENV) or None
ENABLED = _root is not None     # set by the process that set tracing up, before it starts its worker
_fd: int | None = None


def enable(root: str) -> None:
    global ENABLED, _root, _fd
    ENABLED, _root, _fd = True, root, None
    os.environ[ENV] = root


def disable() -> None:
    global ENABLED, _fd
    ENABLED = False
    os.environ.pop(ENV, None)
    if _fd is not None:
        try:
            os.close(_fd)
        except OSError:
            pass
    _fd = None


def mark(index: int) -> None:
    """``pfndiff op <index>`` in the trace buffer: the events after it belong to op ``index`` (an
    access: the batch of accesses starting there)."""
    global _fd
    if not ENABLED or _root is None:
        return
    if _fd is None:
        try:
            _fd = os.open(os.path.join(_root, MARKER_FILE), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            disable()
            return
    try:
        os.write(_fd, f"pfndiff op {index}\n".encode())
    except OSError:
        pass
