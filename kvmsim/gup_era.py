"""The GUP-era gfn→pfn path: what the generations before v6.13 (G1, G2, G2s, G2f) share (spec §2).

G1 (§2) defines these pieces and the later pre-6.13 generations keep them: the memslot checks of
``__gfn_to_pfn_memslot`` and ``hva_to_pfn`` (§2.2, §2.3), which G2's noref entry points call with
their own remapped step and a ``*page`` out-parameter (§3.2); the §2.4 refcounted-page helpers;
``kvm_vcpu_map``/``kvm_vcpu_unmap`` around the lookup (§2.8); and the x86 ``kvm_faultin_pfn``
(§2.7), to which each generation passes its own lookup step (``faultin_lookup``).  G3 (v6.13)
keeps none of it (§6.5).  A generation module composes these functions; it does not inherit them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .constants import (
    APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
    EFAULT,
    EHWPOISON,
    EINTR,
    EINVAL,
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
    kvm_is_error_hva,
)
from .generation import Fault, HostMap, KernelBug, Lookup, Out
from .memslot import Memslot, gfn_to_hva_many
from .mm import Vma, follow_remapped_pte, gup_fast_only, gup_slow
from .page_flags import kvm_set_page_accessed, kvm_set_page_dirty
from .pfndb import Page
from .scenario import Op
from .vma_walk import hva_to_pfn_vma
from .world import Spte, World
from .x86 import FaultinLookup, faultin_attempts, kvm_handle_error_pfn, kvm_handle_noslot_fault

# A generation's ``hva_to_pfn_remapped(w, vma, hva, write_fault, writable_out)``: (0 or -errno, pfn).
RemappedStep = Callable[[World, Vma, int, bool, Out | None], tuple[int, int]]


# --- §2.4 refcounted-page classification and release helpers ------------------------------------

def refcounted_page(w: World, pfn: int, zone_device_warn: bool = True) -> Page | None:
    """``kvm_pfn_to_refcounted_page`` (v6.0 .. v6.12)."""
    pg = w.db.lookup(pfn)
    if pg is None or not pg.pfn_valid:
        return None
    if not pg.reserved:
        return pg
    if pg.kind == "zero":
        return pg                                  # zero page: PG_reserved but refcounted
    if kvm_is_zone_device_page(w, pg, zone_device_warn):
        return pg
    return None


def kvm_is_zone_device_page(w: World, pg: Page, warn: bool) -> bool:
    """ZONE_DEVICE pages are PG_reserved but refcounted; a refcount of 0 WARNs in G1
    (G2 4/4 makes it a silent ``false``)."""
    if pg.kind != "zone_device":
        return False
    if pg.refcount == 0:
        if warn:
            w.warn_once("kvm_is_zone_device_page:page_count==0")
        return False
    return True


def kvm_set_pfn_accessed(w: World, pfn: int) -> None:
    """Tests pfn_valid, not refcountedness; takes no reference (§2.4)."""
    _set_pfn_flag(w, pfn, "kvm_set_pfn_accessed", w.db.set_accessed)


def kvm_set_pfn_dirty(w: World, pfn: int) -> None:
    """As ``kvm_set_pfn_accessed``, for the dirty flag (§2.4)."""
    _set_pfn_flag(w, pfn, "kvm_set_pfn_dirty", w.db.set_dirty)


def _set_pfn_flag(w: World, pfn: int, who: str, set_flag: Callable[[Page], None]) -> None:
    if is_error_noslot_pfn(pfn):
        w.warn(f"{who}:error_pfn")
        return
    pg = w.db.lookup(pfn)
    if pg is not None and pg.pfn_valid and not pg.reserved:
        set_flag(pg)


def kvm_release_pfn(w: World, pfn: int, dirty: bool) -> None:
    """``kvm_release_pfn_clean``/``_dirty``: no-op for error pfns; put iff refcounted."""
    if is_error_noslot_pfn(pfn):
        return
    pg = refcounted_page(w, pfn)
    if pg is None:
        return
    if not pg.reserved:
        if dirty:
            w.db.set_dirty(pg)
        w.db.set_accessed(pg)
    w.db.put(pg)


def kvm_release_page(w: World, pg: Page, dirty: bool) -> None:
    """``kvm_release_page_clean``/``_dirty``."""
    if dirty:
        kvm_set_page_dirty(w, pg)
    kvm_set_page_accessed(w, pg)
    w.db.put(pg)


# --- §2.2, §2.3 ---------------------------------------------------------------------------------

def memslot_prelude(slot: Memslot | None, gfn: int, write_fault: bool, writable_out: Out | None,
                    hva_out: Out | None) -> tuple[int, int | None, Out | None]:
    """The slot checks of ``__gfn_to_pfn_memslot`` (kept by G2's noref variant): the hva, an
    early error pfn or None, and the writable pointer hva_to_pfn may use (NULL for a RO slot)."""
    hva = gfn_to_hva_many(slot, gfn, write_fault)
    if hva_out is not None:
        hva_out.value = hva                        # written even when hva is an error value (I7)
    if hva == KVM_HVA_ERR_RO_BAD:
        if writable_out is not None:
            writable_out.value = False
        return hva, KVM_PFN_ERR_RO_FAULT, None     # I2
    if kvm_is_error_hva(hva):
        if writable_out is not None:
            writable_out.value = False
        return hva, KVM_PFN_NOSLOT, None           # I3
    if writable_out is not None and slot is not None and slot.readonly:
        writable_out.value = False                 # I1: never offer RW for a RO slot
        writable_out = None
    return hva, None, writable_out


def _hva_to_pfn_fast(w: World, hva: int, write_fault: bool, writable_out: Out | None,
                     page_out: Out | None) -> int | None:
    """``hva_to_pfn_fast``: GUP-fast for a writable page, tried only when RW is acceptable;
    None: go on to the slow path."""
    if not (write_fault or writable_out is not None):
        return None
    pg = gup_fast_only(w, hva, write=True)
    if pg is None:
        return None
    if writable_out is not None:
        writable_out.value = True
    if page_out is not None:
        page_out.value = pg
    return pg.pfn


def _hva_to_pfn_slow(w: World, hva: int, flags: int, write_fault: bool, writable_out: Out | None,
                     page_out: Out | None) -> tuple[int, int | None]:
    """``hva_to_pfn_slow``: GUP, then for a read the opportunistic RW upgrade; (GUP's result,
    the pfn or None when GUP got no page)."""
    n, pg = gup_slow(w, hva, flags)
    if n != 1 or pg is None:
        return n, None
    if not write_fault and writable_out is not None:   # opportunistic RW upgrade
        wpg = gup_fast_only(w, hva, write=True)
        if wpg is not None:
            writable_out.value = True
            w.db.put(pg)
            pg = wpg                               # the upgrade swaps *page
    if page_out is not None:
        page_out.value = pg                        # the slow path's *page
    return n, pg.pfn


def hva_to_pfn(w: World, hva: int, atomic: bool, interruptible: bool, async_out: Out | None,
               write_fault: bool, writable_out: Out | None, remapped: RemappedStep,
               page_out: Out | None = None) -> int:
    """``hva_to_pfn`` (§2.3) with the caller's remapped step; G2's noref entry points pass
    ``page_out`` (``*page``, §3.2): set on entry, then to the page GUP handed back."""
    if page_out is not None:
        page_out.value = None                      # set on entry (§3.2)
    if atomic and async_out is not None:
        w.bug("hva_to_pfn:BUG_ON(atomic && async)")
        raise KernelBug("BUG_ON(atomic && async)")
    pfn = _hva_to_pfn_fast(w, hva, write_fault, writable_out, page_out)
    if pfn is not None:
        return pfn
    if atomic:
        return KVM_PFN_ERR_FAULT                   # writable left untouched (I6)
    if writable_out is not None:
        writable_out.value = write_fault           # pre-set; stays on failure (D12)
    flags = FOLL_HWPOISON | (FOLL_WRITE if write_fault else 0) | (FOLL_NOWAIT if async_out is not None else 0) \
        | (FOLL_INTERRUPTIBLE if interruptible else 0)
    n, pfn = _hva_to_pfn_slow(w, hva, flags, write_fault, writable_out, page_out)
    if pfn is not None:
        return pfn
    if n == -EINTR:
        return KVM_PFN_ERR_SIGPENDING
    # classify the failure (n == 0, -EAGAIN, -EFAULT, -EHWPOISON)
    if n == -EHWPOISON or (async_out is None and probe_hwpoison(w, hva)):
        return KVM_PFN_ERR_HWPOISON
    pfn = hva_to_pfn_vma(w, hva, write_fault, async_out is not None,
                         lambda vma: remapped(w, vma, hva, write_fault, writable_out))
    if pfn == KVM_PFN_ERR_NEEDS_IO and async_out is not None:
        async_out.value = True                 # "needs I/O": caller may do async #PF (I5)
        return KVM_PFN_ERR_FAULT
    return pfn


def remapped_pte_pfn(w: World, vma: Vma, hva: int, write_fault: bool,
                     writable_out: Out | None) -> tuple[int, int, bool]:
    """What G1's and G2's ``hva_to_pfn_remapped`` share (§2.3, §3.4): follow (or fault in) the
    PTE, refuse a write to a read-only PTE, report its writability; (r, pfn, whether the PTE's pfn
    is returned — the generation then decides about the reference)."""
    r, pte = follow_remapped_pte(w, vma, hva, write_fault)
    if pte is None:
        return r, 0, False
    if write_fault and not pte.writable:
        return 0, KVM_PFN_ERR_RO_FAULT, False      # success code carrying an error pfn
    if writable_out is not None:
        writable_out.value = pte.writable
    assert pte.page is not None                    # a present PTE maps a frame
    return 0, pte.page.pfn, True


def probe_hwpoison(w: World, hva: int) -> bool:
    """``check_user_page_hwpoison``: a GUP(FOLL_HWPOISON|FOLL_WRITE) probe (adds no outcome, D14)."""
    n, pg = gup_slow(w, hva, FOLL_HWPOISON | FOLL_WRITE)
    if n == 1 and pg is not None:
        w.db.put(pg)
    return n == -EHWPOISON


# --- §2.1 the legacy calls' out-parameters -------------------------------------------------------

@dataclass(slots=True)
class LegacyOuts:
    """The out-parameters a neutral lookup request passes to a ``__gfn_to_pfn_memslot``-style
    call (§2.1): ``*async`` iff ``nowait``, ``*writable`` iff ``try_writable``, ``*hva`` always."""
    slot: Memslot | None
    async_out: Out | None
    writable_out: Out | None
    hva_out: Out

    def result(self, api: str, pfn: int, page: Page | None, release: Callable[[], None]) -> Lookup:
        """The lookup's outcome as the out-parameters read after the call."""
        return Lookup(api, pfn, page, self.writable_out.value if self.writable_out else None, self.hva_out.value,
                      self.async_out.value if self.async_out else None, release)


def legacy_outs(w: World, op: Op) -> LegacyOuts:
    return LegacyOuts(w.slot_for(op.gfn, op.vcpu), Out(False) if op.nowait else None,
                      Out(None) if op.try_writable else None, Out())


# --- §2.8 ---------------------------------------------------------------------------------------

def kvm_vcpu_map(w: World, gfn: int, pfn: int) -> tuple[int, HostMap]:
    """``kvm_vcpu_map`` after the lookup: kmap every pfn_valid pfn, memremap the rest."""
    m = HostMap(gfn)
    if is_error_noslot_pfn(pfn):
        return -EINVAL, m                          # every error kind, incl. HWPOISON (no SIGBUS)
    pg = w.db.lookup(pfn)
    if pg is not None and pg.pfn_valid:
        m.page, m.hva = pg, "kmap"
    elif pg is not None and pg.memremap_ok:
        m.hva = "memremap"
    else:
        return -EFAULT, m
    m.pfn = pfn
    return 0, m


def kvm_vcpu_unmap(w: World, m: HostMap, dirty: bool, release: Callable[[], None] | None = None) -> None:
    """``kvm_vcpu_unmap(map, dirty)``: dirty-log the gfn if asked, then release the mapping —
    by pfn as G1 does (and G2's unconverted map), or through the generation's ``release``."""
    if m.hva is None:
        return
    if dirty:
        w.mark_page_dirty(w.slot_for(m.gfn, vcpu=True), m.gfn)
    if release is None:
        kvm_release_pfn(w, m.pfn, dirty)
    else:
        release()
    m.hva = m.page = None


# --- §2.7 x86 -----------------------------------------------------------------------------------

def kvm_faultin_pfn(w: World, f: Fault, lookup: FaultinLookup) -> int:
    """x86 ``kvm_faultin_pfn`` (≤ v6.12): RET_PF_* or -errno; ``lookup`` is the generation's."""
    f.mmu_seq = w.notifier.seq
    r = faultin_slot_checks(w, f)
    if r is None:
        r = faultin_attempts(w, f, lookup)
    if r != RET_PF_CONTINUE:
        return r
    if is_error_pfn(f.pfn):
        return kvm_handle_error_pfn(w, f)
    if f.slot is None:
        return kvm_handle_noslot_fault(w, f)
    return RET_PF_CONTINUE


def legacy_faultin_lookup(f: Fault, sync: bool, api: str,
                          gfn_to_pfn: Callable[[Out | None, Out, Out], int]) -> tuple[int, bool]:
    """One x86 lookup through a ``__gfn_to_pfn_memslot``-style call ``gfn_to_pfn(async, writable,
    hva)`` (§2.7): ``&async`` on the first try, none (interruptible) on the second, with
    ``&fault->map_writable`` and ``&fault->hva``; (pfn, whether ``*async`` was set)."""
    f.attempts.append(api)
    async_ = None if sync else Out(False)
    writable, hva = Out(f.map_writable), Out(f.hva)
    pfn = gfn_to_pfn(async_, writable, hva)
    f.map_writable, f.hva = bool(writable.value), hva.value
    return pfn, bool(async_ is not None and async_.value)


def faultin_slot_checks(w: World, f: Fault) -> int | None:
    """The memslot checks that open ``__kvm_faultin_pfn`` (≤ v6.12); None: go on to the lookups."""
    slot = f.slot
    if slot is not None and slot.invalid:
        return RET_PF_RETRY
    if slot is None or slot.internal:              # !kvm_is_visible_memslot
        if w.vcpu.guest_mode:                      # never expose internal slots to L2
            f.slot, f.pfn, f.map_writable = None, KVM_PFN_NOSLOT, False
            return RET_PF_CONTINUE
        if slot is not None and slot.id == APIC_ACCESS_PAGE_PRIVATE_MEMSLOT and not w.vcpu.apicv:
            return RET_PF_EMULATE
    return None


def spte_zapped_by_pfn(w: World, spte: Spte) -> None:
    """A/D propagation from a zapped SPTE with the pfn-based setters (§2.7, D17)."""
    if spte.accessed:
        kvm_set_pfn_accessed(w, spte.pfn)
    if spte.dirty:
        kvm_set_pfn_dirty(w, spte.pfn)


def spte_zapped_by_page(w: World, spte: Spte) -> None:
    """A/D propagation only for SPTEs that recorded a refcounted page, with the page-based
    setters (G2s §4.1 item 6 ``is_refcounted_page_pte``; G2f v11's SPTE bit, §5.1)."""
    if spte.page is not None:
        if spte.accessed:
            kvm_set_page_accessed(w, spte.page)
        if spte.dirty:
            kvm_set_page_dirty(w, spte.page)
