"""G3 MERGED: ``kvm_follow_pfn`` as merged in Linux v6.13 ("KVM: Stop grabbing references to
PFNMAP'd pages", v13) (spec §6).

Neutral-op mapping (spec §6.3): ``lookup`` → ``__kvm_faultin_pfn(slot, gfn, flags, &writable,
&refcounted_page)`` (the writable pointer is mandatory, so the RW upgrade is always attempted;
``writable`` is reported only when ``try_writable`` asked for it), released with
``kvm_release_page_clean``; ``pin`` → ``kvm_follow_pfn`` with ``.pin = true`` as
``kvm_vcpu_map`` uses it, released by unpinning; ``atomic`` → ``kvm_prefetch_pages(slot, gfn,
pages, 1)`` (G3 has no atomic pfn API, D11).  ``want_ref``, ``guarded`` and ``mmu_seq`` have
no G3 meaning.  ``gfn_to_page`` → ``__gfn_to_page(write)``; ``vcpu_map`` with ``writable`` →
``kvm_vcpu_map``, without → ``kvm_vcpu_map_readonly``; ``vcpu_unmap`` ignores ``dirty``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import (
    APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
    EAGAIN,
    EFAULT,
    EHWPOISON,
    EINTR,
    EINVAL,
    FOLL_HONOR_NUMA_FAULT,
    FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE,
    FOLL_NOWAIT,
    FOLL_WRITE,
    KVM_HVA_ERR_RO_BAD,
    KVM_PFN_ERR_FAULT,
    KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_NEEDS_IO,
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_ERR_SIGPENDING,
    KVM_PFN_NOSLOT,
    RET_PF_CONTINUE,
    RET_PF_EMULATE,
    RET_PF_RETRY,
    is_error_noslot_pfn,
    is_error_pfn,
    is_noslot_pfn,
    kvm_is_error_hva,
)
from .generation import Fault, Generation, HostMap, Lookup, Out, PageResult
from .memslot import Memslot, gfn_to_hva_many
from .mm import RemapPte, Vma, follow_remapped_pte, gup_fast_only, gup_slow
from .page_flags import kvm_set_page_accessed, kvm_set_page_dirty
from .pfndb import Page
from .scenario import Op
from .vma_walk import hva_to_pfn_vma
from .world import World
from .x86 import faultin_attempts, kvm_handle_error_pfn, kvm_handle_noslot_fault


@dataclass(slots=True)
class Kfp:
    """``struct kvm_follow_pfn`` (virt/kvm/kvm_mm.h, v6.13)."""
    slot: Memslot | None
    gfn: int
    flags: int
    pin: bool = False
    map_writable: Out | None = None        # non-NULL: try RW for a read fault
    refcounted_page: Out | None = None     # required
    hva: int = 0


# --- accessed/dirty helpers (static in kvm_main.c) ----------------------------------------------

def kvm_release_page_clean(w: World, pg: Page | None) -> None:
    if pg is None:
        return                                     # NULL-safe in G3
    kvm_set_page_accessed(w, pg)
    w.db.put(pg)


def kvm_release_faultin_page(w: World, pg: Page | None, unused: bool, dirty: bool) -> None:
    if pg is None:
        return
    if unused:
        w.db.put(pg)                               # kvm_release_page_unused: no accessed
    else:
        if dirty:
            kvm_set_page_dirty(w, pg)
        kvm_release_page_clean(w, pg)


# --- §6.2 core ---------------------------------------------------------------------------------

def kvm_follow_pfn(w: World, kfp: Kfp) -> int:
    kfp.hva = gfn_to_hva_many(kfp.slot, kfp.gfn, bool(kfp.flags & FOLL_WRITE))
    if kfp.hva == KVM_HVA_ERR_RO_BAD:
        return KVM_PFN_ERR_RO_FAULT
    if kvm_is_error_hva(kfp.hva):
        return KVM_PFN_NOSLOT
    if kfp.slot is not None and kfp.slot.readonly and kfp.map_writable is not None:
        kfp.map_writable.value = False
        kfp.map_writable = None
    return hva_to_pfn(w, kfp)


def kvm_resolve_pfn(w: World, kfp: Kfp, page: Page | None, pte: RemapPte | None, writable: bool) -> int:
    if (page is None) == (pte is None):
        w.warn_once("kvm_resolve_pfn:page xor pte")
    if kfp.map_writable is not None:
        kfp.map_writable.value = writable
    if pte is not None:
        assert pte.page is not None, "a present PTE maps a frame"
        pfn = pte.page.pfn
    else:
        assert page is not None, "kvm_resolve_pfn: every caller passes a page or a pte"
        pfn = page.pfn
    assert kfp.refcounted_page is not None, "hva_to_pfn returns early when refcounted_page is NULL"
    kfp.refcounted_page.value = page               # NULL for every remapped pfn (K3)
    return pfn


def hva_to_pfn_fast(w: World, kfp: Kfp) -> int | None:
    if not (kfp.flags & FOLL_WRITE or kfp.map_writable is not None):
        return None                                # read-only users take the slow path (CoW race)
    if kfp.pin:
        n, pg = _pin_user_pages_fast(w, kfp.hva)
    else:
        pg = gup_fast_only(w, kfp.hva, write=True)
    return kvm_resolve_pfn(w, kfp, pg, None, True) if pg is not None else None


def _pin_user_pages_fast(w: World, hva: int) -> tuple[int, Page | None]:
    """``pin_user_pages_fast(FOLL_WRITE)``: not "fast only" — it falls back to a faulting,
    sleeping pin (§6.2 note) when the lockless walk fails."""
    pg = gup_fast_only(w, hva, write=True, pin=True)
    if pg is not None:
        return 1, pg
    return gup_slow(w, hva, FOLL_WRITE, pin=True)


def hva_to_pfn_slow(w: World, kfp: Kfp) -> tuple[int, int]:
    flags = FOLL_HWPOISON | FOLL_HONOR_NUMA_FAULT | kfp.flags
    n, pg = gup_slow(w, kfp.hva, flags, pin=kfp.pin)
    if n != 1 or pg is None:
        return n, 0
    if kfp.map_writable is not None and kfp.pin:
        w.warn_once("hva_to_pfn_slow:map_writable && pin")     # no upgrade for pins
    elif not flags & FOLL_WRITE and kfp.map_writable is not None:
        wpg = gup_fast_only(w, kfp.hva, write=True)
        if wpg is not None:
            w.db.put(pg)
            pg = wpg
            flags |= FOLL_WRITE
    return 1, kvm_resolve_pfn(w, kfp, pg, None, bool(flags & FOLL_WRITE))


def hva_to_pfn_remapped(w: World, vma: Vma, kfp: Kfp) -> tuple[int, int]:
    if kfp.pin and not w.allow_unsafe_mappings:
        return -EINVAL, 0                          # pins never resolve through VM_PFNMAP (K3)
    write = bool(kfp.flags & FOLL_WRITE)
    r, pte = follow_remapped_pte(w, vma, kfp.hva, write)
    if pte is None:
        return r, 0
    if write and not pte.writable:
        return 0, KVM_PFN_ERR_RO_FAULT
    return 0, kvm_resolve_pfn(w, kfp, None, pte, pte.writable)   # never a reference, any pfn kind


def hva_to_pfn(w: World, kfp: Kfp) -> int:
    if kfp.refcounted_page is None:
        w.warn_once("hva_to_pfn:!refcounted_page")
        return KVM_PFN_ERR_FAULT
    pfn = hva_to_pfn_fast(w, kfp)
    if pfn is not None:
        return pfn
    n, pfn = hva_to_pfn_slow(w, kfp)
    if n == 1:
        return pfn
    if n in (-EINTR, -EAGAIN):
        return KVM_PFN_ERR_SIGPENDING              # D13
    if n == -EHWPOISON:
        return KVM_PFN_ERR_HWPOISON                # no separate probe any more (D14)
    return hva_to_pfn_vma(w, kfp.hva, bool(kfp.flags & FOLL_WRITE), bool(kfp.flags & FOLL_NOWAIT),
                          lambda vma: hva_to_pfn_remapped(w, vma, kfp))


# --- §6.3 public entry points ---------------------------------------------------------------------

def kvm_faultin_pfn_(w: World, slot: Memslot | None, gfn: int, foll: int, writable: Out | None,
                     refcounted_page: Out | None) -> int:
    """``__kvm_faultin_pfn`` (the trailing underscore stands for the leading ones)."""
    if writable is None or refcounted_page is None:
        w.warn_once("__kvm_faultin_pfn:NULL pointer")
        return KVM_PFN_ERR_FAULT
    writable.value, refcounted_page.value = False, None
    return kvm_follow_pfn(w, Kfp(slot, gfn, foll, False, writable, refcounted_page))


def gfn_to_page_(w: World, gfn: int, write: bool) -> Page | None:
    """``__gfn_to_page``."""
    page = Out(None)
    pfn = kvm_follow_pfn(w, Kfp(w.slot_for(gfn, vcpu=False), gfn, FOLL_WRITE if write else 0,
                                refcounted_page=page))
    if is_error_noslot_pfn(pfn):
        return None
    return page.value                              # NULL for all remapped memory (D18)


def kvm_prefetch_pages(w: World, slot: Memslot | None, gfn: int) -> Page | None:
    """One page of ``kvm_prefetch_pages`` (ex ``gfn_to_page_many_atomic``)."""
    hva = gfn_to_hva_many(slot, gfn, True)
    if kvm_is_error_hva(hva):
        return None
    return gup_fast_only(w, hva, write=True)


class G3Merged(Generation, name="g3", spec="§6", title="kvm_follow_pfn as merged in Linux 6.13"):
    """§6: v6.13's ``kvm_follow_pfn``; shares only the VMA walk and the x86 skeleton."""

    def lookup(self, w: World, op: Op) -> Lookup:
        slot = w.slot_for(op.gfn, op.vcpu)
        if op.atomic:
            pg = kvm_prefetch_pages(w, slot, op.gfn)
            pfn = pg.pfn if pg is not None else KVM_PFN_ERR_FAULT
            return Lookup("kvm_prefetch_pages", pfn, pg, None, None, None,
                          lambda: kvm_release_page_clean(w, pg))
        flags = (FOLL_WRITE if op.write else 0) | (FOLL_NOWAIT if op.nowait else 0) \
            | (FOLL_INTERRUPTIBLE if op.interruptible else 0)
        page = Out(None)
        if op.pin:
            kfp = Kfp(slot, op.gfn, flags & FOLL_WRITE, True, None, page)
            pfn = kvm_follow_pfn(w, kfp)
            pg = page.value
            return Lookup("kvm_follow_pfn(.pin)", pfn, pg, None, kfp.hva, None,
                          lambda: _unpin(w, pg, op.write))
        writable = Out(False)
        pfn = kvm_faultin_pfn_(w, slot, op.gfn, flags, writable, page)
        pg = page.value
        hva = gfn_to_hva_many(slot, op.gfn, op.write)
        return Lookup("__kvm_faultin_pfn", pfn, pg, writable.value if op.try_writable else None, hva, None,
                      lambda: kvm_release_page_clean(w, pg))

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        pg = gfn_to_page_(w, op.gfn, op.write)
        if pg is None:
            return PageResult("__gfn_to_page", None, "NULL")
        return PageResult("__gfn_to_page", pg, None, lambda: kvm_release_page_clean(w, pg))

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        """``__kvm_vcpu_map`` (``kvm_vcpu_map`` / ``kvm_vcpu_map_readonly``)."""
        m = HostMap(op.gfn, writable=op.writable)
        pinned = Out(None)
        kfp = Kfp(w.slot_for(op.gfn, vcpu=False), op.gfn, FOLL_WRITE if op.writable else 0, True, None, pinned)
        m.pfn = kvm_follow_pfn(w, kfp)
        m.pinned_page = pinned.value
        if is_error_noslot_pfn(m.pfn):
            return -EINVAL, m
        pg = w.db.lookup(m.pfn)
        if pg is not None and pg.pfn_valid:
            m.page, m.hva = pg, "kmap"
        elif pg is None or pg.memremap_ok:
            m.hva = "memremap"                     # only reachable with allow_unsafe_mappings (K8)
        return (0, m) if m.hva else (-EFAULT, m)   # NB: a pin is not dropped on -EFAULT (D27)

    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None:
        if m.hva is None:
            return
        if m.writable:
            w.mark_page_dirty(w.slot_for(m.gfn, vcpu=True), m.gfn)   # dirty log iff mapped writable (D9)
        if m.pinned_page is not None:
            _unpin(w, m.pinned_page, m.writable)
        m.hva = m.page = m.pinned_page = None

    # --- x86 (§6.4) -----------------------------------------------------------------------------
    @staticmethod
    def faultin_slot_checks(w: World, f: Fault) -> int | None:
        """``kvm_mmu_faultin_pfn``'s memslot checks before any lookup; None: go on."""
        slot = f.slot
        if slot is None:
            return kvm_handle_noslot_fault(w, f)
        if slot.invalid:
            return RET_PF_RETRY
        if slot.id == APIC_ACCESS_PAGE_PRIVATE_MEMSLOT:
            if w.vcpu.guest_mode:
                f.slot = None
                return kvm_handle_noslot_fault(w, f)
            if not w.vcpu.apicv:
                return RET_PF_EMULATE
        return None

    def faultin(self, w: World, f: Fault) -> int:
        """``kvm_mmu_faultin_pfn``."""
        f.mmu_seq = w.notifier.seq
        r = self.faultin_slot_checks(w, f)
        if r is not None:
            return r
        if w.notifier.retry_gfn(f.mmu_seq, f.gfn):
            return RET_PF_RETRY                    # pre-check before GUP (v6.8+)
        r = faultin_attempts(w, f, self.faultin_lookup)   # __kvm_mmu_faultin_pfn
        if r != RET_PF_CONTINUE:
            return r
        if is_error_pfn(f.pfn):
            return kvm_handle_error_pfn(w, f)
        if f.slot is None or is_noslot_pfn(f.pfn):
            w.warn_once("kvm_mmu_faultin_pfn:noslot")
            return kvm_handle_noslot_fault(w, f)
        w.race_point()
        if w.notifier.retry_gfn(f.mmu_seq, f.gfn):    # after GUP
            self.finish(w, f, RET_PF_RETRY)
            return RET_PF_RETRY
        return RET_PF_CONTINUE

    def faultin_lookup(self, w: World, f: Fault, sync: bool) -> tuple[int, bool]:
        """One ``__kvm_faultin_pfn`` call of ``__kvm_mmu_faultin_pfn``: FOLL_NOWAIT first,
        FOLL_INTERRUPTIBLE on the second try."""
        flags = (FOLL_WRITE if f.write else 0) | (FOLL_INTERRUPTIBLE if sync else FOLL_NOWAIT)
        f.attempts.append("__kvm_faultin_pfn")
        writable, page = Out(False), Out(None)
        pfn = kvm_faultin_pfn_(w, f.slot, f.gfn, flags, writable, page)
        f.map_writable, f.page = bool(writable.value), page.value
        f.hva = gfn_to_hva_many(f.slot, f.gfn, f.write)
        return pfn, pfn == KVM_PFN_ERR_NEEDS_IO

    def is_stale(self, w: World, f: Fault) -> bool:
        return f.slot is not None and w.notifier.retry_gfn(f.mmu_seq, f.gfn)

    def finish(self, w: World, f: Fault, r: int) -> None:
        """``kvm_mmu_finish_page_fault``, before mmu_lock is dropped."""
        kvm_release_faultin_page(w, f.page, unused=(r == RET_PF_RETRY), dirty=f.map_writable)
        f.page = f.page if r != RET_PF_RETRY else None


def _unpin(w: World, pg: Page | None, dirty: bool) -> None:
    if pg is None:
        return
    if dirty:
        kvm_set_page_dirty(w, pg)
    kvm_set_page_accessed(w, pg)
    w.db.unpin(pg)
