"""Work the comparison shares or remembers gives what working it out afresh gives: the catalogue's
view of an op (``Catalogue.at``, remembered by the values its conditions read) against the entries
asked one by one with the plain condition semantics, records normalised once per judgement
(``Normalised``) against ``normalise``, and record differences remembered across comparisons
(``RecordDiffs``) against comparing without them."""

from __future__ import annotations

import glob
import itertools
import os

import pytest

import oracles.catalogue as catalogue
import oracles.diff as diff
from kvmsim import get_backend, load_scenario
from oracles.catalogue import FAMILIES, NA, Catalogue, cond, load_catalogue
from oracles.context import op_contexts
from oracles.diff import RecordDiffs, compare
from oracles.normalise import API_LEVEL, VMM_LEVEL, Normalised, normalise

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "corpus")
SEEDS = sorted(glob.glob(os.path.join(CORPUS, "seeds", "*.yaml")))
REGRESSIONS = sorted(glob.glob(os.path.join(CORPUS, "regressions", "*.yaml")))
SIM = ["sim:g1", "sim:g2", "sim:g2s", "sim:g2f", "sim:g3"]
PAIRS = list(itertools.permutations(FAMILIES, 2)) + [("g2", "g2")]


def _holds(when, args, ctx) -> bool:
    """``when``'s conditions on the op and its context, each asked with ``cond``."""
    for key, c in when:
        if key.startswith("op."):
            v = args.get(key[3:])
        elif key.startswith("ctx."):
            v = ctx.get(key)
        else:
            continue                          # a condition on observations: not asked of the op
        if not cond(c, v):
            return False
    return True


def _oriented(cat: Catalogue, oracle: str, kind: str, fams):
    if fams[0] == fams[1]:
        return []
    out = []
    for e in cat.entries:
        if e.oracle != oracle or kind not in e.ops:
            continue
        sides = [s for s, (x, y) in enumerate((fams, fams[::-1])) if x in e.a and (y in e.b or (not e.b and s == 0))]
        if sides:
            out.append((e, sides))
    return out


def _reference(cat: Catalogue, kind: str, fams, args, ctx):
    """(ids of the entries whose op conditions hold, ids of those that assert values there, the tainting id)."""
    holding = [e for e, _ in _oriented(cat, "diff", kind, fams) if _holds(e.when, args, ctx)]
    asserting = [e.id for e in holding if e.expects and _holds(e.expect_when, args, ctx)]
    taint = next((e.id for e in holding if e.when and e.taints
                  and not any(k.startswith(("a.", "b.")) for k, _ in e.when)), None)
    return [e.id for e in holding], asserting, taint


def _ops_with_contexts():
    for path in SEEDS + REGRESSIONS:
        sc = load_scenario(path)
        yield from zip(sc.ops, op_contexts(sc))


@pytest.mark.parametrize("memo_size", [catalogue.AT_MEMO_SIZE, 3])
def test_the_remembered_view_of_an_op_is_the_entries_asked_one_by_one(monkeypatch, memo_size):
    monkeypatch.setattr(catalogue, "AT_MEMO_SIZE", memo_size)       # 3: the memo is cleared over and over
    cat = load_catalogue()
    ops = list(_ops_with_contexts())
    assert len(ops) > 100
    for _ in range(2):                                               # the second round reads the memo
        for op, ctx in ops:
            for fams in PAIRS:
                at = cat.at("diff", op.kind, fams, op.args, ctx)
                got = ([c.entry.id for c, _ in at.holding], [c.entry.id for c, _ in at.asserting], at.taint)
                assert got == _reference(cat, op.kind, fams, op.args, ctx), (op, fams)
                assert cat.applies(op.kind, fams, op.args, ctx) == at.taint


def _obs_hold(e, oa, ob) -> bool:
    return all(cond(c, (oa if k[0] == "a" else ob).get(k[2:])) for k, c in e.when if k.startswith(("a.", "b.")))


def _states(e, f, oa, ob) -> bool:
    ex = dict(e.explains) if e.explains is not None else None
    return ex is None or (f in ex and (ex[f] == "*" or (cond(ex[f].get("a", "*"), oa.get(f))
                                                        and cond(ex[f].get("b", "*"), ob.get(f)))))


def _explain_reference(cat, op, fams, fields, obs, ctx) -> dict[str, str]:
    """Each field credited to the first entry (in catalogue order, either orientation) whose
    conditions and stated values hold."""
    want: dict[str, str] = {}
    for e, sides in _oriented(cat, "diff", op.kind, fams):
        for side in sides:
            oa, ob = obs[side], obs[1 - side]
            if _holds(e.when, op.args, ctx) and _obs_hold(e, oa, ob):
                want.update((f, e.id) for f in fields if f not in want and _states(e, f, oa, ob))
    return want


