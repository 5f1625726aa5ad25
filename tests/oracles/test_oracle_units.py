"""Normalisation rules, the catalogue loader, signatures and invariants, one behaviour each."""

from __future__ import annotations

import os

import pytest

from kvmsim import get_backend, loads_scenario
from kvmsim.trace import OpRecord, Trace
from oracles.catalogue import BUG_IDS, CatalogueError, Conditions, compile_cond, cond, family, load_catalogue
from oracles.diff import compare
from oracles.normalise import API_LEVEL, NA, RULES, VMM_LEVEL, normalise
from oracles.signature import make_signature, signature_id, value_class

CAT = load_catalogue()


def rec(api=None, vmm=None, events=(), op="lookup"):
    return OpRecord(0, op, api, vmm, list(events))


# --- normalisation ---------------------------------------------------------------------------

def test_async_fault_is_needs_io():
    a, fa = normalise(rec({"call": "x", "result": "ERR_FAULT", "async": True}), API_LEVEL)
    b, fb = normalise(rec({"call": "y", "result": "ERR_NEEDS_IO", "async": None}), API_LEVEL)
    assert a == b and "async-fault-is-needs-io" in fa and "async-fault-is-needs-io" not in fb


def test_fault_without_async_stays_a_fault():
    a, _ = normalise(rec({"result": "ERR_FAULT", "async": False}), API_LEVEL)
    assert a["api.result"] == "ERR_FAULT"


def test_bad_page_is_null():
    a, _ = normalise(rec({"result": "ERR_PTR_BAD_PAGE"}, op="gfn_to_page"), API_LEVEL)
    assert a["api.result"] == "NULL"


def test_writable_compared_only_on_success():
    err, _ = normalise(rec({"result": "ERR_HWPOISON", "writable": True}), API_LEVEL)
    ok, _ = normalise(rec({"result": "pfn", "writable": True}), API_LEVEL)
    assert err["api.writable"] is NA and ok["api.writable"] is True


def test_call_and_raw_hva_are_ignored_and_legacy_page_is_not_an_observation():
    a, _ = normalise(rec({"call": "__gfn_to_pfn_memslot", "hva": 0x7F00_0000_0000, "page": None}), API_LEVEL)
    assert "api.call" not in a and "api.hva" not in a and a["api.page"] is NA


def test_vmm_level_keeps_only_vmm_fields():
    a, _ = normalise(rec({"result": "pfn"}, {"outcome": "ok"}, ["WARN:x"], op="access"), VMM_LEVEL)
    assert a == {"vmm.outcome": "ok"}


def test_every_rule_is_named_and_documented_and_reported_ids_exist():
    assert len({r.name for r in RULES}) == len(RULES)
    for r in RULES:
        assert r.doc and r.spec
        if r.reports:
            assert any(e.spec == r.reports for e in CAT.entries), r.name


# --- catalogue --------------------------------------------------------------------------------

def test_shipped_catalogue_has_no_bug_entries_and_unique_ids():
    assert CAT.entries
    assert not {e.spec for e in CAT.entries} & BUG_IDS
    assert len(CAT.by_id) == len(CAT.entries)


@pytest.mark.parametrize("text,problem", [
    ("entries:\n  - {id: x, spec: S8, title: t, a: [g1], b: [g3], ops: [lookup], explains: '*'}\n", "is a bug"),
    ("entries:\n  - {id: x, spec: D99, title: t, a: [g1], b: [g3], ops: [lookup], explains: '*'}\n", "D1..D28"),
    ("entries:\n  - {id: x, spec: D4, title: t, a: [g9], b: [g3], ops: [lookup], explains: '*'}\n", "must be a list"),
    ("entries:\n  - {id: x, spec: D4, title: t, a: [g1], b: [g3], ops: [nope], explains: '*'}\n", "op kinds"),
    ("entries:\n  - {id: x, spec: D4, title: t, a: [g1], b: [g3], ops: [lookup]}\n", "explains"),
    ("entries:\n  - {id: x, spec: D4, title: t, a: [g1], b: [g3], ops: [lookup], explains: '*', bogus: 1}\n",
     "unknown field"),
    ("entries: [\n", "bad YAML"),
])
def test_bad_catalogue_is_one_line_with_file_and_line(tmp_path, text, problem):
    p = tmp_path / "cat.yaml"
    p.write_text(text)
    with pytest.raises(CatalogueError) as e:
        load_catalogue(str(p))
    msg = str(e.value)
    assert msg.startswith(str(p)) and problem in msg and "\n" not in msg


