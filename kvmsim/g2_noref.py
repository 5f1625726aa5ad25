"""G2 NOREF: David Stevens' ``gfn_to_pfn_noref`` series, v6 (30 Mar 2023) (spec §3).

Only the differences from G1 live here (spec §3.2): a ``struct page **`` out-parameter that
carries the GUP reference, a remapped path that takes no reference, legacy shims that re-take
it, ``kvm_release_pfn_noref_clean``, and the converted x86 fault path (``fault->page``,
huge pages only with a page, D16).

Neutral-op mapping: ``lookup`` with ``want_ref`` → the legacy shim (``__gfn_to_pfn_memslot`` =
noref + ``kvm_try_get_refcounted_page_ref``, released with ``kvm_release_pfn_clean``); without
``want_ref`` → ``__gfn_to_pfn_noref_memslot`` (released with ``kvm_release_pfn_noref_clean``).
``gfn_to_page`` and ``kvm_vcpu_map`` are not converted by v6: they behave as G1 through the shims.
"""

from __future__ import annotations

from .constants import (
    EAGAIN, EHWPOISON, EINTR, FOLL_HWPOISON, FOLL_INTERRUPTIBLE, FOLL_NOWAIT, FOLL_WRITE,
    KVM_PFN_ERR_FAULT, KVM_PFN_ERR_HWPOISON, KVM_PFN_ERR_RO_FAULT, KVM_PFN_ERR_SIGPENDING,
    VM_REMAPPED, is_error_noslot_pfn, is_error_pfn,
)
from .g1_legacy import (
    G1Legacy, _probe_hwpoison, kvm_release_page, memslot_prelude, kvm_release_pfn, kvm_set_pfn_accessed, kvm_vcpu_map,
    refcounted_page,
)
from .generation import UNINIT, Fault, HostMap, KernelBug, Lookup, Out, PageResult
from .memslot import Memslot
from .mm import follow_remapped_pte, gup_fast_only, gup_slow, vma_is_valid
from .pfndb import Page
from .scenario import Op
from .world import World


def gfn_to_pfn_noref_memslot(w: World, slot: Memslot | None, gfn: int, atomic: bool, interruptible: bool,
                             async_out: Out | None, write_fault: bool, writable_out: Out | None,
                             hva_out: Out | None, page_out: Out) -> int:
    """``__gfn_to_pfn_noref_memslot``: as G1, but ``*page`` is left unwritten on the RO_FAULT
    and NOSLOT early returns (D26)."""
    hva, early, writable_out = memslot_prelude(slot, gfn, write_fault, writable_out, hva_out)
    if early is not None:
        return early                               # *page left as the caller had it
    return hva_to_pfn(w, hva, atomic, interruptible, async_out, write_fault, writable_out, page_out)


def hva_to_pfn(w: World, hva: int, atomic: bool, interruptible: bool, async_out: Out | None,
               write_fault: bool, writable_out: Out | None, page_out: Out) -> int:
    page_out.value = None                          # set on entry (§3.2)
    if atomic and async_out is not None:
        w.bug("hva_to_pfn:BUG_ON(atomic && async)")
        raise KernelBug("BUG_ON(atomic && async)")
    if write_fault or writable_out is not None:
        pg = gup_fast_only(w, hva, write=True)
        if pg is not None:
            if writable_out is not None:
                writable_out.value = True
            page_out.value = pg
            return pg.pfn
    if atomic:
        return KVM_PFN_ERR_FAULT
    if writable_out is not None:
        writable_out.value = write_fault
    flags = FOLL_HWPOISON | (FOLL_WRITE if write_fault else 0) | (FOLL_NOWAIT if async_out is not None else 0) \
        | (FOLL_INTERRUPTIBLE if interruptible else 0)
    n, pg = gup_slow(w, hva, flags)
    if n == 1:
        if not write_fault and writable_out is not None:
            wpg = gup_fast_only(w, hva, write=True)
            if wpg is not None:
                writable_out.value = True
                w.db.put(pg)
                pg = wpg                           # the upgrade swaps *page
        page_out.value = pg
        return pg.pfn
    if n == -EINTR:
        return KVM_PFN_ERR_SIGPENDING
    if n == -EHWPOISON or (async_out is None and _probe_hwpoison(w, hva)):
        return KVM_PFN_ERR_HWPOISON
    while True:
        vma = w.mm.find(hva)
        if vma is None:
            return KVM_PFN_ERR_FAULT
        if vma.flags & VM_REMAPPED:
            r, pfn = hva_to_pfn_remapped(w, vma, hva, write_fault, writable_out)
            if r == -EAGAIN:
                continue
            return KVM_PFN_ERR_FAULT if r < 0 else pfn
        if async_out is not None and vma_is_valid(vma, write_fault):
            async_out.value = True
        return KVM_PFN_ERR_FAULT


