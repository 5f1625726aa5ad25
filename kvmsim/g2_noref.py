"""G2 NOREF: David Stevens' ``gfn_to_pfn_noref`` series, v6 (30 Mar 2023) (spec §3).

Only the differences from G1 live here (spec §3.2); the GUP-era path both keep is ``gup_era``'s:
a ``struct page **`` out-parameter that carries the GUP reference (passed to the shared
``hva_to_pfn``), a remapped path that takes no reference, legacy shims that re-take it,
``kvm_release_pfn_noref_clean``, and the converted x86 fault path (``fault->page``, huge pages
only with a page, D16).

Neutral-op mapping: ``lookup`` with ``want_ref`` → the legacy shim (``__gfn_to_pfn_memslot`` =
noref + ``kvm_try_get_refcounted_page_ref``, released with ``kvm_release_pfn_clean``); without
``want_ref`` → ``__gfn_to_pfn_noref_memslot`` (released with ``kvm_release_pfn_noref_clean``).
``gfn_to_page`` and ``kvm_vcpu_map`` are not converted by v6: they behave as G1 through the shims.
"""

from __future__ import annotations

from . import gup_era
from .constants import KVM_PFN_ERR_FAULT, is_error_noslot_pfn, is_error_pfn
from .generation import UNINIT, Fault, Generation, HostMap, Lookup, Out, PageResult
from .memslot import Memslot
from .mm import Vma
from .pfndb import Page
from .scenario import Op
from .world import Spte, World


def gfn_to_pfn_noref_memslot(w: World, slot: Memslot | None, gfn: int, atomic: bool, interruptible: bool,
                             async_out: Out | None, write_fault: bool, writable_out: Out | None,
                             hva_out: Out | None, page_out: Out) -> int:
    """``__gfn_to_pfn_noref_memslot``: as G1, but ``*page`` is left unwritten on the RO_FAULT
    and NOSLOT early returns (D26)."""
    hva, early, writable_out = gup_era.memslot_prelude(slot, gfn, write_fault, writable_out, hva_out)
    if early is not None:
        return early                               # *page left as the caller had it
    return gup_era.hva_to_pfn(w, hva, atomic, interruptible, async_out, write_fault, writable_out,
                              hva_to_pfn_remapped, page_out)


def hva_to_pfn_remapped(w: World, vma: Vma, hva: int, write_fault: bool,
                        writable_out: Out | None) -> tuple[int, int]:
    """As G1 without ``kvm_try_get_pfn``: no reference, any pfn kind accepted (§3.4)."""
    r, pfn, _ = gup_era.remapped_pte_pfn(w, vma, hva, write_fault, writable_out)
    return r, pfn


def kvm_try_get_refcounted_page_ref(w: World, pfn: int, page) -> int:
    """The legacy shims' re-take of G1's reference (after the PTE lock was dropped)."""
    if page is not None or is_error_pfn(pfn):     # UNINIT counts as non-NULL garbage
        return pfn
    pg = gup_era.refcounted_page(w, pfn, zone_device_warn=False)
    if pg is None or w.db.get_unless_zero(pg):
        return pfn
    return KVM_PFN_ERR_FAULT                       # refcount-0 page refused, as in G1


def kvm_release_pfn_noref_clean(w: World, pfn: int, page: Page | None) -> None:
    if is_error_noslot_pfn(pfn):
        return
    gup_era.kvm_set_pfn_accessed(w, pfn)           # pfn_valid & !reserved: touches refcount-0 pages
    if page is not None and page is not UNINIT:
        w.db.put(page)


def legacy_shim(w: World, slot: Memslot | None, gfn: int, atomic: bool, interruptible: bool,
                async_out: Out | None, write_fault: bool, writable_out: Out | None, hva_out: Out | None) -> int:
    """``__gfn_to_pfn_memslot`` and friends in G2: noref + re-take the reference."""
    page = Out(UNINIT)
    pfn = gfn_to_pfn_noref_memslot(w, slot, gfn, atomic, interruptible, async_out, write_fault, writable_out,
                                   hva_out, page)
    return kvm_try_get_refcounted_page_ref(w, pfn, page.value)