def test_conditions():
    assert cond("*", 5) and cond({"in": [1, 2]}, 2) and not cond({"not": 1}, 1)
    assert cond({"empty": True}, {}) and cond({"has": "WARN:"}, ["WARN:a"]) and cond({"prefix": "ab"}, "abc")
    assert cond(None, NA)


def test_families():
    assert family("sim:g2s-literal:S4,S8") == "g2s" and family("sim:g3") == "g3" and family("host") == "host"


# --- signatures -------------------------------------------------------------------------------

def test_signature_ignores_delta_pages_and_values_but_keeps_classes():
    a = make_signature("diff:api", "sim:g1", "sim:g3", "lookup[ref]", "api.held", {"ram+0#0": 1}, {})
    b = make_signature("diff:api", "sim:g1", "sim:g3", "lookup[ref]", "api.held", {"dev.frame3": 1}, {})
    c = make_signature("diff:api", "sim:g1", "sim:g3", "lookup[ref]", "api.held", {"dev.frame3": -1}, {})
    assert a == b != c and signature_id(a) == signature_id(b)
    assert value_class("ERR_FAULT") == "ERR_FAULT"


def test_signature_speaks_the_trace():
    # a page as the trace names it, words for placeholders, one value for a single-trace invariant
    assert value_class("ram+0#1") == "ram+0#1" and value_class("rsv") == "rsv"
    assert value_class("8)\ufffd\x03red") == "page"
    assert value_class("the execution ended at op 0 (killed)") == "after-killed"
    assert value_class("kernel BUG earlier: BUG_ON(atomic && async)") == "after-BUG"
    assert value_class("<uninitialised>") == "uninitialised"
    inv = make_signature("inv:no-warn-bug", "sim:g2f", "", "lookup[noref]", "events", ["WARN:x:y"], None)
    assert inv == "inv:no-warn-bug sim:g2f lookup[noref] events [WARN:x:y]"
    assert value_class(0x1234) == value_class(7) == "int"


def test_event_signature_strips_the_page_of_an_underflow():
    a = make_signature("diff:api", "l", "r", "x86_fault", "events", [], ["BUG:refcount_underflow:ram+0#0"])
    assert a.endswith("[]>[BUG:refcount_underflow]")


# --- diff and invariants ------------------------------------------------------------------------

S8 = """
world:
  notifier: {seq: 2}
  vmas: [{name: ram, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - x86_fault: {gfn: 0x100, write: true}
"""


def test_identical_backends_never_diverge():
    sc = loads_scenario(S8)
    t = get_backend("sim:g3").run(sc)
    assert compare(sc, t, get_backend("sim:g3").run(sc), CAT) == []


def test_s8_underflow_is_a_finding_by_diff_and_by_invariants():
    sc = loads_scenario(S8)
    divs = compare(sc, get_backend("sim:g2").run(sc), get_backend("sim:g2s-literal:S8").run(sc), CAT)
    oracles = {d.oracle for d in divs if not d.known}
    assert {"diff:api", "inv:no-warn-bug", "inv:no-leak"} <= oracles


def test_vmm_level_ignores_api_differences():
    sc = loads_scenario(S8.replace("x86_fault: {gfn: 0x100, write: true}", "access: {gpa: 0x100000}"))
    lt, rt = get_backend("sim:g1").run(sc), get_backend("sim:g3").run(sc)
    assert compare(sc, lt, rt, CAT, level="api")            # D17: dirty at SPTE creation
    assert compare(sc, lt, rt, CAT, level="vmm") == []


def test_host_traces_are_compared_at_vmm_level():
    sc = loads_scenario(S8.replace("x86_fault: {gfn: 0x100, write: true}", "access: {gpa: 0x100000}"))
    sim = get_backend("sim:g3").run(sc)
    host = Trace("host", [OpRecord(0, "access", {"not_observable": "host"},
                                   {"outcome": "efault", "exits": ["EFAULT"]})])
    divs = compare(sc, sim, host, CAT)
    assert [d.oracle for d in divs] == ["diff:vmm"] and divs[0].field == "vmm.outcome" and not divs[0].known


