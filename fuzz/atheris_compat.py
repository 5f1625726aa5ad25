"""The only module that touches atheris.  Why: atheris' API (instrumentation hooks, Setup/Fuzz,
what happens at exit) changes between releases; pinning it behind three functions keeps the
targets and the campaign runner independent of the installed version (pyproject pins 3.0.0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import atheris

# Modules whose branches are worth covering: the generations' decision logic, the shared mm/x86
# model and the codec.  Not the scenario loader, executor, traces or oracles: their branches
# follow the model's, and instrumenting them only costs speed.  PFNDIFF_INSTRUMENT overrides
# (comma-separated module prefixes, e.g. "kvmsim,fuzz.codec").
INSTRUMENT = ("kvmsim.g1_legacy", "kvmsim.g2_noref", "kvmsim.g2s_sketch", "kvmsim.g2f_posted", "kvmsim.g3_merged",
              "kvmsim.mm", "kvmsim.x86", "kvmsim.vmm", "kvmsim.pfndb", "kvmsim.memslot", "kvmsim.notifier",
              "fuzz.codec")


@contextmanager
def instrumented() -> Iterator[None]:
    """Imports inside this block get coverage instrumentation."""
    chosen = os.environ.get("PFNDIFF_INSTRUMENT")
    include = [m for m in chosen.split(",") if m] if chosen else list(INSTRUMENT)
    with atheris.instrument_imports(include=include):
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
