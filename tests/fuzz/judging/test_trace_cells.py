"""The cells of a judgement's traces, each distinct record worked out once, are the cells of every
record worked out one by one."""

from __future__ import annotations

import glob
import os

from fuzz.judging.cells import cell, trace_cells
from kvmsim import get_backend, load_scenario

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "corpus")
SCENARIOS = sorted(glob.glob(os.path.join(CORPUS, "seeds", "*.yaml")) + glob.glob(os.path.join(CORPUS, "regressions",
                                                                                                 "*.yaml")))
BACKENDS = ["sim:g1", "sim:g2", "sim:g2s", "sim:g2s-literal", "sim:g2f", "sim:g3"]


def test_trace_cells_are_the_cells_of_every_record():
    shared = 0
    for path in SCENARIOS:
        sc = load_scenario(path)
        traces = {b: get_backend(b).run(sc) for b in BACKENDS}
        want = [(b, c) for b, t in traces.items() for r in t.records if r.index < len(sc.ops)
                for c in [cell(sc.ops[r.index], r)] if c is not None]
        assert trace_cells(sc.ops, traces) == want, path
        shared += sum(1 for b, t in traces.items() for r in t.records if b != BACKENDS[0] and r.index < len(sc.ops)
                      and traces[BACKENDS[0]].records[r.index].api == r.api)
    assert shared                            # some records are equal across backends: the reuse is exercised