def test_ro_slot_writable_spte_is_an_invariant_violation():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "d12b-g2f-writable-ro-slot.yaml")
    from kvmsim import load_scenario
    sc = load_scenario(path)
    divs = compare(sc, get_backend("sim:g2f").run(sc), get_backend("sim:g3").run(sc), CAT)
    assert any(d.oracle == "inv:ro-slot-not-writable" and not d.known for d in divs)


def _violations(text: str, backend: str):
    from oracles.diff import check_invariants
    sc = loads_scenario(text)
    return check_invariants(sc, get_backend(backend).run(sc), CAT)


MAP_LEFT_OPEN = """
world:
  vmas: [{name: ram, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - vcpu_map: {gfn: 0x100, handle: m}
"""


def test_an_open_map_is_not_a_leak_but_a_closed_one_must_balance():
    assert _violations(MAP_LEFT_OPEN, "sim:g3") == []
    closed = MAP_LEFT_OPEN + "  - vcpu_unmap: {handle: m}\n"
    assert _violations(closed, "sim:g3") == []


def test_g1_reserved_page_leak_is_a_known_invariant_violation():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "d19-reserved-page-leak.yaml")
    from kvmsim import load_scenario
    from oracles.diff import check_invariants
    sc = load_scenario(path)
    vs = check_invariants(sc, get_backend("sim:g1").run(sc), CAT)
    assert vs and all(v.known and v.oracle == "inv:no-leak" for v in vs)
    assert check_invariants(sc, get_backend("sim:g3").run(sc), CAT) == []


def test_g2f_unguarded_warn_is_known_but_the_sketch_seq0_warn_is_not():
    noref = """
world:
  vmas: [{name: ram, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - lookup: {gfn: 0x100, write: true, want_ref: false}
"""
    assert all(v.known for v in _violations(noref, "sim:g2f"))
    guarded_seq0 = noref.replace("want_ref: false", "want_ref: false, guarded: true")
    vs = _violations(guarded_seq0, "sim:g2s-literal:S2")
    assert vs and not any(v.known for v in vs)


def test_a_host_that_cannot_realise_a_scenario_observes_nothing():
    sc = loads_scenario(S8.replace("x86_fault: {gfn: 0x100, write: true}", "access: {gpa: 0x100000}"))
    sim = get_backend("sim:g1").run(sc)
    host = Trace("host", [OpRecord(0, "access", {"not_observable": "host"}, {"not_realisable": "no such frame"})],
                 {"generation": "g3"})
    assert compare(sc, sim, host, CAT) == []


def test_a_host_counts_as_its_kernel_generation_for_the_catalogue():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "d05-remapped-refcount0.yaml")
    from kvmsim import load_scenario
    sc = load_scenario(path)
    sim = get_backend("sim:g1").run(sc)
    host = Trace("host", [OpRecord(0, "lookup", {"not_observable": "host"}),
                          OpRecord(1, "access", {"not_observable": "host"}, {"outcome": "ok", "data": 0, "exits": []})],
                 {"generation": "g3"})
    divs = compare(sc, sim, host, CAT)
    assert divs and all(d.known and d.oracle == "diff:vmm" for d in divs)


# --- the catalogue cuts both ways -------------------------------------------------------------------

def test_an_expected_divergence_that_does_not_appear_is_a_finding(tmp_path):
    from kvmsim import get_backend, loads_scenario
    from oracles.catalogue import load_catalogue
    from oracles.diff import compare
    # an entry that claims G3 fails every lookup of normal memory: G1 and G3 agree instead
    p = tmp_path / "cat.yaml"
    p.write_text("""
version: 1
entries:
  - id: D3-test
    spec: D3
    title: "a claim the generations do not bear out"
    a: [g1]
    b: [g3]
    ops: [lookup]
    when: {ctx.vma: normal}
    explains:
      api.result: {a: pfn, b: ERR_FAULT}
  - id: D3-loose
    spec: D3
    title: "an excuse only"
    expect: false
    a: [g1]
    b: [g3]
    ops: [lookup]
    explains:
      api.result: {a: pfn, b: ERR_FAULT}
""")
    cat = load_catalogue(str(p))
    assert cat.by_id["D3-test"].expects and not cat.by_id["D3-loose"].expects
    sc = loads_scenario("""
version: 1
world:
  vmas: [{name: ram, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - lookup: {gfn: 0x100, write: true}
""", "t.yaml")
    divs = compare(sc, get_backend("sim:g1").run(sc), get_backend("sim:g3").run(sc), cat, invariants=False)
    missing = [d for d in divs if d.oracle.startswith("missing:")]
    assert [d.oracle for d in missing] == ["missing:D3-test"] and not missing[0].known
    assert missing[0].signature == "missing:D3 sim:g1~sim:g3 lookup[ref] api.result pfn>pfn"


