"""G2f FOLLOW_PFN v11 (spec §5): the §5.1 remapped decision table (pfn kind × caller class ×
allow_non_refcounted_struct_page × allow_unsafe_mappings), the core's entry checks and the
hva_to_pfn deltas from G1, and the x86 path."""

from __future__ import annotations

import pytest
from helpers import COW, FRAME, GFN, ORIG, ZERO, host_scenario, last, lookup, run

G2F = "sim:g2f"


# --- §5.1 decision table: remapped, PTE present, no RO conflict -----------------------------------
# Column "FOLL_GET, !guarded" = legacy shims (lookup want_ref, allow_non_refcounted=false);
# column "!FOLL_GET, guarded" = x86-fault-like callers (allow_non_refcounted=true).

@pytest.mark.parametrize("kind,unsafe,result,page,held", [
    pytest.param("normal", False, "pfn", FRAME, {FRAME: 1}, id="5.1:refcounted:GET,!guarded:ref-kept"),
    pytest.param("zone_device", False, "pfn", FRAME, {FRAME: 1}, id="5.1:zone_device:GET,!guarded:ref-kept"),
    pytest.param("refcount0", False, "ERR_FAULT", None, {}, id="5.1:refcount0:GET,!guarded:!allow_non_refcounted"),
    pytest.param("refcount0", True, "ERR_FAULT", None, {}, id="5.1:refcount0:GET,!guarded:!allow_non_refcounted:P"),
    pytest.param("reserved", False, "ERR_FAULT", None, {}, id="5.1:reserved:GET,!guarded:!P"),
    pytest.param("reserved", True, "pfn", None, {}, id="5.1:reserved:GET,!guarded:P"),
    pytest.param("none", False, "ERR_FAULT", None, {}, id="5.1:no-struct-page:GET,!guarded:!P"),
    pytest.param("none", True, "pfn", None, {}, id="5.1:no-struct-page:GET,!guarded:P"),
])
def test_g2f_table_foll_get_unguarded(kind, unsafe, result, page, held) -> None:
    api = lookup(G2F, f"remap:{kind}", world={"allow_unsafe_mappings": unsafe}, want_ref=True, guarded=False)
    assert api["call"] == "kvm_follow_pfn"
    assert (api["result"], api["page"], api["held"], api["leaked"]) == (result, page, held, {}), api


@pytest.mark.parametrize("kind,unsafe,result,page", [
    pytest.param("normal", False, "pfn", FRAME, id="5.1:refcounted:!GET,guarded:page-set-no-ref"),
    pytest.param("refcount0", False, "pfn", None, id="5.1:refcount0:!GET,guarded:allow_non_refcounted"),
    pytest.param("reserved", False, "pfn", None, id="5.1:reserved:!GET,guarded"),
    pytest.param("none", False, "pfn", None, id="5.1:no-struct-page:!GET,guarded"),
    pytest.param("none", True, "pfn", None, id="5.1:no-struct-page:!GET,guarded:P"),
])
def test_g2f_table_guarded_no_get(kind, unsafe, result, page) -> None:
    api = lookup(G2F, f"remap:{kind}", world={"allow_unsafe_mappings": unsafe}, want_ref=False, guarded=True)
    assert (api["result"], api["page"], api["held"], api["leaked"]) == (result, page, {}, {}), api
    if result == "pfn":
        assert api["frame"] == FRAME


def _follow(state: str, *, get: bool, guarded: bool, allow_non_refcounted: bool, unsafe: bool = False,
            write: bool = False):
    """Call v11 kvm_follow_pfn directly (for cells no neutral op reaches, e.g. x86 with
    allow_non_refcounted_struct_page = shadow_refcounted_mask = 0 on 32-bit/shadow paging)."""
    from kvmsim.constants import FOLL_GET, FOLL_WRITE, pfn_class
    from kvmsim.g2f_posted import Kfp, kvm_follow_pfn
    from kvmsim.world import World
    w = World.from_scenario(host_scenario(state, [], allow_unsafe_mappings=unsafe))
    kfp = Kfp(w.slot_for(GFN, False), GFN, (FOLL_GET if get else 0) | (FOLL_WRITE if write else 0),
              guarded_by_mmu_notifier=guarded, allow_non_refcounted_struct_page=allow_non_refcounted)
    pfn = kvm_follow_pfn(w, kfp)
    refs = {p.name: p.kvm_refs for p in w.db.pages.values() if p.kvm_refs}
    return pfn_class(pfn), kfp, refs, w


