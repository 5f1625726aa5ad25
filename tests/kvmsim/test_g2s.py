"""G2s SKETCH (spec §4): the intended reading (§4.1/§4.2) and each literal quirk with
semantics (§4.3: S2, S4, S5, S6, S8, S13), each alone through ``sim:g2s-literal:Sx``."""

from __future__ import annotations

import pytest
from helpers import FRAME, GFN, ORIG, host_scenario, last, lookup, run

G2S = "sim:g2s"
LIT = "sim:g2s-literal"


# --- §4.1 / §4.2 intended -------------------------------------------------------------------------

@pytest.mark.parametrize("state,args,result,page,held", [
    pytest.param("present_rw", {"want_ref": True, "write": True}, "pfn", ORIG, {ORIG: 1}, id="4.2:GET:ref-kept"),
    pytest.param("present_rw", {"want_ref": False, "guarded": True, "write": True}, "pfn", ORIG, {},
                 id="4.1-4:!GET,guarded:ref-dropped-pointer-kept"),
    pytest.param("needs_io", {"want_ref": True, "nowait": True}, "ERR_NEEDS_IO", None, {},
                 id="4.1-3:NOWAIT:vma-valid:FAULT_MINOR"),
    pytest.param("ro_vma_needs_io", {"want_ref": True, "nowait": True, "write": True}, "ERR_FAULT", None, {},
                 id="4.1-3:NOWAIT:vma-invalid:FAULT"),
    pytest.param("remap:normal", {"want_ref": False, "guarded": True}, "pfn", None, {},
                 id="4.2:remap:refcounted:noref"),
    pytest.param("remap:refcount0", {"want_ref": False, "guarded": True}, "pfn", None, {},
                 id="4.2:remap:refcount0:accepted-if-guarded"),
])
def test_g2s_intended_lookup(state, args, result, page, held) -> None:
    api = lookup(G2S, state, **args)
    assert (api["result"], api["page"], api["held"], api["leaked"]) == (result, page, held, {}), api


def test_g2s_intended_guard_is_notifier_not_seq() -> None:
    """§4.1 item 4 (intended): inside an mmu_notifier sequence, even at seq 0, is fine."""
    api = lookup(G2S, "present_rw", want_ref=False, guarded=True)
    assert api["result"] == "pfn"
    sc = host_scenario("present_rw", [{"lookup": {"gfn": GFN, "want_ref": False, "guarded": False}}])
    rec = last(run(G2S, sc))
    assert rec.api["result"] == "ERR_FAULT" and rec.events == ["WARN:__kvm_follow_pfn:!FOLL_GET && !mmu_seq"]


@pytest.mark.parametrize("seq", [0, 3])
def test_g2s_intended_x86_read_stays_read(seq) -> None:
    """D23 intended: the second attempt keeps the caller's flags; read → read, no ref kept (D24)."""
    sc = host_scenario("needs_io", [{"x86_fault": {"gfn": GFN, "write": False}}], notifier={"seq": seq})
    rec = last(run(G2S, sc))
    api = rec.api
    assert api["ret"] == "FIXED" and api["map_writable"] is False and api["leaked"] == {}
    assert api["calls"] == ["__kvm_follow_pfn", "kvm_follow_pfn"]
    assert not rec.events


# --- §4.3 literal quirks ---------------------------------------------------------------------------

