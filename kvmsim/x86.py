"""The x86 MMU pieces every generation shares (spec §2.7, §6.4): error-pfn and no-slot
handling, async #PF and the two fault-in lookups around it, the SPTE "map" step, and the
``direct_page_fault`` skeleton that strings a generation's ``faultin``/``is_stale``/``finish`` together."""

from __future__ import annotations

from collections.abc import Callable

from .constants import (
    EFAULT,
    EINTR,
    FOLL_WRITE,
    HPAGE_PAGES,
    KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_NOSLOT,
    PAGE_SHIFT,
    RET_PF_CONTINUE,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_RETRY,
    is_error_noslot_pfn,
    is_sigpending_pfn,
)
from .generation import Fault, Generation
from .memslot import gfn_to_hva_in_slot
from .mm import gup_slow
from .world import Spte, World


def kvm_handle_error_pfn(w: World, f: Fault) -> int:
    """§2.7; unchanged in G3."""
    if is_sigpending_pfn(f.pfn):
        return -EINTR                                   # KVM_EXIT_INTR
    if f.pfn == KVM_PFN_ERR_RO_FAULT:
        return RET_PF_EMULATE
    if f.pfn == KVM_PFN_ERR_HWPOISON:
        hva = gfn_to_hva_in_slot(f.slot, f.gfn) if f.slot is not None else 0
        w.task.signals_sent.append(f"SIGBUS:BUS_MCEERR_AR:{hva:#x}")
        return RET_PF_RETRY
    return -EFAULT


def kvm_handle_noslot_fault(w: World, f: Fault) -> int:
    """§2.7: cache MMIO info; with MMIO caching the map step installs an MMIO SPTE."""
    f.pfn, f.map_writable, f.noslot = KVM_PFN_NOSLOT, False, True
    if not w.enable_mmio_caching:
        return RET_PF_EMULATE
    f.mmio_spte = True
    return RET_PF_CONTINUE


def kvm_can_do_async_pf(w: World) -> bool:
    return w.vcpu.async_pf


def try_async_pf(w: World, f: Fault) -> int | None:
    """The async #PF step between the two fault-in attempts; None: fall through to the
    synchronous, interruptible second attempt.  The async worker runs GUP (may sleep, no
    NOWAIT) on its own; the model completes it at once and drops the worker's reference."""
    if f.prefetch or not kvm_can_do_async_pf(w):
        return None
    if f.gfn in w.vcpu.apf_queue:
        f.async_pf = "halt"                                 # KVM_REQ_APF_HALT
        return RET_PF_RETRY
    f.async_pf = "queued"
    assert f.slot is not None, "try_async_pf: only a lookup in a memslot can need I/O"
    hva = gfn_to_hva_in_slot(f.slot, f.gfn)
    signal, w.task.signal = w.task.signal, "none"           # the worker is a kthread
    # async_pf_execute: get_user_pages_remote(mm, addr, 1, FOLL_WRITE, NULL, &locked) — always a
    # write fault, whatever the guest access, and no page/reference kept (pages == NULL).
    n, pg = gup_slow(w, hva, FOLL_WRITE)
    if n != 1:
        # The write GUP can fail (e.g. no VM_WRITE); the vCPU is kicked anyway and
        # kvm_arch_async_page_ready's prefetch fault (a read) then faults the page in
        # synchronously.  The model keeps only its effect on the host page.
        n, pg = gup_slow(w, hva, 0)
    w.task.signal = signal
    if n == 1 and pg is not None:
        w.db.put(pg)
    return RET_PF_RETRY


# A generation's one gfn->pfn lookup of the fault path (``Generation.faultin_lookup``): the first
# (``sync`` False: may not wait for I/O) or the synchronous, interruptible second; (pfn, needs I/O).
FaultinLookup = Callable[[World, Fault, bool], tuple[int, bool]]


def faultin_attempts(w: World, f: Fault, lookup: FaultinLookup) -> int:
    """The two lookups of ``__kvm_faultin_pfn`` (§2.7; ``__kvm_mmu_faultin_pfn`` in G3, §6.4):
    one that may not wait for I/O and, when it needs I/O, async #PF or a synchronous,
    interruptible second lookup."""
    f.pfn, needs_io = lookup(w, f, False)
    f.results.append(f.pfn)                        # the fault-path record's per-call result
    if not needs_io:
        return RET_PF_CONTINUE                     # success or a terminal error
    r = try_async_pf(w, f)
    if r is not None:
        return r
    f.pfn, _ = lookup(w, f, True)
    f.results.append(f.pfn)
    return RET_PF_CONTINUE


def huge_level(w: World, gen: Generation, f: Fault) -> int:
    """``kvm_mmu_hugepage_adjust``: 2 MiB when the host maps 2 MiB, the slot covers the
    aligned range with matching alignment, dirty logging is off, and the generation allows it."""
    slot = f.slot
    if slot is None or slot.dirty_log or not gen.huge_ok(f):
        return 1
    vma = w.mm.find(f.hva)
    if vma is None or vma.host_level < HPAGE_PAGES:
        return 1
    base = f.gfn & ~(HPAGE_PAGES - 1)
    if base < slot.base_gfn or base + HPAGE_PAGES > slot.base_gfn + slot.npages:
        return 1
    if (slot.base_gfn - (slot.userspace_addr >> PAGE_SHIFT)) % HPAGE_PAGES:
        return 1
    return HPAGE_PAGES


def map_fault(w: World, gen: Generation, f: Fault) -> tuple[int, Spte | None]:
    """The SPTE install step (``kvm_tdp_mmu_map``/``direct_map``): an MMIO SPTE for no-slot
    faults, else a SPTE that is writable iff the host mapping is and dirty logging does not
    need to catch the first write."""
    if f.slot is None:
        return RET_PF_EMULATE, None
    if is_error_noslot_pfn(f.pfn):                 # only reachable through G2s S6: make_spte masks
        w.events.append("CORRUPT:spte_from_error_pfn")   # the pfn bits, so host frame 0 is mapped
        f.pfn &= (1 << 40) - 1
    # make_spte: writable iff the host mapping is (read faults included), and every writable
    # SPTE created in a dirty-logged slot marks the gfn dirty (huge pages are off there).
    spte = Spte(f.pfn, f.map_writable, huge_level(w, gen, f), f.page)
    w.sptes[(f.slot.as_id, f.gfn)] = spte
    if spte.writable:
        w.mark_page_dirty(f.slot, f.gfn)
    return RET_PF_FIXED, spte


def page_fault(gen: Generation, w: World, f: Fault) -> tuple[int, Spte | None]:
    """``direct_page_fault``/``kvm_tdp_mmu_page_fault``: fault-in, stale check under mmu_lock,
    map, release."""
    r = gen.faultin(w, f)
    if r != RET_PF_CONTINUE:
        return r, None
    w.race_point()
    spte = None
    if gen.is_stale(w, f):
        r = RET_PF_RETRY
    else:
        r, spte = map_fault(w, gen, f)
    gen.finish(w, f, r)
    return r, spte
