"""G2 NOREF (spec §3): the §2.6 rows through the legacy shims (unchanged contract, §3.2) and
through the noref entry points with the §3.4 deltas, plus the §3.4 table itself and the
converted x86 path (§3.3)."""

from __future__ import annotations

import pytest
from helpers import FRAME, GFN, ORIG, host_scenario, last, lookup, run
from spec_tables import G1_TABLE, MEMSLOT_ROWS, UNSET, Row
from test_g1 import check_row

G2 = "sim:g2"


@pytest.mark.parametrize("row", [r.param() for r in G1_TABLE + MEMSLOT_ROWS])
def test_g2_shim_keeps_g1_table(row: Row) -> None:
    """§3.2: legacy shims keep §2.5 C1/C2 exactly."""
    api = lookup(G2, row.state, row.ro_slot, pre=row.pre, want_ref=True, **row.args)
    check_row(api, row)


def noref_expectation(row: Row) -> tuple[str, dict, object]:
    """(result, held, *page) of a §2.6 row through a noref entry point (§3.4 deltas)."""
    result, held = row.result, row.held
    if row.remapped and row.result in ("pfn", "ERR_FAULT") and "refcount0" in row.state:
        result = "pfn"                              # §3.4: refcount-0 accepted (G1: FAULT)
    if row.remapped:
        held = {}                                   # §3.4: remapped pfns carry no reference
    if row.early:
        page = "<uninitialised>"                    # §3.2/D26: *page not written on early returns
    elif result == "pfn" and row.gup:
        page = row.frame                            # GUP success: *page = that page, +1
    else:
        page = None
    return result, held, page


@pytest.mark.parametrize("row", [r.param() for r in G1_TABLE + MEMSLOT_ROWS])
def test_g2_noref_table(row: Row) -> None:
    """§3.4: inputs, memslots, atomic, async, interruptible, signals and HWPOISON as G1; only the
    §3.4 rows change."""
    api = lookup(G2, row.state, row.ro_slot, pre=row.pre, want_ref=False, **row.args)
    result, held, page = noref_expectation(row)
    assert api["call"] == "__gfn_to_pfn_noref_memslot"
    assert api["result"] == result, api
    if result == "pfn" and row.frame is not UNSET:
        assert api["frame"] == row.frame
    if row.writable is not UNSET:
        assert api["writable"] == row.writable, api
    assert api["held"] == held, api
    assert api["leaked"] == {}, api
    assert api["page"] == page, api
    if row.async_ is not UNSET:
        assert api["async"] == row.async_


# --- the §3.4 table, row by row ------------------------------------------------------------------

@pytest.mark.parametrize("state,args,result,page,held", [
    pytest.param("present_rw", {"write": True}, "pfn", ORIG, {ORIG: 1}, id="3.4:gup-fast"),
    pytest.param("present_ro", {"write": False}, "pfn", ORIG, {ORIG: 1}, id="3.4:gup-slow"),
    pytest.param("resident", {"write": False}, "pfn", ORIG, {ORIG: 1}, id="3.4:gup-slow-after-upgrade"),
    pytest.param("remap:normal", {"write": False}, "pfn", None, {}, id="3.4:remap:refcounted:no-ref"),
    pytest.param("remap:refcount0", {"write": False}, "pfn", None, {}, id="3.4:remap:refcount0:accepted"),
    pytest.param("remap:reserved", {"write": False}, "pfn", None, {}, id="3.4:remap:reserved"),
    pytest.param("remap:none", {"write": True}, "pfn", None, {}, id="3.4:remap:no-struct-page"),
    pytest.param("hwpoison", {"write": False}, "ERR_HWPOISON", None, {}, id="3.4:error:hva_to_pfn-ran"),
    pytest.param("present_rw", {"write": True, "gfn": 0x9000}, "NOSLOT", "<uninitialised>", {},
                 id="3.4:error:noslot-unwritten"),
])
def test_g2_table_3_4(state, args, result, page, held) -> None:
    args = {"gfn": GFN, **args}
    api = lookup(G2, state, want_ref=False, **args)
    assert (api["result"], api["page"], api["held"], api["leaked"]) == (result, page, held, {})
    if page not in (None, "<uninitialised>"):
        assert api["frame"] == page                 # *page != NULL ⇒ pfn == page_to_pfn(*page)


def test_g2_ro_fault_leaves_page_unwritten() -> None:
    api = lookup(G2, "present_rw", ro_slot=True, want_ref=False, write=True)
    assert api["result"] == "ERR_RO_FAULT" and api["page"] == "<uninitialised>"


def test_g2_noref_reserved_page_in_normal_vma_does_not_leak() -> None:
    """D19: G2 puts via *page."""
    api = lookup(G2, "reserved_mixedmap", want_ref=False, write=True)
    assert api["held"] == {"rsv": 1} and api["leaked"] == {}


def test_g2_shim_refcounted_remapped_takes_reference() -> None:
    """§3.2: the shim re-takes the reference for refcounted remapped pages (after the PTL)."""
    api = lookup(G2, "remap:normal", want_ref=True)
    assert api["held"] == {FRAME: 1} and api["leaked"] == {}


# --- §3.3 converted x86 path --------------------------------------------------------------------

@pytest.mark.parametrize("state,write,ret,frame,level", [
    pytest.param("present_rw", True, "FIXED", ORIG, 1, id="3.3:x86:present"),
    pytest.param("remap:normal", True, "FIXED", FRAME, 1, id="3.3:x86:remap-refcounted:no-ref"),
    pytest.param("remap:refcount0", False, "FIXED", FRAME, 1, id="3.3:x86:remap-refcount0-mapped"),
])
def test_g2_x86(state, write, ret, frame, level) -> None:
    sc = host_scenario(state, [{"x86_fault": {"gfn": GFN, "write": write}}])
    api = last(run(G2, sc)).api
    assert api["ret"] == ret and api["frame"] == frame and api["spte"]["level"] == level
    assert api["leaked"] == {}
    assert api["calls"] == ["__gfn_to_pfn_noref_memslot"]


def _huge_world(remap: str) -> dict:
    v = {"name": "ram", "pages": 512, "start": 0x7F0000000000, "host_level": "2m", "remap": remap}
    if remap == "none":
        v["state"] = "present_rw"
    return {"vmas": [v], "memslots": [{"id": 0, "gfn": 0x200, "pages": 512, "vma": "ram"}]}


@pytest.mark.parametrize("remap,g1_level,g2_level", [
    pytest.param("none", 512, 512, id="D16:normal-huge"),
    pytest.param("pfnmap", 512, 1, id="D16:remapped-never-huge"),
])
def test_g2_hugepage_needs_page(remap, g1_level, g2_level) -> None:
    """§3.3: kvm_mmu_hugepage_adjust bails when fault->page is NULL (D16)."""
    from helpers import build
    sc = build([{"x86_fault": {"gfn": 0x200, "write": True}}], **_huge_world(remap))
    assert last(run("sim:g1", sc)).api["spte"]["level"] == g1_level
    assert last(run(G2, sc)).api["spte"]["level"] == g2_level
