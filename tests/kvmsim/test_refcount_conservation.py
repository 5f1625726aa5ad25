"""Refcount conservation (spec §2.5 C1/C2, §3.4, §5.1, §6.6 K1/K2): after any scenario and the
callers' canonical releases no page has gained or lost KVM references or pins, except where the
spec says a generation leaks (D19: G1's release helpers skip the put on a PG_reserved page that
GUP returned from a normal VMA — and so do G2's and the sketch's legacy shims, which keep G1's
contract, §3.2) and the literal sketch's S8 underflow (tested in test_g2s.py)."""

from __future__ import annotations

import pytest
import yaml
from helpers import GENERATIONS, GFN, build, host_scenario, run
from hypothesis import HealthCheck, given, settings
from scenario_strategies import scenarios

from kvmsim import loads_scenario
from kvmsim.trace import Trace

# Generations whose legacy (G1-contract) paths may leak the D19 reference.
D19_LEAKERS = {"sim:g1", "sim:g2", "sim:g2s"}
D19_PAGE = "rsv"


def _check_records(backend: str, t: Trace, allowed: set[str]) -> None:
    """No BUG, oops or skipped op; a leak only of the page D19 lets a generation leak."""
    for r in t.records:
        assert not any(e.startswith("BUG:refcount_underflow") for e in r.events), (backend, r)
        assert not any(e.startswith("BUG:") for e in r.events), (backend, r)
        api = r.api or {}
        assert "oops" not in api and "skipped" not in api, (backend, r)
        for key in ("leaked", "pins_leaked"):
            for page, delta in (api.get(key) or {}).items():
                assert page in allowed and delta > 0, (backend, key, r)


def _open_maps(t: Trace, ops: list) -> tuple[dict[str, int], dict[str, int]]:
    """What the maps still open at the end hold: references and pins per page."""
    open_refs: dict[str, int] = {}
    open_pins: dict[str, int] = {}
    unmapped = {op["vcpu_unmap"]["handle"] for op in ops if "vcpu_unmap" in op}
    maps = {r.api["handle"]: r.api for r in t.records if r.op == "vcpu_map" and r.api and "handle" in r.api}
    for h, m in maps.items():
        if h in unmapped or m["ret"] != 0:
            continue
        for p, n in m["held"].items():
            open_refs[p] = open_refs.get(p, 0) + n
        for p, n in m["pinned"].items():
            open_pins[p] = open_pins.get(p, 0) + n
    return open_refs, open_pins


def check_conservation(backend: str, t: Trace, ops: list) -> None:
    allowed = {D19_PAGE} if backend in D19_LEAKERS else set()
    _check_records(backend, t, allowed)
    # what the maps still open at the end hold: one reference (G1/G2/G2s/G2f) or one pin (G3)
    open_refs, open_pins = _open_maps(t, ops)
    held = dict(t.meta["refs_held_at_end"])
    for p in allowed:
        if held.get(p, 0) > open_refs.get(p, 0):
            held[p] = open_refs.get(p, 0)           # D19 leak on top of what open maps hold
        if held.get(p) == 0:
            del held[p]
    assert held == open_refs, (backend, t.meta["refs_held_at_end"], open_refs)
    assert t.meta["pins_held_at_end"] == open_pins, (backend, t.meta["pins_held_at_end"], open_pins)
    if backend == "sim:g3":
        assert open_refs == open_pins, (open_refs, open_pins)   # K2: G3 maps hold pins only


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_conserve_references(sc_dict) -> None:
    sc = loads_scenario(yaml.safe_dump(sc_dict, sort_keys=False))
    for b in GENERATIONS:
        check_conservation(b, run(b, sc), sc_dict["ops"])


@pytest.mark.slow
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_ops=16))
def test_random_scenarios_conserve_references_long(sc_dict) -> None:
    sc = loads_scenario(yaml.safe_dump(sc_dict, sort_keys=False))
    for b in GENERATIONS:
        check_conservation(b, run(b, sc), sc_dict["ops"])


# --- the named exceptions ---------------------------------------------------------------------------

def _d19_ops() -> list:
    return [{"lookup": {"gfn": GFN, "write": True}},
            {"x86_fault": {"gfn": GFN, "write": True}},
            {"gfn_to_page": {"gfn": GFN}},
            {"vcpu_map": {"gfn": GFN, "handle": "m"}},
            {"vcpu_unmap": {"handle": "m"}}]


def test_d19_g1_leaks_on_every_legacy_path() -> None:
    t = run("sim:g1", host_scenario("reserved_mixedmap", _d19_ops()))
    leaks = [r.api.get("leaked") for r in t.records[:3]]
    assert leaks == [{"rsv": 1}, {"rsv": 1}, {"rsv": 1}]
    assert t.meta["refs_held_at_end"] == {"rsv": 4}


