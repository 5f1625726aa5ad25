"""G1 LEGACY (spec §2): every row of the §2.6 outcome table, the §2.2/§2.5 memslot invariants,
the §2.7 x86 fault path and the §2.8 gfn_to_page / kvm_vcpu_map helpers."""

from __future__ import annotations

import pytest
from helpers import COW, FRAME, GFN, ORIG, ZERO, build, host_scenario, last, lookup, run, slot, vma
from spec_tables import G1_TABLE, MEMSLOT_ROWS, UNSET, Row

G1 = "sim:g1"


def check_row(api: dict, row: Row, held: dict | None = None) -> None:
    assert api["result"] == row.result, api
    if row.frame is not UNSET:
        assert api["frame"] == row.frame, api
    if row.writable is not UNSET:
        assert api["writable"] == row.writable, api
    assert api["held"] == (row.held if held is None else held), api
    assert api["leaked"] == {}, api                # canonical release drops exactly what was held
    if row.async_ is not UNSET:
        assert api["async"] == row.async_, api
    if row.hva is not UNSET:
        assert api["hva"] == row.hva, api
    if row.accessed is not UNSET:
        assert api["accessed"] == row.accessed, api


@pytest.mark.parametrize("row", [r.param() for r in G1_TABLE + MEMSLOT_ROWS])
def test_g1_outcome_table(row: Row) -> None:
    api = lookup(G1, row.state, row.ro_slot, pre=row.pre, **row.args)
    assert api["call"] == "__gfn_to_pfn_memslot"
    check_row(api, row)
    if "nowait" not in row.args:
        assert api["async"] is None                # no async pointer passed


def test_g1_hva_always_written() -> None:
    """I7: *hva is written even for an error hva; a real hva is slot.userspace_addr + offset."""
    api = lookup(G1, "present_rw", write=True, gfn=GFN + 1)
    sc = host_scenario("present_rw", [])
    assert api["hva"] == sc.vma_start(sc.world.vmas[0]) + 0x1000


def test_g1_atomic_with_async_is_a_bug() -> None:
    """§2.3: BUG_ON(atomic && async) — a kernel BUG, later ops are not run."""
    sc = host_scenario("present_rw", [{"lookup": {"gfn": GFN, "atomic": True, "nowait": True}},
                                      {"lookup": {"gfn": GFN}}])
    t = run(G1, sc)
    assert "BUG:hva_to_pfn:BUG_ON(atomic && async)" in t.records[0].events
    assert "skipped" in t.records[1].api


def test_g1_zone_device_refcount0_warns_and_is_not_refcounted() -> None:
    """§2.4: kvm_is_zone_device_page WARNs for a ZONE_DEVICE page with refcount 0."""
    sc = build([{"lookup": {"gfn": GFN}}], pages=[{"name": "zd", "kind": "zone_device"}],
               vmas=[vma(remap="pfnmap", ptes={0: {"page": "zd"}})])
    # a declared zone_device page has refcount 1: refcounted, +1
    rec = last(run(G1, sc))
    assert rec.api["result"] == "pfn" and rec.api["held"] == {"zd": 1} and rec.api["leaked"] == {}


def test_g1_reserved_page_in_normal_vma_leaks() -> None:
    """D19 / §2.5 C1 caveat: GUP took a reference the release helpers never drop."""
    api = lookup(G1, "reserved_mixedmap", write=True)
    assert api["result"] == "pfn" and api["frame"] == "rsv"
    assert api["held"] == {"rsv": 1}
    assert api["leaked"] == {"rsv": 1}


# --- §2.7 x86 fault path -------------------------------------------------------------------------

def fault(state: str, write: bool, world: dict | None = None, pre: list | None = None, ro_slot: bool = False,
          gen: str = G1, **kw) -> dict:
    sc = host_scenario(state, [{"x86_fault": {"gfn": GFN, "write": write, **kw}}], ro_slot, pre, **(world or {}))
    rec = last(run(gen, sc))
    return rec.api


