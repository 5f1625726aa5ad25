"""G3 MERGED (spec §6): every row of the §6.7 outcome table in its four columns — faultin
(``__kvm_faultin_pfn``), g2p (``__gfn_to_page``), map (``kvm_vcpu_map``), map_ro
(``kvm_vcpu_map_readonly``) — with and without ``allow_unsafe_mappings`` (P) where the row
depends on it; then K1–K8 and the §6.4 x86 path."""

from __future__ import annotations

import pytest
from helpers import COW, FRAME, GFN, ORIG, build, host_scenario, last, lookup, run, vma

G3 = "sim:g3"
NA = object()          # "n/a" cell


def faultin(state: str, write: bool, ro_slot: bool = False, world: dict | None = None, pre=None, **kw) -> dict:
    return lookup(G3, state, ro_slot, world, pre, write=write, **kw)


def g2p(state: str, write: bool, ro_slot: bool = False, world: dict | None = None, pre=None) -> dict:
    sc = host_scenario(state, [{"gfn_to_page": {"gfn": GFN, "write": write}}], ro_slot, pre, **(world or {}))
    rec = last(run(G3, sc))
    assert not rec.events, rec.events
    return rec.api


def vmap(state: str, writable: bool, ro_slot: bool = False, world: dict | None = None, pre=None):
    """kvm_vcpu_map(_readonly) then kvm_vcpu_unmap: (map record, unmap record, trace)."""
    sc = host_scenario(state, [{"vcpu_map": {"gfn": GFN, "writable": writable, "handle": "m"}},
                               {"vcpu_unmap": {"handle": "m"}}], ro_slot, pre, **(world or {}))
    t = run(G3, sc)
    for r in t.records:
        assert not any(e.startswith("BUG") for e in r.events), r.events
    assert t.meta["refs_held_at_end"] == {} and t.meta["pins_held_at_end"] == {}
    return t.records[-2].api, t.records[-1].api, t


# Rows of §6.7: (id, host state, W, ro_slot, pre ops, faultin expectation, g2p, map, map_ro).
# faultin: (result, writable, page, held); g2p: page name or None (NULL); map/map_ro:
# ("pin", frame, method) for a pinned kmap, ("nopin", frame, method), or "-EINVAL".
INV = [{"memslot_invalidate": {"slot": 0}}]
ROWS = [
    ("6.7:null-slot", "present_rw", True, False, [], ("NOSLOT", False, None, {}), None, "-EINVAL", "-EINVAL",
     {"gfn": 0x9000}),
    ("6.7:invalid-slot", "present_rw", True, False, INV, ("NOSLOT", False, None, {}), None, "-EINVAL",
     "-EINVAL", {}),
    ("6.7:ro-slot:W", "present_rw", True, True, [], ("ERR_RO_FAULT", False, None, {}), None, "-EINVAL", NA, {}),
    ("6.7:ro-slot:!W:present", "present_rw", False, True, [], ("pfn", False, ORIG, {ORIG: 1}), ORIG, NA,
     ("pin", ORIG, "kmap"), {}),
    ("6.7:present_rw", "present_rw", True, False, [], ("pfn", True, ORIG, {ORIG: 1}), ORIG,
     ("pin", ORIG, "kmap"), ("pin", ORIG, "kmap"), {}),
    ("6.7:present_ro:W:cow", "present_ro", True, False, [], ("pfn", True, COW, {COW: 1}), COW,
     ("pin", COW, "kmap"), NA, {}),
    ("6.7:present_ro:!W", "present_ro", False, False, [], ("pfn", False, ORIG, {ORIG: 1}), NA, NA,
     ("pin", ORIG, "kmap"), {}),
    ("6.7:needs_io:NOWAIT", "needs_io", False, False, [], ("ERR_NEEDS_IO", False, None, {}), NA, NA, NA,
     {"nowait": True}),
    ("6.7:needs_io:INTERRUPTIBLE:signal", "needs_io_signal", False, False, [],
     ("ERR_SIGPENDING", False, None, {}), NA, NA, NA, {"interruptible": True}),
    ("6.7:needs_io:otherwise", "needs_io", True, False, [], ("pfn", True, ORIG, {ORIG: 1}), ORIG,
     ("pin", ORIG, "kmap"), ("pin", ORIG, "kmap"), {}),
    ("6.7:fatal-signal", "needs_io_fatal", True, False, [], ("ERR_SIGPENDING", False, None, {}), None,
     "-EINVAL", "-EINVAL", {}),
    ("6.7:gup-eagain", "eagain", True, False, [], ("ERR_SIGPENDING", False, None, {}), None, "-EINVAL",
     "-EINVAL", {}),
    ("6.7:hwpoison", "hwpoison", True, False, [], ("ERR_HWPOISON", False, None, {}), None, "-EINVAL",
     "-EINVAL", {}),
    ("6.7:no-vma", "no_vma", True, False, [], ("ERR_FAULT", False, None, {}), None, "-EINVAL", "-EINVAL", {}),
    ("6.7:vma-lacks-permission", "none_vma", False, False, [], ("ERR_FAULT", False, None, {}), None, "-EINVAL",
     "-EINVAL", {}),
    ("6.7:remap:W:pte-ro", "remap:normal:ro", True, False, [], ("ERR_RO_FAULT", False, None, {}), None,
     "-EINVAL", "P?", {}),
    ("6.7:remap:handler-fails", "remap:none:absent-fails", True, False, [], ("ERR_FAULT", False, None, {}),
     None, "-EINVAL", "-EINVAL", {}),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r[0] + ":faultin") for r in ROWS])