@pytest.mark.parametrize("kind,get,guarded,anr,unsafe,result,ref", [
    # refcount-0: "FAULT if !allow_non_refcounted; else FAULT unless allow_unsafe_mappings" (GET, !guarded)
    pytest.param("refcount0", True, False, True, False, "ERR_FAULT", 0, id="5.1:refcount0:GET,!guarded:anr:!P"),
    pytest.param("refcount0", True, False, True, True, "pfn", 0, id="5.1:refcount0:GET,!guarded:anr:P"),
    # refcount-0, !GET guarded: "FAULT if !allow_non_refcounted (x86 32-bit/shadow)"
    pytest.param("refcount0", False, True, False, False, "ERR_FAULT", 0, id="5.1:refcount0:!GET,guarded:!anr"),
    pytest.param("refcount0", False, True, True, False, "pfn", 0, id="5.1:refcount0:!GET,guarded:anr"),
    # refcounted struct page: allow_non_refcounted irrelevant
    pytest.param("normal", True, False, False, False, "pfn", 1, id="5.1:refcounted:GET:!anr"),
    pytest.param("normal", False, True, False, False, "pfn", 0, id="5.1:refcounted:!GET,guarded:!anr"),
    # reserved / no struct page are not "struct pages" for the anr check (refcounted_page_G1 → NULL
    # for reserved; pfn_valid false for none): only guarded/P matter
    pytest.param("none", False, True, False, False, "pfn", 0, id="5.1:no-struct-page:!GET,guarded:!anr"),
])
def test_g2f_table_direct(kind, get, guarded, anr, unsafe, result, ref) -> None:
    res, kfp, refs, _ = _follow(f"remap:{kind}", get=get, guarded=guarded, allow_non_refcounted=anr,
                                unsafe=unsafe)
    assert res == result
    assert refs.get(FRAME, 0) == ref


def test_g2f_reserved_remapped_with_allow_non_refcounted_false() -> None:
    """v11 4/8: for a PG_reserved frame refcounted_page_G1() is NULL, so the
    "struct page but not refcounted" refusal does not apply; only guarded/P decide."""
    res, *_ = _follow("remap:reserved", get=False, guarded=True, allow_non_refcounted=False)
    assert res == "pfn"


# --- core entry checks and hva_to_pfn deltas -------------------------------------------------------

def test_g2f_unguarded_without_get_warns() -> None:
    """D10: WARN + FAULT iff !FOLL_GET && !guarded_by_mmu_notifier."""
    sc = host_scenario("present_rw", [{"lookup": {"gfn": GFN, "want_ref": False, "guarded": False}}])
    rec = last(run(G2F, sc))
    assert rec.api["result"] == "ERR_FAULT" and rec.api["held"] == {}
    assert rec.events == ["WARN:kvm_follow_pfn:!FOLL_GET && !guarded_by_mmu_notifier"]


@pytest.mark.parametrize("state,args,result,frame,writable,held", [
    pytest.param("present_rw", {"write": True}, "pfn", ORIG, True, {ORIG: 1}, id="5.1:present_rw:GET"),
    pytest.param("present_ro", {"write": True}, "pfn", COW, True, {COW: 1}, id="5.1:present_ro:W:cow"),
    pytest.param("present_ro", {"write": False}, "pfn", ORIG, False, {ORIG: 1}, id="5.1:present_ro:!W"),
    pytest.param("unpopulated", {"write": False}, "pfn", ZERO, False, {ZERO: 1}, id="5.1:unpopulated:zero"),
    pytest.param("needs_io", {"nowait": True}, "ERR_NEEDS_IO", None, False, {}, id="5.1:needs_io:NOWAIT"),
    pytest.param("ro_vma_needs_io", {"nowait": True, "write": True}, "ERR_FAULT", None, False, {},
                 id="5.1:needs_io:NOWAIT:vma-invalid"),
    pytest.param("needs_io_signal", {"interruptible": True, "write": True}, "ERR_SIGPENDING", None, False, {},
                 id="5.1:needs_io:signal:writable-reset"),
    pytest.param("hwpoison", {"write": True}, "ERR_HWPOISON", None, False, {}, id="5.1:hwpoison"),
    pytest.param("no_vma", {"write": True}, "ERR_FAULT", None, False, {}, id="5.1:no_vma"),
])
def test_g2f_hva_to_pfn(state, args, result, frame, writable, held) -> None:
    """§5.1: G1's hva_to_pfn with NEEDS_IO instead of *async, writable reset on entry (D12)."""
    api = lookup(G2F, state, want_ref=True, **args)
    assert api["result"] == result and api["writable"] is writable and api["held"] == held, api
    assert api["leaked"] == {}
    if frame is not None:
        assert api["frame"] == frame and api["page"] == frame


def test_g2f_no_foll_get_drops_gup_reference_but_sets_page() -> None:
    """D3: refcounted_page is set even without FOLL_GET, but no reference is held."""
    api = lookup(G2F, "present_rw", want_ref=False, guarded=True, write=True)
    assert api["page"] == ORIG and api["held"] == {} and api["leaked"] == {}