@pytest.mark.parametrize("state,write,ret,result,frame,spte_w", [
    pytest.param("present_rw", True, "FIXED", "pfn", ORIG, True, id="2.7:present_rw:W"),
    pytest.param("present_ro", True, "FIXED", "pfn", COW, True, id="2.7:present_ro:W:cow"),
    pytest.param("present_ro", False, "FIXED", "pfn", ORIG, False, id="2.7:present_ro:!W"),
    pytest.param("unpopulated", False, "FIXED", "pfn", ZERO, False, id="2.7:unpopulated:!W:zero"),
    pytest.param("needs_io", True, "FIXED", "pfn", ORIG, True, id="2.7:needs_io:no-apf:second-attempt"),
    pytest.param("hwpoison", False, "RETRY", "ERR_HWPOISON", None, None, id="2.7:hwpoison:sigbus"),
    pytest.param("no_vma", False, "-EFAULT", "ERR_FAULT", None, None, id="2.7:no_vma:efault"),
    pytest.param("ro_vma", True, "-EFAULT", "ERR_FAULT", None, None, id="2.7:vma-no-write:efault"),
    pytest.param("needs_io_fatal", False, "-EINTR", "ERR_SIGPENDING", None, None, id="2.7:fatal:eintr"),
    pytest.param("needs_io_signal", False, "-EINTR", "ERR_SIGPENDING", None, None,
                 id="2.7:second-attempt-interruptible"),
    pytest.param("remap:none", True, "FIXED", "pfn", FRAME, True, id="2.7:remap:no-struct-page"),
    pytest.param("remap:none:ro", True, "EMULATE", "ERR_RO_FAULT", None, None, id="2.7:remap:W:pte-ro"),
])
def test_g1_x86_fault(state, write, ret, result, frame, spte_w) -> None:
    api = fault(state, write)
    assert api["ret"] == ret, api
    assert api["result"] == result, api
    assert api["frame"] == frame
    assert api["leaked"] == {}                     # kvm_release_pfn_clean after the map step
    if spte_w is None:
        assert api["spte"] is None
    else:
        assert api["spte"]["writable"] is spte_w
    if result == "ERR_HWPOISON":
        sc = host_scenario(state, [])
        hva = sc.vma_start(sc.world.vmas[0])
        assert api["signals"] == [f"SIGBUS:BUS_MCEERR_AR:{hva:#x}"]


def test_g1_x86_ro_slot_write_emulates() -> None:
    api = fault("present_rw", True, ro_slot=True)
    assert (api["ret"], api["result"]) == ("EMULATE", "ERR_RO_FAULT")


def test_g1_x86_ro_slot_read_maps_read_only() -> None:
    api = fault("present_rw", False, ro_slot=True)
    assert api["ret"] == "FIXED" and api["map_writable"] is False and api["spte"]["writable"] is False


def test_g1_x86_noslot_installs_mmio_spte() -> None:
    sc = host_scenario("present_rw", [{"x86_fault": {"gfn": 0x9000}}])
    api = last(run(G1, sc)).api
    assert api["result"] == "NOSLOT" and api["mmio_spte"] is True and api["ret"] == "EMULATE"


def test_g1_x86_invalid_slot_retries() -> None:
    api = fault("present_rw", True, pre=[{"memslot_invalidate": {"slot": 0}}])
    assert api["ret"] == "RETRY" and api["calls"] == []


def test_g1_x86_async_pf_queued() -> None:
    api = fault("needs_io", False, world={"vcpu": {"async_pf": True}})
    assert api["ret"] == "RETRY" and api["async_pf"] == "queued" and api["result"] == "ERR_FAULT"
    assert api["calls"] == ["__gfn_to_pfn_memslot"] and api["leaked"] == {}


def test_g1_x86_prefetch_does_no_async_pf() -> None:
    api = fault("needs_io", False, world={"vcpu": {"async_pf": True}}, prefetch=True)
    assert api["async_pf"] is None and api["calls"] == ["__gfn_to_pfn_memslot"] * 2


def test_g1_x86_stale_fault_still_releases_and_marks_accessed() -> None:
    """D20: GUP done, RETRY under mmu_lock, kvm_release_pfn_clean marks the page accessed."""
    api = fault("present_rw", True, race_invalidate=True)
    assert api["ret"] == "RETRY" and api["leaked"] == {} and ORIG in api["accessed"]


def test_g1_x86_internal_slot_hidden_from_l2() -> None:
    sc = build([{"x86_fault": {"gfn": GFN}}], vmas=[vma(page_states={0: "present_rw"})],
               memslots=[{"internal": "apic_access", "gfn": GFN, "pages": 1, "vma": "ram"}],
               vcpu={"guest_mode": True})
    api = last(run(G1, sc)).api
    assert api["result"] == "NOSLOT" and api["calls"] == [] and api["mmio_spte"] is True


def test_g1_x86_apic_access_slot_without_apicv_emulates() -> None:
    sc = build([{"x86_fault": {"gfn": GFN}}], vmas=[vma(page_states={0: "present_rw"})],
               memslots=[{"internal": "apic_access", "gfn": GFN, "pages": 1, "vma": "ram"}],
               vcpu={"apicv": False})
    assert last(run(G1, sc)).api["ret"] == "EMULATE"


# --- §2.8 gfn_to_page / kvm_vcpu_map ----------------------------------------------------------------

