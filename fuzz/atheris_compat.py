"""The only module that touches atheris.  Why: atheris' API (instrumentation hooks, Setup/Fuzz,
what happens at exit) changes between releases; pinning it behind three functions keeps the
targets and the campaign runner independent of the installed version (pyproject pins 3.0.0).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import atheris

# Packages whose code paths are worth covering: the model and the codec (not the oracles: their
# branches follow the model's, and instrumenting them only costs speed).
INSTRUMENT = ("kvmsim", "fuzz.codec")


@contextmanager
def instrumented() -> Iterator[None]:
    """Imports inside this block get coverage instrumentation."""
    with atheris.instrument_imports(include=list(INSTRUMENT)):
        yield


def fuzz(test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Hand control to libFuzzer; returns only if libFuzzer does (it usually exits the process)."""
    atheris.Setup(list(argv if argv is not None else sys.argv), test_one_input)
    atheris.Fuzz()


def version() -> str:
    try:
        from importlib.metadata import version as v
        return v("atheris")
    except Exception:
        return "unknown"