def test_g2f_ro_slot_remapped_writable_true_d12b() -> None:
    """D12b: v11 reports pte.writable for a RO memslot backed by a writable PFNMAP PTE."""
    api = lookup(G2F, "remap:none", ro_slot=True, want_ref=False, guarded=True, write=False)
    assert api["result"] == "pfn" and api["writable"] is True
    api = lookup(G2F, "present_rw", ro_slot=True, want_ref=True, write=False)
    assert api["writable"] is False               # GUP path: try_map_writable cleared


def test_g2f_d15_write_to_ro_pfnmap_pte_with_struct_page() -> None:
    """D15: v11 gives FAULT (not RO_FAULT) for a RO PTE with a struct page when the caller
    disallows non-refcounted pages."""
    api = lookup(G2F, "remap:normal:ro", want_ref=True, write=True)
    assert api["result"] == "ERR_FAULT"
    api = lookup(G2F, "remap:none:ro", want_ref=True, write=True, world={"allow_unsafe_mappings": False})
    assert api["result"] == "ERR_FAULT"            # unguarded and !allow_unsafe_mappings
    api = lookup(G2F, "remap:none:ro", want_ref=False, guarded=True, write=True)
    assert api["result"] == "ERR_RO_FAULT"


def test_g2f_atomic_nowait_warns_not_bug() -> None:
    """D11: v10+ relaxed BUG_ON(atomic && async) to WARN_ON_ONCE."""
    sc = host_scenario("present_rw", [{"lookup": {"gfn": GFN, "atomic": True, "nowait": True, "write": True}}])
    rec = last(run(G2F, sc))
    assert "WARN:hva_to_pfn:atomic && FOLL_NOWAIT" in rec.events
    assert rec.api["result"] == "pfn"


# --- kvm_vcpu_map / gfn_to_page --------------------------------------------------------------------

@pytest.mark.parametrize("kind,unsafe,ret,method,held", [
    pytest.param("normal", False, 0, "kmap", {FRAME: 1}, id="5.1:map:refcounted"),
    pytest.param("refcount0", False, "-EINVAL", None, {}, id="5.1:map:refcount0:!P"),
    pytest.param("refcount0", True, 0, "kmap", {}, id="5.1:map:refcount0:P"),
    pytest.param("none", False, "-EINVAL", None, {}, id="5.1:map:no-struct-page:!P"),
    pytest.param("none", True, 0, "memremap", {}, id="5.1:map:no-struct-page:P"),
])
def test_g2f_vcpu_map(kind, unsafe, ret, method, held) -> None:
    sc = host_scenario(f"remap:{kind}", [{"vcpu_map": {"gfn": GFN, "handle": "m"}},
                                         {"vcpu_unmap": {"handle": "m", "dirty": True}}],
                       allow_unsafe_mappings=unsafe)
    t = run(G2F, sc)
    m = t.records[-2].api
    assert (m["ret"], m["method"], m["held"]) == (ret, method, held)
    assert t.meta["refs_held_at_end"] == {}


def test_g2f_gfn_to_page_remapped_refcounted() -> None:
    """D18: same as G1 — the remapped refcounted page is returned with a reference."""
    sc = host_scenario("remap:normal", [{"gfn_to_page": {"gfn": GFN}}])
    api = last(run(G2F, sc)).api
    assert api["result"] == FRAME and api["held"] == {FRAME: 1} and api["leaked"] == {}


# --- x86 (6/8 + 8/8) --------------------------------------------------------------------------------

@pytest.mark.parametrize("state,write,ret,frame", [
    pytest.param("present_rw", True, "FIXED", ORIG, id="5.1:x86:present"),
    pytest.param("remap:refcount0", False, "FIXED", FRAME, id="5.1:x86:refcount0-mapped"),
    pytest.param("remap:none", True, "FIXED", FRAME, id="5.1:x86:no-struct-page"),
])
def test_g2f_x86_holds_no_reference(state, write, ret, frame) -> None:
    sc = host_scenario(state, [{"x86_fault": {"gfn": GFN, "write": write}}])
    api = last(run(G2F, sc)).api
    assert api["ret"] == ret and api["frame"] == frame and api["leaked"] == {}
    assert api["calls"] == ["kvm_follow_pfn"]


def test_g2f_x86_d20_gup_then_retry_marks_accessed() -> None:
    """D20 "same as G1": GUP runs, the stale check under mmu_lock (gfn-based, D21) says RETRY, and
    v11 8/8's out_unlock still does kvm_set_page_accessed(fault->accessed_page) — no reference."""
    sc = host_scenario("present_rw", [{"invalidate_begin": {"vma": "ram", "page": 0}},
                                      {"x86_fault": {"gfn": GFN, "write": True}}])
    api = last(run(G2F, sc)).api
    assert api["ret"] == "RETRY" and api["calls"] == ["kvm_follow_pfn"]
    assert api["accessed"] == [ORIG] and api["leaked"] == {} and api["spte"] is None