def test_s2_warn_at_seq_zero() -> None:
    """S2/D10: WARN + FAULT when !FOLL_GET && mmu_seq == 0 — fires for a new VM."""
    sc = host_scenario("present_rw", [{"x86_fault": {"gfn": GFN, "write": True}}])
    rec = last(run(LIT + ":S2", sc))
    assert rec.api["ret"] == "-EFAULT"
    assert rec.events == ["WARN:__kvm_follow_pfn:!FOLL_GET && !mmu_seq"]
    sc = host_scenario("present_rw", [{"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    assert last(run(LIT + ":S2", sc)).api["ret"] == "FIXED"


def test_s2_after_32bit_wrap() -> None:
    """S2: seq can wrap to 0 on 32-bit after 2^32 invalidations."""
    sc = host_scenario("present_rw", [{"madvise": {"vma": "ram", "page": 1}},
                                      {"x86_fault": {"gfn": GFN, "write": True}}],
                       notifier={"seq": 0xFFFFFFFF, "seq_bits": 32})
    t = run(LIT + ":S2", sc)
    assert t.records[-1].api["ret"] == "-EFAULT"


def test_s4_forces_write_on_second_attempt() -> None:
    """S4/D23: the x86 second attempt goes through kvm_follow_pfn, which forces FOLL_WRITE."""
    sc = host_scenario("needs_io", [{"x86_fault": {"gfn": GFN, "write": False}}], notifier={"seq": 1})
    api = last(run(LIT + ":S4", sc)).api
    assert api["ret"] == "FIXED" and api["map_writable"] is True


def test_s4_s5_ro_slot_read_fails_with_hva_constant() -> None:
    """S4+S5/D22: a read of a RO slot becomes a write and gets KVM_HVA_ERR_RO_BAD as a pfn:
    is_error_pfn, but not RO_FAULT → -EFAULT instead of emulation."""
    sc = host_scenario("needs_io", [{"x86_fault": {"gfn": GFN, "write": False}}], ro_slot=True,
                       notifier={"seq": 1})
    api = last(run(LIT + ":S4,S5", sc)).api
    assert api["result"] == "HVA_ERR_RO_BAD_AS_PFN" and api["ret"] == "-EFAULT"
    api = last(run(LIT + ":S4", sc)).api
    assert api["result"] == "ERR_RO_FAULT" and api["ret"] == "EMULATE"


def test_s5_vcpu_map_no_slot() -> None:
    sc = host_scenario("present_rw", [{"vcpu_map": {"gfn": 0x9000}}])
    assert last(run(LIT + ":S5", sc)).api["ret"] == "-EINVAL"   # HVA_ERR_BAD is still is_error_noslot


def test_s6_no_slot_in_x86_initialiser() -> None:
    """S6: every gfn resolves as "no slot"; x86 then maps a SPTE from a non-pfn."""
    sc = host_scenario("present_rw", [{"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    rec = last(run(LIT + ":S6", sc))
    assert rec.api["calls"] == ["__kvm_follow_pfn"] and rec.api["frame"] != ORIG
    assert "CORRUPT:spte_from_error_pfn" in rec.events


def test_full_literal_never_reaches_gup_in_x86() -> None:
    """With S6 the 1st attempt is always NOSLOT, so S2/S4/S8 cannot show in the full literal
    x86 path at seq > 0 (each quirk is tested alone below)."""
    sc = host_scenario("needs_io", [{"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    t = run(LIT, sc)
    assert t.records[-1].api["calls"] == ["__kvm_follow_pfn"]
    assert t.meta["refs_held_at_end"] == {}


def test_s8_underflow_when_first_attempt_succeeds() -> None:
    """S8/D24: the 1st attempt dropped its reference (no FOLL_GET) but the exit path still puts
    fault->page: refcount underflow."""
    sc = host_scenario("present_rw", [{"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    t = run(LIT + ":S4,S8", sc)
    rec = t.records[-1]
    assert rec.api["ret"] == "FIXED"
    assert rec.api["leaked"] == {ORIG: -1}
    assert f"BUG:refcount_underflow:{ORIG}" in rec.events
    assert t.meta["refs_held_at_end"] == {ORIG: -1}


def test_s8_consistent_when_second_attempt_succeeds() -> None:
    """S8/D24: the 2nd attempt (kvm_follow_pfn, FOLL_GET forced by S4) keeps its reference, so
    the same put is correct: ownership depends on which attempt succeeded."""
    sc = host_scenario("needs_io", [{"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    t = run(LIT + ":S4,S8", sc)
    rec = t.records[-1]
    assert rec.api["ret"] == "FIXED" and rec.api["calls"] == ["__kvm_follow_pfn", "kvm_follow_pfn"]
    assert rec.api["leaked"] == {} and not rec.events
    assert t.meta["refs_held_at_end"] == {}


def test_s8_alone_underflows_on_second_attempt_too() -> None:
    """Without S4 the 2nd attempt keeps the caller's flags (no FOLL_GET), so S8 alone underflows
    whichever attempt succeeded."""
    sc = host_scenario("needs_io", [{"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    rec = last(run(LIT + ":S8", sc))
    assert rec.api["leaked"] == {ORIG: -1}


@pytest.mark.parametrize("backend", [G2S, LIT])
@pytest.mark.parametrize("kind,unsafe,ret,method", [
    pytest.param("reserved", False, "-EFAULT", None, id="S13:pfn_valid-not-gup:!unsafe"),
    pytest.param("reserved", True, 0, "memremap", id="S13:pfn_valid-not-gup:unsafe"),
    pytest.param("none", True, 0, "memremap", id="S13:no-struct-page:unsafe"),
])
def test_s13_kmap_only_gup_pages(backend, kind, unsafe, ret, method) -> None:
    """S13 holds in both modes: kmap only a page the API returned; memremap iff allow_unsafe_kmap."""
    sc = host_scenario(f"remap:{kind}", [{"vcpu_map": {"gfn": GFN, "handle": "m"}},
                                         {"vcpu_unmap": {"handle": "m"}}], allow_unsafe_mappings=unsafe,
                       notifier={"seq": 1})
    t = run(backend, sc)
    m = t.records[-2].api
    assert (m["ret"], m["method"]) == (ret, method)
    assert t.meta["refs_held_at_end"] == {}
    g1 = run("sim:g1", sc).records[-2].api
    assert g1["ret"] == 0 and g1["method"] == ("kmap" if kind == "reserved" else "memremap")


def test_g2s_vcpu_map_gup_page_kmapped() -> None:
    sc = host_scenario("present_rw", [{"vcpu_map": {"gfn": GFN, "handle": "m"}},
                                      {"vcpu_unmap": {"handle": "m"}}])
    t = run(G2S, sc)
    assert t.records[-2].api["method"] == "kmap" and t.records[-2].api["held"] == {ORIG: 1}
    assert t.meta["refs_held_at_end"] == {}


def test_g2s_x86_remapped_refcounted_no_reference() -> None:
    sc = host_scenario("remap:normal", [{"x86_fault": {"gfn": GFN, "write": True}}])
    api = last(run(G2S, sc)).api
    assert api["ret"] == "FIXED" and api["frame"] == FRAME and api["leaked"] == {}


def test_s8_underflow_on_refault_after_async_pf() -> None:
    """S8 after async #PF: the 1st fault is queued (RETRY, nothing held); the worker brings the
    page in, so the re-entered fault's 1st attempt succeeds and the exit path's put underflows."""
    ops = [{"x86_fault": {"gfn": GFN, "write": True}}, {"x86_fault": {"gfn": GFN, "write": True}}]
    sc = host_scenario("needs_io", ops, notifier={"seq": 1}, vcpu={"async_pf": True})
    t = run(LIT + ":S4,S8", sc)
    first, second = t.records[-2], t.records[-1]
    assert first.api["ret"] == "RETRY" and first.api["async_pf"] == "queued" and first.api["leaked"] == {}
    assert second.api["ret"] == "FIXED" and second.api["calls"] == ["__kvm_follow_pfn"]
    assert any(e.startswith("BUG:refcount_underflow") for e in second.events)
    t = run(G2S, sc)
    assert t.meta["refs_held_at_end"] == {} and not any(r.events for r in t.records)