def _missing_reference(cat, op, fams, obs, ctx) -> list[tuple[str, str]]:
    """(entry, field) where an asserting entry's first orientation whose conditions hold shows equal,
    observed values that are not the ones it states."""
    out = []
    for e, sides in _oriented(cat, "diff", op.kind, fams):
        if not (e.expects and _holds(e.when, op.args, ctx) and _holds(e.expect_when, op.args, ctx)):
            continue
        for side in sides:
            oa, ob = obs[side], obs[1 - side]
            if not (_obs_hold(e, oa, ob) and all(cond(c, (oa if k[0] == "a" else ob).get(k[2:]))
                                                 for k, c in e.expect_when if k.startswith(("a.", "b.")))):
                continue
            out += [(e.id, f) for f, ca, cb in e.expects if oa.get(f, NA) is not NA and ob.get(f, NA) is not NA
                    and oa.get(f) == ob.get(f) and not (cond(ca, oa[f]) and cond(cb, ob[f]))]
            break
    return out


RESULTS = (("pfn", "pfn"), ("ERR_FAULT", "ERR_NEEDS_IO"), ("pfn", "ERR_FAULT"), ("ERR_FAULT", "ERR_FAULT"))


def test_explain_and_missing_read_the_view_as_the_entries_would():
    cat = load_catalogue()
    fields = ["api.result", "api.writable", "api.held", "vmm.outcome"]
    obs_sets = [({"api.result": a, "api.writable": w, "api.held": {}, "vmm.outcome": "ok"},
                 {"api.result": b, "api.writable": NA, "api.held": {"p": 1}, "vmm.outcome": "efault"})
                for a, b in RESULTS for w in (True, False)]
    seen_missing = 0
    for op, ctx in _ops_with_contexts():
        for fams in PAIRS:
            for obs in obs_sets:
                assert cat.explain("diff", op.kind, fams, fields, obs, op.args, ctx) == \
                    _explain_reference(cat, op, fams, fields, obs, ctx)
                same = (obs[0], dict(obs[0]))
                got = [(e.id, f) for e, f in cat.missing(op.kind, fams, same, op.args, ctx)]
                assert got == _missing_reference(cat, op, fams, same, ctx)
                seen_missing += bool(got)
    assert seen_missing                      # the corpus reaches entries that assert values


def test_a_record_is_normalised_once_and_as_normalise_does():
    norms = Normalised()
    for path in SEEDS[:20]:
        sc = load_scenario(path)
        for rec in get_backend("sim:g2").run(sc).records:
            for level in (API_LEVEL, VMM_LEVEL):
                got = norms(rec, level)
                assert got == normalise(rec, level)
                again = norms(rec, level)
                assert again[0] is got[0] and again[1] is got[1]


@pytest.mark.parametrize("path", SEEDS, ids=os.path.basename)
def test_comparisons_sharing_normalised_records_find_what_each_finds_alone(path):
    sc = load_scenario(path)
    cat = load_catalogue()
    traces = {b: get_backend(b).run(sc) for b in SIM}
    norms = Normalised()
    for left, right in (("sim:g2", "sim:g3"), ("sim:g2", "sim:g2s"), ("sim:g1", "sim:g2"), ("sim:g2s", "sim:g2f")):
        alone = compare(sc, traces[left], traces[right], cat)
        shared = compare(sc, traces[left], traces[right], cat, norms=norms)
        assert [d.to_dict() for d in shared] == [d.to_dict() for d in alone]


@pytest.mark.parametrize("memo_size,verdicts", [(diff.DIFFS_MEMO_SIZE, diff.VERDICTS_PER_DIFF), (5, 1)])
def test_remembered_record_differences_find_what_comparing_afresh_finds(monkeypatch, memo_size, verdicts):
    """One RecordDiffs across every corpus scenario and pair (as a campaign's judge keeps it), read
    twice over: the divergences (their explanations, signatures and the taints they leave, which
    later ops' explanations show) are those of comparisons without it; 5 and 1: record differences
    and their verdicts are evicted."""
    monkeypatch.setattr(diff, "DIFFS_MEMO_SIZE", memo_size)
    monkeypatch.setattr(diff, "VERDICTS_PER_DIFF", verdicts)
    cat = load_catalogue()
    diffs = RecordDiffs()
    cases = []
    for path in SEEDS + REGRESSIONS:
        sc = load_scenario(path)
        traces = {b: get_backend(b).run(sc) for b in SIM}
        cases += [(sc, traces[a], traces[b]) for a, b in itertools.permutations(SIM, 2)]
    want = [[d.to_dict() for d in compare(sc, lt, rt, cat)] for sc, lt, rt in cases]
    for _ in range(2):
        got = [[d.to_dict() for d in compare(sc, lt, rt, cat, diffs=diffs)] for sc, lt, rt in cases]
        assert got == want
    assert any(want)


