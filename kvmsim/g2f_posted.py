"""G2f FOLLOW_PFN as posted: David Stevens' ``kvm_follow_pfn`` series, v11 (29 Feb 2024) (spec §5).

Neutral-op mapping (v11 users, §5.1): ``lookup`` → ``kvm_follow_pfn(&kfp)`` with FOLL_GET iff
``want_ref``, FOLL_WRITE/NOWAIT/INTERRUPTIBLE from the request, ``atomic``, ``try_map_writable``
= ``try_writable``, ``guarded_by_mmu_notifier`` = ``guarded``, and
``allow_non_refcounted_struct_page`` as its real users set it: true for guarded (x86 fault-like)
and atomic callers, false for the unguarded legacy shims.  Canonical release:
``kvm_release_page_clean(refcounted_page)`` when FOLL_GET was passed, nothing otherwise.
``gfn_to_page`` → FOLL_GET|FOLL_WRITE, unguarded; ``vcpu_map`` → FOLL_GET|FOLL_WRITE,
``allow_non_refcounted_struct_page``, unguarded, released iff ``is_refcounted_page``.
The x86 path (6/8 + 8/8) is guarded, holds no reference, and records refcountedness in the SPTE.
What v11 keeps from G1 (the §2.4 helpers, ``kvm_vcpu_map``, x86 ``kvm_faultin_pfn``) is ``gup_era``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import gup_era
from .constants import (
    EFAULT,
    EHWPOISON,
    EINTR,
    FOLL_GET,
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
    is_error_noslot_pfn,
    kvm_is_error_hva,
)
from .generation import Fault, Generation, HostMap, Lookup, PageResult
from .memslot import Memslot, gfn_to_hva_many
from .mm import Vma, follow_remapped_pte, gup_fast_only, gup_slow
from .page_flags import kvm_set_page_accessed
from .pfndb import Page
from .scenario import Op
from .vma_walk import hva_to_pfn_vma
from .world import Spte, World


@dataclass(slots=True)
class Kfp:
    """``struct kvm_follow_pfn`` (v11)."""
    slot: Memslot | None
    gfn: int
    flags: int
    atomic: bool = False
    try_map_writable: bool = False
    guarded_by_mmu_notifier: bool = False
    allow_non_refcounted_struct_page: bool = False
    hva: int = 0
    writable: bool = False
    refcounted_page: Page | None = None    # set even without FOLL_GET (then no reference)


def kvm_follow_pfn(w: World, kfp: Kfp) -> int:
    kfp.writable, kfp.refcounted_page = False, None
    if not kfp.flags & FOLL_GET and not kfp.guarded_by_mmu_notifier:
        w.warn_once("kvm_follow_pfn:!FOLL_GET && !guarded_by_mmu_notifier")
        return KVM_PFN_ERR_FAULT
    kfp.hva = gfn_to_hva_many(kfp.slot, kfp.gfn, bool(kfp.flags & FOLL_WRITE))
    if kfp.hva == KVM_HVA_ERR_RO_BAD:
        return KVM_PFN_ERR_RO_FAULT
    if kvm_is_error_hva(kfp.hva):
        return KVM_PFN_NOSLOT
    if kfp.slot is not None and kfp.slot.readonly:
        kfp.try_map_writable = False               # (the remapped path still reports pte.writable: D12b)
    return hva_to_pfn(w, kfp)


def refcounted(w: World, kfp: Kfp, pg: Page) -> int:
    """``kvm_follow_refcounted_pfn``: GUP always took a reference; drop it unless FOLL_GET."""
    if not kfp.flags & FOLL_GET:
        w.db.put(pg)
    kfp.refcounted_page = pg
    return pg.pfn


def _hva_to_pfn_slow(w: World, kfp: Kfp, hva: int, write: bool) -> tuple[int, int | None]:
    """``hva_to_pfn_slow`` (v11): GUP, then for a read the opportunistic RW upgrade if
    ``try_map_writable``; (GUP's result, the pfn or None when GUP got no page)."""
    n, pg = gup_slow(w, hva, FOLL_HWPOISON | (kfp.flags & (FOLL_WRITE | FOLL_NOWAIT | FOLL_INTERRUPTIBLE)))
    if n != 1 or pg is None:
        return n, None
    if write:
        kfp.writable = True
    elif kfp.try_map_writable:
        wpg = gup_fast_only(w, hva, write=True)
        if wpg is not None:
            kfp.writable = True
            w.db.put(pg)
            pg = wpg
    return n, refcounted(w, kfp, pg)


def hva_to_pfn(w: World, kfp: Kfp) -> int:
    """§5.1: G1's ``hva_to_pfn`` with v11's WARN, writable rules, ``refcounted()`` for GUP pages
    and NEEDS_IO in place of ``*async``."""
    hva, write = kfp.hva, bool(kfp.flags & FOLL_WRITE)
    if kfp.atomic and kfp.flags & FOLL_NOWAIT:
        w.warn_once("hva_to_pfn:atomic && FOLL_NOWAIT")   # was BUG_ON before v10
    if write or kfp.try_map_writable:
        pg = gup_fast_only(w, hva, write=True)
        if pg is not None:
            kfp.writable = True
            return refcounted(w, kfp, pg)
    if kfp.atomic:
        return KVM_PFN_ERR_FAULT
    n, pfn = _hva_to_pfn_slow(w, kfp, hva, write)
    if pfn is not None:
        return pfn
    if n == -EINTR:
        return KVM_PFN_ERR_SIGPENDING
    if n == -EHWPOISON or (not kfp.flags & FOLL_NOWAIT and gup_era.probe_hwpoison(w, hva)):
        return KVM_PFN_ERR_HWPOISON
    return hva_to_pfn_vma(w, hva, write, bool(kfp.flags & FOLL_NOWAIT), lambda vma: hva_to_pfn_remapped(w, vma, kfp))


def hva_to_pfn_remapped(w: World, vma: Vma, kfp: Kfp) -> tuple[int, int]:
    """v11 4/8 (decision table in §5.1)."""
    write = bool(kfp.flags & FOLL_WRITE)
    r, pte = follow_remapped_pte(w, vma, kfp.hva, write)
    if pte is None:
        return r, 0
    kfp.writable = pte.writable                    # unconditional, even for a RO memslot (D12b)
    assert pte.page is not None                    # a present PTE maps a frame
    pfn = pte.page.pfn
    pg = gup_era.refcounted_page(w, pfn)
    if write and not pte.writable:
        pfn = KVM_PFN_ERR_RO_FAULT
    elif pg is not None and w.db.get_unless_zero(pg):
        refcounted(w, kfp, pg)
    if pg is not None and kfp.refcounted_page is None and not kfp.allow_non_refcounted_struct_page:
        return -EFAULT, 0
    if kfp.refcounted_page is None and not kfp.guarded_by_mmu_notifier and not w.allow_unsafe_mappings:
        return -EFAULT, 0
    return 0, pfn


class G2fPosted(Generation, name="g2f", spec="§5",
                title="kvm_follow_pfn series as posted, v11 (Feb 2024, not merged)", builds_on=(gup_era,)):
    """§5: ``kvm_follow_pfn`` v11 on the GUP-era helpers, map and x86 ``kvm_faultin_pfn``."""

    def lookup(self, w: World, op: Op) -> Lookup:
        flags = (FOLL_GET if op.want_ref else 0) | (FOLL_WRITE if op.write else 0) \
            | (FOLL_NOWAIT if op.nowait else 0) | (FOLL_INTERRUPTIBLE if op.interruptible else 0)
        kfp = Kfp(w.slot_for(op.gfn, op.vcpu), op.gfn, flags, op.atomic, op.try_writable, op.guarded,
                  op.guarded or op.atomic)
        pfn = kvm_follow_pfn(w, kfp)
        pg = kfp.refcounted_page
        release = (lambda: gup_era.kvm_release_page(w, pg, False)) if op.want_ref and pg is not None \
            else (lambda: None)
        return Lookup("kvm_follow_pfn", pfn, pg, kfp.writable if op.try_writable else None,
                      kfp.hva, None, release)

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        kfp = Kfp(w.slot_for(op.gfn, vcpu=False), op.gfn, FOLL_GET | FOLL_WRITE)
        pfn = kvm_follow_pfn(w, kfp)
        pg = kfp.refcounted_page
        if is_error_noslot_pfn(pfn) or pg is None:
            return PageResult("gfn_to_page", None, "ERR_PTR_BAD_PAGE")
        return PageResult("gfn_to_page", pg, None, lambda: gup_era.kvm_release_page(w, pg, False))

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        kfp = Kfp(w.slot_for(op.gfn, vcpu=False), op.gfn, FOLL_GET | FOLL_WRITE,
                  allow_non_refcounted_struct_page=True)
        r, m = gup_era.kvm_vcpu_map(w, op.gfn, kvm_follow_pfn(w, kfp))
        m.refcounted = kfp.refcounted_page is not None
        if r == 0:
            m.page = kfp.refcounted_page or m.page
        return r, m

    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None:
        def release() -> None:
            if m.refcounted and m.page is not None:   # release iff map->is_refcounted_page
                gup_era.kvm_release_page(w, m.page, dirty)
        gup_era.kvm_vcpu_unmap(w, m, dirty, release)

    # --- x86 (v11 6/8 + 8/8, on a v6.8 base) ---------------------------------------------------
    # No lock-free pre-check before GUP (spec D20: "same as G1"): v11's base predates
    # d02c357e5bfa ("Retry fault before acquiring mmu_lock if mapping is changing", applied to the
    # 6.8 fixes branch six days before v11 was posted) — v11 8/8 drops FOLL_GET from the x86 fault
    # yet leaves no kvm_release_pfn_clean() after GUP to convert, which that commit would have added.
    # kvm_faultin_pfn is therefore G1's; only the stale check under mmu_lock is gfn-based (D21).
    def faultin(self, w: World, f: Fault) -> int:
        return gup_era.kvm_faultin_pfn(w, f, self.faultin_lookup)

    def faultin_lookup(self, w: World, f: Fault, sync: bool) -> tuple[int, bool]:
        """``kvm_follow_pfn``, guarded, no FOLL_GET; the result page is kept as
        ``fault->accessed_page`` (no reference)."""
        flags = (FOLL_INTERRUPTIBLE if sync else FOLL_NOWAIT) | (FOLL_WRITE if f.write else 0)
        # allow_non_refcounted_struct_page = shadow_refcounted_mask: non-zero for 64-bit TDP
        kfp = Kfp(f.slot, f.gfn, flags, try_map_writable=True, guarded_by_mmu_notifier=True,
                  allow_non_refcounted_struct_page=w.tdp_enabled)
        f.attempts.append("kvm_follow_pfn")
        pfn = kvm_follow_pfn(w, kfp)
        f.hva, f.map_writable, f.page = kfp.hva, kfp.writable, kfp.refcounted_page   # accessed_page
        return pfn, pfn == KVM_PFN_ERR_NEEDS_IO

    def is_stale(self, w: World, f: Fault) -> bool:
        return f.slot is not None and w.notifier.retry_gfn(f.mmu_seq, f.gfn)

    def finish(self, w: World, f: Fault, r: int) -> None:
        if f.page is not None:                     # fault->accessed_page, marked under mmu_lock
            kvm_set_page_accessed(w, f.page)       # [conf: low] whether also on RETRY

    def spte_zapped(self, w: World, spte: Spte) -> None:
        gup_era.spte_zapped_by_page(w, spte)       # the SPTE's "refcounted" bit