def test_d15_asserts_its_own_clause_and_d6_the_other():
    """D15 (v11, write through a read-only remapped PTE): FAULT when the frame has a struct page and the
    caller disallows non-refcounted pages (an unguarded lookup), even with allow_unsafe_mappings; without
    it, D6's refusal is the same FAULT and D6-lookup-g2f-ro-pte asserts it."""
    from kvmsim.scenario import OP_SCHEMAS
    cat = load_catalogue()
    args = {f.name: f.default for f in OP_SCHEMAS["lookup"]}
    args.update(write=True)
    ctx = {"ctx.vma": "remapped", "ctx.pte_writable": False, "ctx.pte_present": True, "ctx.slot": "rw",
           "ctx.frame": "normal", "ctx.signal": "none", "ctx.lock_contended": False}
    same = ({"api.result": "ERR_RO_FAULT"}, {"api.result": "ERR_RO_FAULT"})
    for unsafe, entry in ((True, "D15"), (False, "D6-lookup-g2f-ro-pte")):
        found = cat.missing("lookup", ("g2f", "g1"), same, args, {**ctx, "ctx.allow_unsafe_mappings": unsafe})
        assert [e.id for e, _ in found] == [entry]
    guarded = {**args, "guarded": True}
    assert not cat.missing("lookup", ("g2f", "g1"), same, guarded, {**ctx, "ctx.allow_unsafe_mappings": True})
    reserved = {**ctx, "ctx.frame": "reserved", "ctx.allow_unsafe_mappings": True}
    assert not cat.missing("lookup", ("g2f", "g1"), same, args, reserved)


def _reference_cond(c, v):
    """The condition semantics of the catalogue format (oracles/catalogue.py docstring), written out
    plainly as an independent reference for the compiled tests."""
    if v is NA or c == "*":
        return True
    if isinstance(c, dict) and len(c) == 1:
        (k, x), = c.items()
        if k == "in":
            return v in x
        if k == "not":
            return v != x
        if k == "empty":
            return (not v) == x
        if k == "has":
            return isinstance(v, list) and any(isinstance(e, str) and e.startswith(x) for e in v)
        if k == "prefix":
            return isinstance(v, str) and v.startswith(x)
    return v == c


def test_compiled_conditions_agree_with_the_reference():
    shapes = ["*", None, 0, "pfn", [1, 2], {"in": [1, 2]}, {"not": 1}, {"empty": True}, {"empty": False},
              {"has": "WARN:"}, {"prefix": "ab"}, {"a": 1, "b": 2}, {"other": 1}]
    values = [NA, None, 0, 1, 2, "pfn", "abc", "x", [], ["WARN:a"], ["x"], {}, {"a": 1}, [1, 2], True, False]
    for c in shapes:
        test = compile_cond(c)
        for v in values:
            assert (True if test is None else test(v)) == _reference_cond(c, v), (c, v)
            assert cond(c, v) == _reference_cond(c, v), (c, v)


def test_compiled_when_groups_keys_by_source_and_refuses_unknown_ones():
    w = Conditions.of((("op.write", True), ("ctx.vma", "remapped"), ("a.api.result", "pfn"), ("b.api.ret", "*")))
    assert w.holds_on_op({"write": True}, {"ctx.vma": "remapped"})
    assert not w.holds_on_op({"write": False}, {"ctx.vma": "remapped"})
    assert w.holds_on_obs({"api.result": "pfn"}, {}) and not w.holds_on_obs({"api.result": "NULL"}, {})
    assert not Conditions.of((("x.y", 1),)).holds_on_op({}, {})