@pytest.mark.parametrize("backend", ["sim:g2f", "sim:g3"])
def test_d19_no_leak_in_later_generations(backend) -> None:
    t = run(backend, host_scenario("reserved_mixedmap", _d19_ops()))
    assert t.meta["refs_held_at_end"] == {} and t.meta["pins_held_at_end"] == {}


def test_d19_g2_noref_callers_do_not_leak() -> None:
    """G2's converted x86 path and noref lookups put via *page; only the shims leak."""
    ops = [{"lookup": {"gfn": GFN, "write": True, "want_ref": False}}, {"x86_fault": {"gfn": GFN, "write": True}}]
    t = run("sim:g2", host_scenario("reserved_mixedmap", ops))
    assert t.meta["refs_held_at_end"] == {}


def test_open_vcpu_map_holds_pin_until_unmap() -> None:
    """K2: an open kvm_vcpu_map holds exactly one pin (G3) / one reference (G1)."""
    sc = host_scenario("present_rw", [{"vcpu_map": {"gfn": GFN}}])
    t = run("sim:g3", sc)
    assert t.meta["pins_held_at_end"] == {"ram+0#0": 1} and t.meta["refs_held_at_end"] == {"ram+0#0": 1}
    t = run("sim:g1", sc)
    assert t.meta["pins_held_at_end"] == {} and t.meta["refs_held_at_end"] == {"ram+0#0": 1}


def test_literal_sketch_is_excluded_because_it_underflows() -> None:
    """S8: the exclusion of sim:g2s-literal from the property is for this, and only this."""
    sc = build([{"x86_fault": {"gfn": GFN, "write": True}}], vmas=[{"name": "ram", "pages": 4,
                                                                    "page_states": {0: "present_rw"}}],
               notifier={"seq": 1})
    t = run("sim:g2s-literal:S8", sc)
    assert any(e.startswith("BUG:refcount_underflow") for e in t.records[0].events)


# --- a second invariant over the same random scenarios: I1 / K4 -----------------------------------

def _ro_gfns(sc_dict) -> set[int]:
    out = set()
    for s in sc_dict["world"]["memslots"]:
        if s.get("readonly"):
            out.update(range(s["gfn"], s["gfn"] + s["pages"]))
    return out


def check_ro_slot_never_writable(backend: str, sc_dict, t: Trace) -> None:
    """§2.5 I1, §3.4, §6.6 K4: ``writable`` is never reported true for a RO memslot, and x86 never
    installs a writable SPTE there — except G2f's D12b (remapped PTE in a RO slot, v11 as posted)."""
    ro = _ro_gfns(sc_dict)
    for op, r in zip(sc_dict["ops"], t.records):
        kind, args = next(iter(op.items()))
        api = r.api or {}
        if kind == "lookup" and args["gfn"] in ro and api.get("result") == "pfn" and api.get("writable"):
            assert backend == "sim:g2f" and api["frame"].startswith("b."), (backend, op, api)   # D12b only
        if kind == "x86_fault" and args["gfn"] in ro and api.get("spte"):
            assert not api["spte"]["writable"] or backend == "sim:g2f", (backend, op, api)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_never_map_ro_slot_writable(sc_dict) -> None:
    sc = loads_scenario(yaml.safe_dump(sc_dict, sort_keys=False))
    for b in GENERATIONS:
        check_ro_slot_never_writable(b, sc_dict, run(b, sc))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_literal_sketch_violations_come_only_from_s8(sc_dict) -> None:
    """The literal sketch breaks conservation only through S8, i.e. only in the x86 exit path
    (x86_fault / access), never gaining references; a later vcpu_unmap may be the put that
    finally goes below zero when S8 took the map's reference.  With all quirks on, S6 makes every
    first x86 attempt "no slot", so S8 is never reached and the full literal mode conserves."""
    closed = {op["vcpu_unmap"]["handle"] for op in sc_dict["ops"] if "vcpu_unmap" in op}
    sc_dict["ops"] += [{"vcpu_unmap": {"handle": op["vcpu_map"]["handle"]}}
                       for op in list(sc_dict["ops"]) if "vcpu_map" in op and op["vcpu_map"]["handle"] not in closed]
    sc = loads_scenario(yaml.safe_dump(sc_dict, sort_keys=False))
    t = run("sim:g2s-literal:S8", sc)
    allowed = {D19_PAGE}
    for r in t.records:
        api = r.api or {}
        if r.op in ("x86_fault", "access"):
            assert all(d < 0 or p in allowed for p, d in (api.get("leaked") or {}).items()), r
        elif r.op != "vcpu_unmap":
            assert not any(e.startswith("BUG:") for e in r.events), r
            for p, d in (api.get("leaked") or {}).items():
                assert p in allowed and d > 0, r
    t = run("sim:g2s-literal", sc)
    assert not any(e.startswith("BUG:refcount_underflow") for r in t.records for e in r.events)
    assert all(p in allowed for p in t.meta["refs_held_at_end"]) and t.meta["pins_held_at_end"] == {}
