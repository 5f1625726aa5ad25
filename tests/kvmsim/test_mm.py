"""The host mm model (spec §1.3/§1.4): GUP order of checks, COW, zero page, NOWAIT,
interruptible waits, fatal signals, GUP-fast, the remapped primitives and host events.

Known, deliberate deviation from the spec's §1.4 table: ``gup_slow`` checks the VMA (existence,
VM_IO/VM_PFNMAP, permissions) *before* the fatal-signal check, as mm/gup.c
``__get_user_pages`` does (``check_vma_flags`` on the first iteration, then
``fatal_signal_pending`` before every ``follow_page_mask``)."""

from __future__ import annotations

import pytest
from helpers import GFN, host_scenario, vma

from kvmsim.constants import (
    EAGAIN,
    EFAULT,
    EHWPOISON,
    EINTR,
    FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE,
    FOLL_NOWAIT,
    FOLL_WRITE,
)
from kvmsim.mm import (
    NEEDS_IO,
    PRESENT_RO,
    PRESENT_RW,
    UNPOPULATED,
    fixup_user_fault,
    gup_fast_only,
    gup_slow,
    lookup_pte,
    vma_is_valid,
)
from kvmsim.world import World


def world(state: str = "present_rw", **kw) -> tuple[World, int]:
    sc = host_scenario(state, [], **kw)
    w = World.from_scenario(sc)
    slot = w.slot_for(GFN, False)
    return w, slot.userspace_addr


def entry(w: World, hva: int):
    v = w.mm.find(hva)
    return w.mm.entry(v, v.index(hva))


# --- order of checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("state,flags,signal,contended,want", [
    # killable mmap lock first: interrupted only with a fatal signal and a contended lock (D13)
    pytest.param("no_vma", 0, "fatal", True, -EAGAIN, id="lock-before-vma"),
    pytest.param("present_rw", 0, "fatal", True, -EAGAIN, id="lock-eagain"),
    pytest.param("present_rw", 0, "pending", True, 1, id="lock-contended-nonfatal-ok"),
    # VMA checks before the fatal-signal check (kernel order; spec §1.4 lists the signal first)
    pytest.param("no_vma", 0, "fatal", False, -EFAULT, id="no-vma-before-fatal"),
    pytest.param("remap:none", 0, "fatal", False, -EFAULT, id="remapped-before-fatal"),
    pytest.param("ro_vma", FOLL_WRITE, "fatal", False, -EFAULT, id="write-perm-before-fatal"),
    pytest.param("none_vma", 0, "fatal", False, -EFAULT, id="read-perm-before-fatal"),
    # fatal signal before any page work (hwpoison, NOWAIT, I/O)
    pytest.param("hwpoison", FOLL_HWPOISON, "fatal", False, -EINTR, id="fatal-before-hwpoison"),
    pytest.param("needs_io", FOLL_NOWAIT, "fatal", False, -EINTR, id="fatal-before-nowait"),
    pytest.param("needs_io", 0, "fatal", False, -EINTR, id="fatal-must-wait"),
    # then the page
    pytest.param("hwpoison", FOLL_HWPOISON | FOLL_NOWAIT, "none", False, -EHWPOISON, id="hwpoison"),
    pytest.param("hwpoison", 0, "none", False, -EFAULT, id="hwpoison-without-FOLL_HWPOISON"),
    pytest.param("needs_io", FOLL_NOWAIT | FOLL_INTERRUPTIBLE, "pending", False, 0, id="nowait-before-interruptible"),
    pytest.param("needs_io", FOLL_INTERRUPTIBLE, "pending", False, -EINTR, id="interruptible-wait"),
    pytest.param("needs_io", 0, "pending", False, 1, id="uninterruptible-wait"),
    pytest.param("needs_io", FOLL_INTERRUPTIBLE, "none", False, 1, id="io-completes"),
    pytest.param("present_rw", FOLL_WRITE, "none", False, 1, id="success"),
])
def test_gup_slow_order_of_checks(state, flags, signal, contended, want) -> None:
    w, hva = world(state, signal=signal, mmap_lock_contended=contended)
    if state == "no_vma":
        w.mm.vmas.clear()
    n, pg = gup_slow(w, hva, flags)
    assert n == want
    if n == 1:
        assert pg is not None and pg.kvm_refs == 1
    else:
        assert pg is None
        assert all(p.kvm_refs == 0 for p in w.db.pages.values())


