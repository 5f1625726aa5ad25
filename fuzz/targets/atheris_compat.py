"""The only module that touches atheris.  Why: atheris' API (instrumentation hooks, Setup/Fuzz,
what happens at exit, its internal coverage counters) changes between releases; pinning it behind
a few functions keeps the targets and the campaign runner independent of the installed version
(pyproject pins 3.0.0).

Feedback (``PFNDIFF_FEEDBACK``): ``semantic`` guides libFuzzer by pfndiff's own features (the
decision-table cell each op reached per generation, each oracle outcome; fuzz.corpus.features),
each feature one libFuzzer counter; ``bytecode`` by edges of the instrumented Python bytecode of
the generations and the codec; ``both``.  See ``DEFAULT_FEEDBACK`` for the default and why.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
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


FEEDBACK_ENV = "PFNDIFF_FEEDBACK"
FEEDBACK_MODES = ("semantic", "bytecode", "both")
DEFAULT_FEEDBACK = "semantic"


def feedback() -> str:
    """The feedback mode this process fuzzes with (an unknown value is a one-line error)."""
    mode = os.environ.get(FEEDBACK_ENV, "") or DEFAULT_FEEDBACK
    if mode not in FEEDBACK_MODES:
        raise SystemExit(f"error: {FEEDBACK_ENV}={mode!r}: expected one of {', '.join(FEEDBACK_MODES)}")
    return mode


def bytecode_feedback() -> bool:
    return feedback() in ("bytecode", "both")


def semantic_feedback() -> bool:
    return feedback() in ("semantic", "both")


@contextmanager
def instrumented() -> Iterator[None]:
    """Imports inside this block get coverage instrumentation (only when bytecode feedback is on)."""
    if not bytecode_feedback():
        yield
        return
    exclude = [] if os.environ.get("PFNDIFF_INSTRUMENT") == "all" else list(EXCLUDE)
    with atheris.instrument_imports(include=list(INCLUDE), exclude=exclude):
        yield


class FeatureCounters:
    """One libFuzzer coverage counter per distinct feature; ``hit`` bumps it, so libFuzzer keeps an
    input that reaches a new feature or a feature a new number of times.  The counters are
    reserved up front (before ``fuzz``): atheris registers counters reserved later with libFuzzer
    only some inputs afterwards, which would credit a new feature to the wrong input.  Features
    take slots in the order first seen; past ``size`` they share slots (hash of the feature)."""

    def __init__(self, size: int = 1 << 14) -> None:
        self.base = atheris._reserve_counter()
        for _ in range(size - 1):
            atheris._reserve_counter()
        self.size = size
        self.ids: dict[object, int] = {}

    def hit(self, feature: object) -> None:
        atheris._trace_branch(self._slot(feature))

    def slots(self, features: Iterable[object]) -> tuple[int, ...]:
        """Each feature's counter, taking new slots in order as ``hit`` would, for ``hit_slots``.
        Why: an observer shown one judgement many times (the checker's memo) keeps its counters
        and skips a dict lookup per feature per input."""
        return tuple(self._slot(f) for f in features)

    def hit_slots(self, slots: tuple[int, ...]) -> None:
        trace = atheris._trace_branch
        for idx in slots:
            trace(idx)

    def _slot(self, feature: object) -> int:
        idx = self.ids.get(feature)
        if idx is None:
            slot = len(self.ids) if len(self.ids) < self.size else hash(feature) % self.size
            idx = self.ids[feature] = self.base + slot
        return idx

    def __len__(self) -> int:
        return len(self.ids)


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
