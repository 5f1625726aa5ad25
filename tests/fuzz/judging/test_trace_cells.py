"""The cells of a judgement's traces, each distinct record worked out once (or kept with the
judge's remembered record differences), are the cells of every record worked out one by one."""

from __future__ import annotations

import glob
import os

from fuzz.judging.cells import cell, op_key, trace_cells
from kvmsim import get_backend, load_scenario
from kvmsim.scenario import Op
from kvmsim.trace import OpRecord

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


def test_op_keys_tell_apart_the_ops_whose_cells_differ():
    """Cells kept with a record difference are keyed by ``op_key``: one record under ops whose cells
    differ (lookup modes, an access's direction given as a bool or an int) has one key per cell."""
    rec = OpRecord(0, "lookup", {"call": "f", "result": "pfn", "writable": True, "held": {}}, None, [])
    lookups = [Op("lookup", {"gfn": 0, "atomic": a, "pin": p, "want_ref": w})
               for a in (True, False) for p in (True, False) for w in (True, False)]
    access = OpRecord(0, "access", None, {"outcome": "ok"}, [])
    accesses = [Op("access", {"gpa": 0, "write": w}) for w in (True, 1, False)]
    for ops, r in ((lookups, rec), (accesses, access)):
        by_key: dict[str, set] = {}
        for op in ops:
            by_key.setdefault(op_key(op), set()).add(cell(op, r))
        assert all(len(cells) == 1 for cells in by_key.values())
    assert len({op_key(op) for op in accesses}) == 3


def test_cells_kept_with_a_judges_record_differences_are_the_cells_of_every_record():
    """The cells of records that compared different, kept with the judge's remembered differences
    (read again on a second round, some differences shared by scenarios), in pairs either way round
    and with a backend in two pairs, are the cells worked out one by one."""
    from fuzz.judging.judge import Judge
    from fuzz.targets.diff_target import _differing_as_run

    judge = Judge([("sim:g2", "sim:g3"), ("sim:g3", "sim:g2s-literal"), ("sim:g1", "sim:g2f")])
    kept = 0
    for _ in range(2):
        for path in SCENARIOS:
            sc = load_scenario(path)
            j = judge.judge(sc)
            differing = _differing_as_run(j)
            kept += sum(len(by_op) for by_op in differing.values())
            want = [(b, c) for b, t in j.traces.items() for r in t.records if r.index < len(sc.ops)
                    for c in [cell(sc.ops[r.index], r)] if c is not None]
            assert trace_cells(sc.ops, j.traces, differing) == want, path
    assert kept                              # records differ: cells kept with their differences are read