def test_g3_table_faultin(row) -> None:
    _, state, w, ro, pre, (result, writable, page, held), *_rest, extra = row
    api = faultin(state, w, ro, pre=pre, **extra)
    assert api["call"] == "__kvm_faultin_pfn"
    assert (api["result"], api["writable"], api["page"], api["held"], api["leaked"]) == \
        (result, writable, page, held, {}), api
    if page is not None:
        assert api["frame"] == page                 # K1: pfn == page_to_pfn(page)


@pytest.mark.parametrize("row", [pytest.param(r, id=r[0] + ":g2p") for r in ROWS if r[6] is not NA])
def test_g3_table_gfn_to_page(row) -> None:
    _, state, w, ro, pre, _f, page, *_rest = row
    extra = row[-1]
    if "gfn" in extra:
        sc = host_scenario(state, [{"gfn_to_page": {"gfn": extra["gfn"], "write": w}}], ro, pre)
        api = last(run(G3, sc)).api
    else:
        api = g2p(state, w, ro, pre=pre)
    assert api["call"] == "__gfn_to_page"
    if page is None:
        assert api["result"] == "NULL" and api["held"] == {}
    else:
        assert api["result"] == page and api["held"] == {page: 1}
    assert api["leaked"] == {}


def _check_map(m: dict, u: dict, want, writable: bool) -> None:
    if want == "-EINVAL":
        assert m["ret"] == "-EINVAL" and m["pinned"] == {} and m["held"] == {}, m
        return
    how, frame, method = want
    assert m["ret"] == 0 and m["frame"] == frame and m["method"] == method, m
    if how == "pin":                                # K2: one pin iff pinned_page
        assert m["pinned"] == {frame: 1}, m
        assert u["unpinned"] == {frame: -1}, u
    else:
        assert m["pinned"] == {} and m["held"] == {} and u["unpinned"] == {}, (m, u)


@pytest.mark.parametrize("row,col", [pytest.param(r, col, id=f"{r[0]}-{col}") for r in ROWS
                                     for col, cell in (("map", r[7]), ("map_ro", r[8])) if cell is not NA])
def test_g3_table_vcpu_map(row, col) -> None:
    _, state, w, ro, pre, _f, _p, want_map, want_ro, extra = row
    want = want_map if col == "map" else want_ro
    writable = col == "map"
    if "gfn" in extra:
        sc = host_scenario(state, [{"vcpu_map": {"gfn": extra["gfn"], "writable": writable, "handle": "m"}},
                                   {"vcpu_unmap": {"handle": "m"}}], ro, pre)
        t = run(G3, sc)
        m, u = t.records[-2].api, t.records[-1].api
    else:
        if want == "P?":                            # map_ro of a RO PTE: -EINVAL unless P
            m, u, _ = vmap(state, writable, ro, pre=pre)
            _check_map(m, u, "-EINVAL", writable)
            m, u, _ = vmap(state, writable, ro, world={"allow_unsafe_mappings": True}, pre=pre)
            _check_map(m, u, ("nopin", FRAME, "kmap"), writable)
            return
        m, u, _ = vmap(state, writable, ro, pre=pre)
    _check_map(m, u, want, writable)
    if want == "-EINVAL" and "remap" in state:      # with P the row says the same (pin check or RO PTE)
        m, u, _ = vmap(state, writable, ro, world={"allow_unsafe_mappings": True}, pre=pre)
        _check_map(m, u, want, writable)