def test_record_differences_are_told_apart_by_every_part_of_either_record():
    """Records that differ in any one part (API, VMM, events; left or right; a value of another type
    with an equal value, True for 1) are different keys."""
    from kvmsim.trace import OpRecord
    base = ({"call": "f", "result": "pfn", "writable": True, "held": {"p": 1}}, {"outcome": "ok", "exits": []}, [])
    variants = [base,
                ({**base[0], "writable": 1}, base[1], base[2]),
                ({**base[0], "held": {}}, base[1], base[2]),
                (base[0], {"outcome": "mmio", "exits": []}, base[2]),
                (base[0], {"outcome": "ok", "exits": ["MMIO"]}, base[2]),
                (base[0], base[1], ["WARN:x"])]
    diffs, norms = RecordDiffs(), Normalised()
    recs = [OpRecord(0, "lookup", dict(a), dict(v), list(e)) for a, v, e in variants]
    for _ in range(2):
        for left in recs:
            for right in recs:
                for level in (API_LEVEL, VMM_LEVEL):
                    rd = diffs(left, right, level, norms)
                    wl, wr, want = diff._normalised_difference(left, right, level, Normalised())
                    assert (rd.ln, rd.rn, rd.diff) == (wl, wr, tuple(diff._order(want)))


def test_a_record_marshal_cannot_write_is_keyed_by_its_repr():
    """A value of a type marshal refuses (a str subclass) still finds its record difference, and the
    same difference again, as comparing afresh does."""
    from kvmsim.trace import OpRecord

    class Word(str):
        pass

    left = OpRecord(0, "lookup", {"call": "f", "result": Word("pfn")}, None, [])
    right = OpRecord(0, "lookup", {"call": "g", "result": "ERR_FAULT"}, None, [])
    diffs = RecordDiffs()
    first = diffs(left, right, API_LEVEL, Normalised())
    assert first.diff == ("api.result",) and first.ln["api.result"] == "pfn"
    assert diffs(left, right, API_LEVEL, Normalised()) is first


def test_what_an_op_kind_asks_of_its_context_is_what_its_entries_say():
    """``Catalogue.asks`` (which lets a comparison skip an op's context) against the entries
    looked at one by one: some entry of the kind applies to the pair, asserts a value there,
    taints on its op conditions alone."""
    cat = load_catalogue()
    from kvmsim.scenario import OP_SCHEMAS
    for kind in OP_SCHEMAS:
        for fams in PAIRS:
            applying = [e for e in cat.entries if e.oracle == "diff" and kind in e.ops and fams[0] != fams[1]
                        and Catalogue._orientations(e, fams)]
            got = cat.asks(kind, fams)
            assert got.any == bool(applying), (kind, fams)
            assert got.expecting == any(e.expects for e in applying) == cat.expecting(kind, fams), (kind, fams)
            tainting = any(e.taints and e.when and not any(k.startswith(("a.", "b.")) for k, _ in e.when)
                           for e in applying)
            assert got.tainting == tainting, (kind, fams)


def test_contexts_given_lazily_give_the_divergences_of_contexts_given_at_once():
    """The walk reads an op's context only where the catalogue could (``Asks``): given as a list, as
    a lazy sequence or not at all, every corpus scenario's comparison is the same."""
    cat = load_catalogue()

    class Lazy(list):
        def __init__(self, sc):
            super().__init__()
            self.sc, self.asked = sc, 0

        def __iter__(self):
            self.asked += 1
            return iter(op_contexts(self.sc))

    for path in SEEDS + REGRESSIONS:
        sc = load_scenario(path)
        traces = {n: get_backend(n).run(sc) for n in SIM}
        for a, b in itertools.combinations(SIM, 2):
            want = [d.to_dict() for d in compare(sc, traces[a], traces[b], cat, ctxs=op_contexts(sc))]
            lazy = Lazy(sc)
            assert [d.to_dict() for d in compare(sc, traces[a], traces[b], cat, ctxs=lazy)] == want, (path, a, b)
            assert [d.to_dict() for d in compare(sc, traces[a], traces[b], cat)] == want, (path, a, b)
            assert lazy.asked <= 1