def shim_gfn_to_pfn(w: World, gfn: int) -> int:
    return legacy_shim(w, w.slot_for(gfn, vcpu=False), gfn, False, False, None, True, None, None)


def shim_gfn_to_page(w: World, gfn: int) -> PageResult:
    """``gfn_to_page``, unconverted by v6: G1's through the shim (G2s keeps it too)."""
    pfn = shim_gfn_to_pfn(w, gfn)
    pg = None if is_error_noslot_pfn(pfn) else gup_era.refcounted_page(w, pfn, zone_device_warn=False)
    if pg is None:
        return PageResult("gfn_to_page (shim)", None, "ERR_PTR_BAD_PAGE")
    return PageResult("gfn_to_page (shim)", pg, None, lambda: gup_era.kvm_release_page(w, pg, False))


class G2Noref(Generation, name="g2", spec="§3", title="gfn_to_pfn_noref series v6 (Mar 2023, not merged)",
              builds_on=(gup_era,)):
    """§3: the GUP-era path with ``*page``, a remapped step without references, legacy shims."""

    def lookup(self, w: World, op: Op) -> Lookup:
        o = gup_era.legacy_outs(w, op)
        if op.want_ref:
            pfn = legacy_shim(w, o.slot, op.gfn, op.atomic, op.interruptible, o.async_out, op.write, o.writable_out,
                              o.hva_out)
            return o.result("__gfn_to_pfn_memslot (shim)", pfn, None, lambda: gup_era.kvm_release_pfn(w, pfn, False))
        page = Out(UNINIT)
        pfn = gfn_to_pfn_noref_memslot(w, o.slot, op.gfn, op.atomic, op.interruptible, o.async_out, op.write,
                                       o.writable_out, o.hva_out, page)
        pg = page.value
        return o.result("__gfn_to_pfn_noref_memslot", pfn, pg, lambda: kvm_release_pfn_noref_clean(w, pfn, pg))

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        return shim_gfn_to_page(w, op.gfn)

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        return gup_era.kvm_vcpu_map(w, op.gfn, shim_gfn_to_pfn(w, op.gfn))

    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None:
        gup_era.kvm_vcpu_unmap(w, m, dirty)        # the shim's reference: released by pfn, as G1

    # --- x86 (§3.3): both attempts through the noref call, release via fault->page ---------------
    def faultin(self, w: World, f: Fault) -> int:
        return gup_era.kvm_faultin_pfn(w, f, self.faultin_lookup)

    def faultin_lookup(self, w: World, f: Fault, sync: bool) -> tuple[int, bool]:
        """``__gfn_to_pfn_noref_memslot``: ``fault->page`` receives ``*page`` (§3.3)."""
        page = Out(f.page)
        r = gup_era.legacy_faultin_lookup(
            f, sync, "__gfn_to_pfn_noref_memslot",
            lambda async_, writable, hva: gfn_to_pfn_noref_memslot(w, f.slot, f.gfn, False, sync, async_, f.write,
                                                                   writable, hva, page))
        f.page = page.value if page.value is not UNINIT else f.page
        return r

    def is_stale(self, w: World, f: Fault) -> bool:
        return f.slot is not None and w.notifier.retry_hva(f.mmu_seq, f.hva)   # unchanged from G1 (§3.4)

    def finish(self, w: World, f: Fault, r: int) -> None:
        kvm_release_pfn_noref_clean(w, f.pfn, f.page)

    def huge_ok(self, f: Fault) -> bool:
        return f.page is not None                  # remapped memory never gets huge SPTEs (D16)

    def spte_zapped(self, w: World, spte: Spte) -> None:
        gup_era.spte_zapped_by_pfn(w, spte)        # unchanged from G1 (§3.4)