def hva_to_pfn_remapped(w: World, vma, hva: int, write_fault: bool, writable_out: Out | None) -> tuple[int, int]:
    """As G1 without ``kvm_try_get_pfn``: no reference, any pfn kind accepted (§3.4)."""
    r, pte = follow_remapped_pte(w, vma, hva, write_fault)
    if pte is None:
        return r, 0
    if write_fault and not pte.writable:
        return 0, KVM_PFN_ERR_RO_FAULT
    if writable_out is not None:
        writable_out.value = pte.writable
    return 0, pte.page.pfn


def kvm_try_get_refcounted_page_ref(w: World, pfn: int, page) -> int:
    """The legacy shims' re-take of G1's reference (after the PTE lock was dropped)."""
    if page is not None or is_error_pfn(pfn):     # UNINIT counts as non-NULL garbage
        return pfn
    pg = refcounted_page(w, pfn, zone_device_warn=False)
    if pg is None or w.db.get_unless_zero(pg):
        return pfn
    return KVM_PFN_ERR_FAULT                       # refcount-0 page refused, as in G1


def kvm_release_pfn_noref_clean(w: World, pfn: int, page: Page | None) -> None:
    if is_error_noslot_pfn(pfn):
        return
    kvm_set_pfn_accessed(w, pfn)                   # pfn_valid & !reserved: touches refcount-0 pages
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


class G2Noref(G1Legacy):
    name = "g2"
    title = "gfn_to_pfn_noref series v6 (Mar 2023, not merged)"
    spec = "§3"

    def lookup(self, w: World, op: Op) -> Lookup:
        slot = w.slot_for(op.gfn, op.vcpu)
        async_ = Out(False) if op.nowait else None
        writable = Out(None) if op.try_writable else None
        hva = Out()
        wr = writable.value if writable else None
        if op.want_ref:
            pfn = legacy_shim(w, slot, op.gfn, op.atomic, op.interruptible, async_, op.write, writable, hva)
            return Lookup("__gfn_to_pfn_memslot (shim)", pfn, None, writable.value if writable else wr, hva.value,
                          async_.value if async_ else None, lambda: kvm_release_pfn(w, pfn, False))
        page = Out(UNINIT)
        pfn = gfn_to_pfn_noref_memslot(w, slot, op.gfn, op.atomic, op.interruptible, async_, op.write, writable,
                                       hva, page)
        pg = page.value
        return Lookup("__gfn_to_pfn_noref_memslot", pfn, pg, writable.value if writable else None, hva.value,
                      async_.value if async_ else None, lambda: kvm_release_pfn_noref_clean(w, pfn, pg))

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        pfn = shim_gfn_to_pfn(w, op.gfn)
        pg = None if is_error_noslot_pfn(pfn) else refcounted_page(w, pfn, zone_device_warn=False)
        if pg is None:
            return PageResult("gfn_to_page (shim)", None, "ERR_PTR_BAD_PAGE")
        return PageResult("gfn_to_page (shim)", pg, None, lambda: kvm_release_page(w, pg, False))

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        return kvm_vcpu_map(w, op.gfn, shim_gfn_to_pfn(w, op.gfn))

    # --- x86 (§3.3): both attempts through the noref call, release via fault->page ---------------
    def gup(self, w: World, f: Fault, interruptible: bool, async_: Out | None) -> int:
        f.attempts.append("__gfn_to_pfn_noref_memslot")
        writable, hva, page = Out(f.map_writable), Out(f.hva), Out(f.page)
        pfn = gfn_to_pfn_noref_memslot(w, f.slot, f.gfn, False, interruptible, async_, f.write, writable, hva, page)
        f.map_writable, f.hva = bool(writable.value), hva.value
        f.page = page.value if page.value is not UNINIT else f.page
        return pfn

    def finish(self, w: World, f: Fault, r: int) -> None:
        kvm_release_pfn_noref_clean(w, f.pfn, f.page)

    def huge_ok(self, f: Fault) -> bool:
        return f.page is not None                  # remapped memory never gets huge SPTEs (D16)