def test_nowait_does_not_start_io() -> None:
    w, hva = world("needs_io")
    assert gup_slow(w, hva, FOLL_NOWAIT) == (0, None)
    assert entry(w, hva).state == NEEDS_IO and not w.task.waited


def test_io_wait_is_noted_and_page_becomes_present() -> None:
    w, hva = world("needs_io")
    n, pg = gup_slow(w, hva, FOLL_WRITE)
    assert n == 1 and w.task.waited
    e = entry(w, hva)
    assert e.state == PRESENT_RW and e.page is pg


def test_interruptible_consumes_pending_signal() -> None:
    w, hva = world("needs_io", signal="pending")
    assert gup_slow(w, hva, FOLL_INTERRUPTIBLE)[0] == -EINTR
    assert w.task.signal_consumed and entry(w, hva).state == NEEDS_IO


# --- COW and the zero page ---------------------------------------------------------------------------

def test_write_on_present_ro_private_breaks_cow() -> None:
    w, hva = world("present_ro")
    old = entry(w, hva).page
    old_base = old.base_refs
    n, pg = gup_slow(w, hva, FOLL_WRITE)
    assert n == 1 and pg is not old
    e = entry(w, hva)
    assert e.state == PRESENT_RW and e.page is pg and pg.kvm_refs == 1
    assert old.base_refs == old_base - 1          # the mapping's reference on the old page is gone


def test_read_on_present_ro_keeps_page() -> None:
    w, hva = world("present_ro")
    old = entry(w, hva).page
    assert gup_slow(w, hva, 0) == (1, old)
    assert entry(w, hva).state == PRESENT_RO


def test_write_on_present_ro_shared_reuses_page() -> None:
    sc = host_scenario("present_rw", [], vmas=[vma(shared=True, page_states={0: "present_ro"})])
    w = World.from_scenario(sc)
    hva = w.slot_for(GFN, False).userspace_addr
    old = entry(w, hva).page
    assert gup_slow(w, hva, FOLL_WRITE) == (1, old)
    assert entry(w, hva).state == PRESENT_RW


def test_read_on_unpopulated_anon_maps_zero_page() -> None:
    w, hva = world("unpopulated")
    n, pg = gup_slow(w, hva, 0)
    assert n == 1 and pg is w.db.zero and pg.kvm_refs == 1
    assert entry(w, hva).state == PRESENT_RO
    # a later write breaks COW away from the zero page
    n, pg2 = gup_slow(w, hva, FOLL_WRITE)
    assert pg2 is not w.db.zero and entry(w, hva).state == PRESENT_RW


def test_write_on_unpopulated_allocates() -> None:
    w, hva = world("unpopulated")
    n, pg = gup_slow(w, hva, FOLL_WRITE)
    assert n == 1 and pg is not w.db.zero and pg.name == "ram+0#0"


# --- GUP-fast ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("state,write,ok", [
    ("present_rw", True, True), ("present_rw", False, True), ("present_ro", True, False),
    ("present_ro", False, True), ("unpopulated", False, False), ("resident", False, False),
    ("needs_io", True, False), ("hwpoison", False, False), ("remap:normal", False, False),
    ("none_vma", False, False),
])
def test_gup_fast_only(state, write, ok) -> None:
    """Lockless: succeeds iff not remapped, PTE present and (if write) writable, not poisoned;
    never faults, never sleeps."""
    w, hva = world(state)
    if state == "none_vma":
        entry(w, hva).state = PRESENT_RW
    before = entry(w, hva).state if state != "remap:normal" else None
    pg = gup_fast_only(w, hva, write=write)
    assert (pg is not None) is ok
    if state != "remap:normal":
        assert entry(w, hva).state == before
    assert not w.task.waited
    if pg is not None:
        assert pg.kvm_refs == 1


