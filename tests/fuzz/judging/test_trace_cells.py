"""The cells of a judgement's traces, each distinct record worked out once and remembered across
judgements, are the cells of every record worked out one by one."""

from __future__ import annotations

import glob
import os

import pytest

import fuzz.judging.cells as cells
from fuzz.judging.cells import RememberedCells, cell, trace_cells
from kvmsim import get_backend, load_scenario
from kvmsim.scenario import Op
from kvmsim.trace import OpRecord

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "corpus")
SCENARIOS = sorted(glob.glob(os.path.join(CORPUS, "seeds", "*.yaml")) + glob.glob(os.path.join(CORPUS, "regressions",
                                                                                                 "*.yaml")))
BACKENDS = ["sim:g1", "sim:g2", "sim:g2s", "sim:g2s-literal", "sim:g2f", "sim:g3"]


@pytest.mark.parametrize("memo_size", [cells.CELLS_MEMO_SIZE, 3])
def test_trace_cells_are_the_cells_of_every_record(monkeypatch, memo_size):
    """Every corpus scenario twice over with one memo (3: cells are evicted over and over)."""
    monkeypatch.setattr(cells, "CELLS_MEMO_SIZE", memo_size)
    remembered = RememberedCells()
    cases = []
    shared = 0
    for path in SCENARIOS:
        sc = load_scenario(path)
        traces = {b: get_backend(b).run(sc) for b in BACKENDS}
        want = [(b, c) for b, t in traces.items() for r in t.records if r.index < len(sc.ops)
                for c in [cell(sc.ops[r.index], r)] if c is not None]
        cases.append((sc, traces, want))
        shared += sum(1 for b, t in traces.items() for r in t.records if b != BACKENDS[0] and r.index < len(sc.ops)
                      and traces[BACKENDS[0]].records[r.index].api == r.api)
    for _ in range(2):
        for sc, traces, want in cases:
            assert trace_cells(sc.ops, traces, remembered) == want, sc
    assert shared                            # some records are equal across backends: the reuse is exercised


def test_remembered_cells_tell_apart_what_a_cell_reads():
    """One record under ops whose cells differ (lookup modes, an access's direction given as a bool
    or an int) and records that differ only in a value's type get their own cells."""
    remembered = RememberedCells()
    rec = OpRecord(0, "lookup", {"call": "f", "result": "pfn", "writable": True, "held": {}}, None, [])
    ops = [Op("lookup", {"gfn": 0, "atomic": a, "pin": False, "want_ref": w}) for a in (True, False) for w in (True,
                                                                                                             False)]
    recs = [rec, OpRecord(0, "lookup", {**rec.api, "writable": 1}, None, [])]
    access = OpRecord(0, "access", None, {"outcome": "ok"}, [])
    ops_access = [Op("access", {"gpa": 0, "write": w}) for w in (True, 1, False)]
    for _ in range(2):
        for op in ops:
            for r in recs:
                assert remembered(op, r) == cell(op, r)
        for op in ops_access:
            assert remembered(op, access) == cell(op, access)
    assert len({cell(op, access) for op in ops_access}) == 3


def test_a_record_marshal_cannot_write_gets_its_cell_afresh():
    class Word(str):
        pass

    op = Op("lookup", {"gfn": 0, "atomic": False, "pin": False, "want_ref": True})
    rec = OpRecord(0, "lookup", {"call": "f", "result": Word("pfn")}, None, [])
    assert RememberedCells()(op, rec) == cell(op, rec)