@pytest.mark.parametrize("state,ro_slot,result,held", [
    pytest.param("present_rw", False, ORIG, {ORIG: 1}, id="2.8:g2p:present"),
    pytest.param("present_rw", True, "ERR_PTR_BAD_PAGE", {}, id="2.8:g2p:ro-slot"),
    pytest.param("hwpoison", False, "ERR_PTR_BAD_PAGE", {}, id="2.8:g2p:hwpoison"),
    pytest.param("remap:normal", False, FRAME, {FRAME: 1}, id="2.8:g2p:remap-refcounted"),
    pytest.param("remap:none", False, "ERR_PTR_BAD_PAGE", {}, id="2.8:g2p:remap-no-struct-page"),
    pytest.param("remap:reserved", False, "ERR_PTR_BAD_PAGE", {}, id="2.8:g2p:remap-reserved"),
])
def test_g1_gfn_to_page(state, ro_slot, result, held) -> None:
    sc = host_scenario(state, [{"gfn_to_page": {"gfn": GFN}}], ro_slot)
    api = last(run(G1, sc)).api
    assert api["result"] == result and api["held"] == held and api["leaked"] == {}


@pytest.mark.parametrize("state,ro_slot,ret,method", [
    pytest.param("present_rw", False, 0, "kmap", id="2.8:map:present"),
    pytest.param("present_rw", True, "-EINVAL", None, id="2.8:map:ro-slot-always-write"),
    pytest.param("hwpoison", False, "-EINVAL", None, id="2.8:map:hwpoison-no-sigbus"),
    pytest.param("remap:none", False, 0, "memremap", id="2.8:map:remap-no-struct-page"),
    pytest.param("remap:reserved", False, 0, "kmap", id="2.8:map:remap-reserved-kmap"),
])
def test_g1_vcpu_map(state, ro_slot, ret, method) -> None:
    sc = host_scenario(state, [{"vcpu_map": {"gfn": GFN, "handle": "m"}},
                               {"vcpu_unmap": {"handle": "m", "dirty": True}}], ro_slot)
    t = run(G1, sc)
    m, u = t.records[-2].api, t.records[-1].api
    assert m["ret"] == ret and m["method"] == method
    assert t.meta["refs_held_at_end"] == {} and t.meta["pins_held_at_end"] == {}
    assert not any(r.events for r in t.records)
    if ret == 0 and state == "present_rw":
        assert m["held"] == {ORIG: 1} and u["released"] == {ORIG: -1} and u["dirty"] == [ORIG]


def test_g1_vcpu_unmap_dirty_log_iff_dirty() -> None:
    """D9: ≤ v6.12 the dirty log is set iff the caller unmaps with dirty=true."""
    for dirty in (False, True):
        sc = build([{"vcpu_map": {"gfn": GFN, "handle": "m"}}, {"vcpu_unmap": {"handle": "m", "dirty": dirty}}],
                   vmas=[vma(page_states={0: "present_rw"})], memslots=[slot(log_dirty=True)])
        assert last(run(G1, sc)).api["dirty_logged"] is dirty


@pytest.mark.parametrize("backend", ["sim:g1", "sim:g2", "sim:g2s", "sim:g2f", "sim:g3"])
@pytest.mark.parametrize("prot,writable", [("rw", True), ("r", False)])
def test_async_pf_worker_faults_in_for_write(backend, prot, writable) -> None:
    """async_pf_execute always uses FOLL_WRITE (virt/kvm/async_pf.c): after an async #PF for a
    guest *read*, the page is present and writable in a VM_WRITE mapping, so the re-entered read
    fault maps it writable.  Without VM_WRITE the worker's GUP fails and the page-ready (read)
    prefetch fault brings the page in read-only."""
    ops = [{"x86_fault": {"gfn": GFN, "write": False}}, {"x86_fault": {"gfn": GFN, "write": False}}]
    sc = build(ops, vmas=[vma(prot=prot, page_states={0: "needs_io"})], memslots=[slot()],
               vcpu={"async_pf": True}, notifier={"seq": 1})
    t = run(backend, sc)
    first, second = t.records[0].api, t.records[1].api
    assert first["ret"] == "RETRY" and first["async_pf"] == "queued" and first["leaked"] == {}
    assert second["ret"] == "FIXED" and second["map_writable"] is writable
    assert t.meta["refs_held_at_end"] == {}


@pytest.mark.parametrize("backend,world", [("sim:g1", {}), ("sim:g2", {}), ("sim:g3", {"allow_unsafe_mappings": True})])
def test_vcpu_map_memremap_failure_is_efault_without_leak(backend, world) -> None:
    """§2.8 / §6.3: memremap failing gives -EFAULT; a pfn without struct page never held a
    reference (G1) or a pin (G3, D27), so nothing is left behind."""
    sc = build([{"vcpu_map": {"gfn": GFN, "handle": "m"}}, {"vcpu_unmap": {"handle": "m"}}],
               pages=[{"name": "bar", "kind": "none", "memremap_ok": False}],
               vmas=[vma(remap="pfnmap", ptes={0: {"page": "bar"}})], **world)
    t = run(backend, sc)
    assert t.records[0].api["ret"] == "-EFAULT" and t.records[0].api["method"] is None
    assert t.meta["refs_held_at_end"] == {} and t.meta["pins_held_at_end"] == {}