def test_pin_variants_count_pins() -> None:
    w, hva = world("present_rw")
    pg = gup_fast_only(w, hva, pin=True)
    assert pg.pincount == 1 and pg.kvm_refs == 1
    w.db.unpin(pg)
    assert pg.pincount == 0 and pg.kvm_refs == 0 and not w.db.underflows


def test_get_unless_zero() -> None:
    w, _ = world("remap:refcount0")
    pg = w.mm.by_name("ram").pte(0).page          # frames are made on first use
    assert not w.db.get_unless_zero(pg) and pg.refcount == 0
    w2, _ = world("remap:normal")
    pg2 = w2.mm.by_name("ram").pte(0).page
    assert w2.db.get_unless_zero(pg2) and pg2.kvm_refs == 1


def test_put_below_base_is_an_underflow() -> None:
    w, hva = world("present_rw")
    pg = entry(w, hva).page
    w.db.put(pg)
    assert w.db.underflows == [pg.name]


# --- the remapped primitives ------------------------------------------------------------------------

def test_fixup_user_fault_is_synchronous_and_reports_unlocked() -> None:
    w, hva = world("remap:none:absent-drops_lock")
    v = w.mm.find(hva)
    assert lookup_pte(v, hva) is None
    assert fixup_user_fault(w, v, hva, False) == (0, True)
    assert lookup_pte(v, hva) is not None


def test_fixup_user_fault_fails_and_checks_permission() -> None:
    w, hva = world("remap:none:absent-fails")
    v = w.mm.find(hva)
    assert fixup_user_fault(w, v, hva, False)[0] == -EFAULT
    w, hva = world("remap:none:absent-populates")
    v = w.mm.find(hva)
    w.mm.protect(v, True, False)
    assert fixup_user_fault(w, v, hva, True)[0] == -EFAULT   # vma_permits_fault
    assert fixup_user_fault(w, v, hva, False) == (0, False)


def test_vma_is_valid() -> None:
    w, hva = world("ro_vma")
    v = w.mm.find(hva)
    assert vma_is_valid(v, False) and not vma_is_valid(v, True)
    w, hva = world("none_vma")
    assert not vma_is_valid(w.mm.find(hva), False)


# --- host-state consistency --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["default-state", "page_states", "page_state-op"])
def test_no_writable_pte_in_vma_without_vm_write(how) -> None:
    """§1.3: PRESENT_RW means "PTE present and writable", which a VMA without VM_WRITE cannot
    have (its PTEs are built from vm_page_prot); the host must not hand out a writable page."""
    if how == "default-state":
        v = vma(prot="r", state="present_rw")
    else:
        v = vma(prot="r", page_states={0: "present_rw"} if how == "page_states" else {})
    sc = host_scenario("present_rw", [], vmas=[v])
    w = World.from_scenario(sc)
    hva = w.slot_for(GFN, False).userspace_addr
    if how == "page_state-op":
        w.mm.set_state(w.mm.find(hva), 0, PRESENT_RW)
    assert gup_fast_only(w, hva, write=True) is None
    assert entry(w, hva).state in (PRESENT_RO, UNPOPULATED)


@pytest.mark.parametrize("backend", ["sim:g1", "sim:g3"])
def test_read_only_vma_never_mapped_writable(backend) -> None:
    from helpers import last, run
    sc = host_scenario("present_rw", [{"lookup": {"gfn": GFN, "write": False}},
                                      {"x86_fault": {"gfn": GFN, "write": False}}],
                       vmas=[vma(prot="r", page_states={0: "present_rw"})])
    t = run(backend, sc)
    assert t.records[0].api["writable"] is False
    assert last(t).api["map_writable"] is False


def test_remapped_pte_not_writable_without_vm_write() -> None:
    sc = host_scenario("present_rw", [], vmas=[vma(remap="pfnmap", prot="r", ptes={0: {"writable": True}})])
    w = World.from_scenario(sc)
    hva = w.slot_for(GFN, False).userspace_addr
    assert lookup_pte(w.mm.find(hva), hva).writable is False