# --- "remapped, any pfn kind, PTE ok for the access" ----------------------------------------------

KINDS = ["none", "reserved", "refcount0", "normal", "zone_device"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pte_ro", [False, True], ids=["pte-rw", "pte-ro"])
@pytest.mark.parametrize("ro_slot", [False, True], ids=["rw-slot", "ro-slot"])
def test_g3_table_remapped_faultin(kind, pte_ro, ro_slot) -> None:
    """6.7 remapped row, faultin: PTE pfn, pte.writable (F for RO slot), NULL, 0 (K3)."""
    state = f"remap:{kind}" + (":ro" if pte_ro else "")
    api = faultin(state, False, ro_slot)
    assert api["result"] == "pfn" and api["frame"] == FRAME
    assert api["writable"] is (not pte_ro and not ro_slot)
    assert api["page"] is None and api["held"] == {} and api["leaked"] == {}


@pytest.mark.parametrize("kind", KINDS)
def test_g3_table_remapped_g2p_null(kind) -> None:
    assert g2p(f"remap:{kind}", True)["result"] == "NULL"
    assert g2p(f"remap:{kind}", False)["result"] == "NULL"


@pytest.mark.parametrize("col", ["map", "map_ro"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unsafe", [False, True], ids=["!P", "P"])
def test_g3_table_remapped_vcpu_map(kind, unsafe, col) -> None:
    """-EINVAL if !P; if P: no pin, kmap if pfn_valid else memremap (K3, K8)."""
    m, u, _ = vmap(f"remap:{kind}", col == "map", world={"allow_unsafe_mappings": unsafe})
    if not unsafe:
        _check_map(m, u, "-EINVAL", col == "map")
    else:
        _check_map(m, u, ("nopin", FRAME, "memremap" if kind == "none" else "kmap"), col == "map")


def test_g3_missing_pointer_warns() -> None:
    """6.7 last row / D10: __kvm_faultin_pfn with a NULL writable or refcounted_page pointer."""
    from kvmsim.g3_merged import kvm_faultin_pfn_
    from kvmsim.generation import Out
    from kvmsim.world import World
    sc = host_scenario("present_rw", [])
    for writable, page in ((None, Out()), (Out(), None)):
        w = World.from_scenario(sc)
        pfn = kvm_faultin_pfn_(w, w.slot_for(GFN, False), GFN, 0, writable, page)
        from kvmsim.constants import pfn_class
        assert pfn_class(pfn) == "ERR_FAULT"
        assert w.events == ["WARN:__kvm_faultin_pfn:NULL pointer"]
        assert all(p.kvm_refs == 0 for p in w.db.pages.values())


# --- contracts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["present_rw", "present_ro", "unpopulated", "remap:none", "remap:normal"])
def test_g3_k4_ro_slot_never_writable(state) -> None:
    api = faultin(state, False, ro_slot=True)
    assert api["writable"] is False


@pytest.mark.parametrize("state", ["needs_io", "ro_vma_needs_io", "hwpoison", "no_vma", "remap:none:absent-fails"])
def test_g3_k4_writable_false_on_error(state) -> None:
    for w in (False, True):
        api = faultin(state, w)
        if api["result"] != "pfn":
            assert api["writable"] is False


def test_g3_k5_needs_io_only_with_nowait_and_valid_vma() -> None:
    assert faultin("needs_io", True, nowait=True)["result"] == "ERR_NEEDS_IO"
    assert faultin("ro_vma_needs_io", True, nowait=True)["result"] == "ERR_FAULT"     # vma invalid (D2)
    assert faultin("remap:none:absent-populates", False, nowait=True)["result"] == "pfn"  # D25
    assert g2p("needs_io", True)["result"] == ORIG


def test_g3_d13_eagain_is_sigpending() -> None:
    assert faultin("eagain", False)["result"] == "ERR_SIGPENDING"
    assert lookup("sim:g1", "eagain", write=False)["result"] == "ERR_FAULT"


def test_g3_map_ro_of_present_rw_uses_slow_path_pin() -> None:
    """§6.2: read-only users take the slow path; no upgrade for pins (no WARN without map_writable)."""
    m, u, t = vmap("present_rw", False)
    assert m["pinned"] == {ORIG: 1}
    assert not any(r.events for r in t.records)


def test_g3_unmap_dirty_log_iff_mapped_writable() -> None:
    """D9: v6.13 sets the dirty log iff mapped writable, whatever the caller says."""
    from helpers import slot
    for writable in (False, True):
        sc = build([{"vcpu_map": {"gfn": GFN, "writable": writable, "handle": "m"}},
                    {"vcpu_unmap": {"handle": "m", "dirty": not writable}}],
                   vmas=[vma(page_states={0: "present_rw"})], memslots=[slot(log_dirty=True)])
        u = last(run(G3, sc)).api
        assert u["dirty_logged"] is writable
        assert (ORIG in u["dirty"]) is writable


# --- §6.4 x86 -------------------------------------------------------------------------------------

def x86(state: str, write: bool, world: dict | None = None, pre=None, **kw) -> dict:
    sc = host_scenario(state, [{"x86_fault": {"gfn": GFN, "write": write, **kw}}], False, pre, **(world or {}))
    return last(run(G3, sc)).api


def test_g3_x86_dirty_at_spte_creation() -> None:
    """§6.5: the folio is marked dirty when a SPTE is created from a writable host mapping."""
    api = x86("present_rw", False)
    assert api["ret"] == "FIXED" and api["map_writable"] is True
    assert api["dirty"] == [ORIG] and api["accessed"] == [ORIG] and api["leaked"] == {}


def test_g3_x86_retry_after_gup_is_unused_release() -> None:
    """D20: v6.8+ RETRY right after GUP: kvm_release_page_unused, no accessed."""
    api = x86("present_rw", True, race_invalidate=True)
    assert api["ret"] == "RETRY" and api["leaked"] == {} and api["accessed"] == [] and api["dirty"] == []


def test_g3_x86_retry_before_gup_when_invalidation_in_progress() -> None:
    pre = [{"invalidate_begin": {"vma": "ram", "page": 0}}]
    api = x86("present_rw", True, pre=pre)
    assert api["ret"] == "RETRY" and api["calls"] == []


def test_g3_x86_remapped_refcount0_mapped() -> None:
    api = x86("remap:refcount0", True)
    assert api["ret"] == "FIXED" and api["frame"] == FRAME and api["leaked"] == {}


def test_g3_x86_needs_io_async_pf_then_interruptible() -> None:
    api = x86("needs_io", False, world={"vcpu": {"async_pf": True}})
    assert api["ret"] == "RETRY" and api["async_pf"] == "queued" and api["result"] == "ERR_NEEDS_IO"
    api = x86("needs_io_signal", False)
    assert api["ret"] == "-EINTR" and api["calls"] == ["__kvm_faultin_pfn"] * 2


def test_g3_map_ro_of_zero_page_takes_no_pin() -> None:
    """pin_user_pages*() leave the shared zero page unpinned and unpin_user_page() ignores it
    (mm/gup.c since v6.5, "mm: Don't pin ZERO_PAGE in pin_user_pages()"), so kvm_vcpu_map_readonly
    of a never-written anonymous page sets pinned_page = zero page without holding a pin."""
    m, u, _ = vmap("unpopulated", False)
    assert m["ret"] == 0 and m["frame"] == "zero" and m["method"] == "kmap"
    assert m["pinned"] == {} and m["held"] == {}
    assert u["unpinned"] == {} and u["released"] == {}


@pytest.mark.parametrize("backend,ret,mmio", [
    ("sim:g1", "EMULATE", True),       # §2.7: every non-visible (internal) slot is hidden from L2
    ("sim:g2f", "EMULATE", True),      # v11 keeps the ≤6.7 __kvm_faultin_pfn visibility check
    ("sim:g3", "FIXED", False),        # §6.4: only the APIC-access slot is special-cased for L2
])
def test_l2_access_to_internal_tss_slot(backend, ret, mmio) -> None:
    """A G1↔G3 difference the §7 catalogue does not list: L2 faults on the TSS/identity-map
    internal slots are emulated as MMIO up to v6.12 but mapped in v6.13."""
    sc = build([{"x86_fault": {"gfn": GFN, "write": True}}], vmas=[vma(page_states={0: "present_rw"})],
               memslots=[{"internal": "tss", "gfn": GFN, "pages": 1, "vma": "ram"}], vcpu={"guest_mode": True})
    api = last(run(backend, sc)).api
    assert api["ret"] == ret and api["mmio_spte"] is mmio
