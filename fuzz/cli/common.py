"""What every ``pfndiff`` command shares: the one-line usage error (exit 2), the argument parser
that raises it, and the checks of output paths made before any work is done."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
Setup = Callable[[argparse.ArgumentParser], None]
Commands = dict[str, tuple[str, Handler, Setup]]
"""command name -> (help line, handler, argument setup): what each command module exports."""


class UsageError(Exception):
    """A bad option or argument; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def output_dir(path: str, what: str, create: bool = True) -> None:
    """Check (and, with ``create``, make) an output directory before any work is done, so that a
    bad path is one line naming it, not a traceback after minutes of work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: {what} must be a directory, but it is a file")
    target = path if create else (os.path.dirname(os.path.abspath(path)) or ".")
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{path}: cannot create the {what} directory: {e.strerror}") from None
    _can_create_in(path if os.path.isdir(path) else target, path, what)


def output_file(path: str, what: str) -> None:
    """Check an output file path: not a directory, in a directory that exists and is writable."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: {what} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: {what}: directory {parent} does not exist")
    _can_create_in(parent, path, what)


def _can_create_in(directory: str, path: str, what: str) -> None:
    """Create (and drop) a scratch file: permission bits alone do not tell a root user about a
    read-only file system or sysfs."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".pfndiff-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"{path}: {what}: cannot write in {directory}: {e.strerror}") from None


def os_error_line(e: OSError) -> str:
    """One line for a file-system error that escaped the commands' own checks."""
    name = e.filename if e.filename is not None else ""
    return f"pfndiff: {name}: {e.strerror or e}" if name else f"pfndiff: {e.strerror or e}"


