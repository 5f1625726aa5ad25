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

# What gets coverage instrumentation: the model's decision logic and the codec, not the scenario
# loader/validator, trace records or backend plumbing (their branches follow the model's and only
# cost speed).  atheris 3.0.0 selects by top-level package and excludes by exact module name.
# PFNDIFF_INSTRUMENT=all instruments everything in both packages.
INCLUDE = ("kvmsim", "fuzz")
SCENARIO_FORMAT = ("kvmsim.scenario", "kvmsim.scenario.schema", "kvmsim.scenario.vocabulary", "kvmsim.scenario.load",
                   "kvmsim.scenario.validate", "kvmsim.scenario.replay", "kvmsim.scenario.dump")
EXCLUDE = SCENARIO_FORMAT + ("kvmsim.yamlsrc", "kvmsim.trace", "kvmsim.backend", "kvmsim.sim_backend",
                             "kvmsim.constants", "kvmsim.generation", "kvmsim.executor", "kvmsim.world")


@contextmanager
def instrumented() -> Iterator[None]:
    """Imports inside this block get coverage instrumentation."""
    exclude = [] if os.environ.get("PFNDIFF_INSTRUMENT") == "all" else list(EXCLUDE)
    with atheris.instrument_imports(include=list(INCLUDE), exclude=exclude):
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
