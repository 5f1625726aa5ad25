"""G1 LEGACY: ``gfn_to_pfn*`` / ``__gfn_to_pfn_memslot`` / ``hva_to_pfn`` as in v6.3/v6.4 (spec §2).

Neutral-op mapping (spec §2.1):

* ``lookup`` → ``__gfn_to_pfn_memslot(slot, gfn, atomic, interruptible, async, write_fault,
  writable, hva)`` with ``async`` passed iff ``nowait``, ``writable`` iff ``try_writable``, the
  slot from ``kvm_vcpu_gfn_to_memslot`` (``vcpu``) or ``gfn_to_memslot`` (AS 0).  G1 always
  returns a reference: ``want_ref``, ``guarded``, ``pin`` and ``mmu_seq`` have no G1 meaning.
  Canonical release: ``kvm_release_pfn_clean(pfn)``.
* ``gfn_to_page`` → ``gfn_to_page`` (always a write lookup); release ``kvm_release_page_clean``.
* ``vcpu_map``/``vcpu_unmap`` → ``kvm_vcpu_map``/``kvm_vcpu_unmap(map, dirty)`` (§2.8).
* ``x86_fault``/``access`` → §2.7 (two attempts, async #PF, hva-based stale check).
"""

from __future__ import annotations

from .constants import (
    APIC_ACCESS_PAGE_PRIVATE_MEMSLOT, EAGAIN, EFAULT, EHWPOISON, EINTR, EINVAL, FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE, FOLL_NOWAIT, FOLL_WRITE, KVM_HVA_ERR_RO_BAD, KVM_PFN_ERR_FAULT, KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT, KVM_PFN_ERR_SIGPENDING, KVM_PFN_NOSLOT, RET_PF_CONTINUE, RET_PF_EMULATE, RET_PF_RETRY,
    VM_REMAPPED, is_error_noslot_pfn, is_error_pfn, kvm_is_error_hva,
)
from .generation import Fault, Generation, HostMap, KernelBug, Lookup, Out, PageResult
from .memslot import Memslot, gfn_to_hva_many
from .mm import follow_remapped_pte, gup_fast_only, gup_slow, vma_is_valid
from .page_flags import kvm_set_page_accessed, kvm_set_page_dirty
from .pfndb import Page
from .scenario import Op
from .world import Spte, World
from .x86 import kvm_handle_error_pfn, kvm_handle_noslot_fault, try_async_pf


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
    if is_error_noslot_pfn(pfn):
        w.warn("kvm_set_pfn_accessed:error_pfn")
        return
    pg = w.db.lookup(pfn)
    if pg is not None and pg.pfn_valid and not pg.reserved:
        w.db.set_accessed(pg)


def kvm_set_pfn_dirty(w: World, pfn: int) -> None:
    if is_error_noslot_pfn(pfn):
        w.warn("kvm_set_pfn_dirty:error_pfn")
        return
    pg = w.db.lookup(pfn)
    if pg is not None and pg.pfn_valid and not pg.reserved:
        w.db.set_dirty(pg)


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

def gfn_to_pfn_memslot(w: World, slot: Memslot | None, gfn: int, atomic: bool, interruptible: bool,
                       async_out: Out | None, write_fault: bool, writable_out: Out | None,
                       hva_out: Out | None) -> int:
    """``__gfn_to_pfn_memslot``."""
    hva, early, writable_out = memslot_prelude(slot, gfn, write_fault, writable_out, hva_out)
    if early is not None:
        return early
    return hva_to_pfn(w, hva, atomic, interruptible, async_out, write_fault, writable_out)


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
    if writable_out is not None and slot.readonly:
        writable_out.value = False                 # I1: never offer RW for a RO slot
        writable_out = None
    return hva, None, writable_out


def hva_to_pfn(w: World, hva: int, atomic: bool, interruptible: bool, async_out: Out | None,
               write_fault: bool, writable_out: Out | None) -> int:
    if atomic and async_out is not None:
        w.bug("hva_to_pfn:BUG_ON(atomic && async)")
        raise KernelBug("BUG_ON(atomic && async)")
    if write_fault or writable_out is not None:    # fast path only when RW is acceptable
        pg = gup_fast_only(w, hva, write=True)
        if pg is not None:
            if writable_out is not None:
                writable_out.value = True
            return pg.pfn
    if atomic:
        return KVM_PFN_ERR_FAULT                   # writable left untouched (I6)
    if writable_out is not None:
        writable_out.value = write_fault           # pre-set; stays on failure (D12)
    flags = FOLL_HWPOISON | (FOLL_WRITE if write_fault else 0) | (FOLL_NOWAIT if async_out is not None else 0) \
        | (FOLL_INTERRUPTIBLE if interruptible else 0)
    n, pg = gup_slow(w, hva, flags)
    if n == 1:
        if not write_fault and writable_out is not None:   # opportunistic RW upgrade
            wpg = gup_fast_only(w, hva, write=True)
            if wpg is not None:
                writable_out.value = True
                w.db.put(pg)
                pg = wpg
        return pg.pfn
    if n == -EINTR:
        return KVM_PFN_ERR_SIGPENDING
    # classify the failure (n == 0, -EAGAIN, -EFAULT, -EHWPOISON)
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
            async_out.value = True                 # "needs I/O": caller may do async #PF (I5)
        return KVM_PFN_ERR_FAULT


def _probe_hwpoison(w: World, hva: int) -> bool:
    """``check_user_page_hwpoison``: a GUP(FOLL_HWPOISON|FOLL_WRITE) probe (adds no outcome, D14)."""
    n, pg = gup_slow(w, hva, FOLL_HWPOISON | FOLL_WRITE)
    if n == 1 and pg is not None:
        w.db.put(pg)
    return n == -EHWPOISON


def hva_to_pfn_remapped(w: World, vma, hva: int, write_fault: bool, writable_out: Out | None) -> tuple[int, int]:
    r, pte = follow_remapped_pte(w, vma, hva, write_fault)
    if pte is None:
        return r, 0
    if write_fault and not pte.writable:
        return 0, KVM_PFN_ERR_RO_FAULT             # success code carrying an error pfn
    if writable_out is not None:
        writable_out.value = pte.writable
    pfn = pte.page.pfn
    pg = refcounted_page(w, pfn)
    if pg is not None and not w.db.get_unless_zero(pg):    # under the PTE lock
        return -EFAULT, 0                          # refcount-0 struct page refused (C2)
    return 0, pfn


# --- §2.8 ---------------------------------------------------------------------------------------

def gfn_to_pfn(w: World, gfn: int) -> int:
    """``gfn_to_pfn(kvm, gfn)``: AS 0, write fault, may sleep."""
    return gfn_to_pfn_memslot(w, w.slot_for(gfn, vcpu=False), gfn, False, False, None, True, None, None)


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


class G1Legacy(Generation):
    name = "g1"
    title = "legacy gfn_to_pfn family (v6.3/v6.4)"
    spec = "§2"

    def lookup(self, w: World, op: Op) -> Lookup:
        slot = w.slot_for(op.gfn, op.vcpu)
        async_ = Out(False) if op.nowait else None
        writable = Out(None) if op.try_writable else None
        hva = Out()
        pfn = gfn_to_pfn_memslot(w, slot, op.gfn, op.atomic, op.interruptible, async_, op.write, writable, hva)
        return Lookup("__gfn_to_pfn_memslot", pfn, None, writable.value if writable else None, hva.value,
                      async_.value if async_ else None, lambda: kvm_release_pfn(w, pfn, False))

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        pfn = gfn_to_pfn(w, op.gfn)
        if is_error_noslot_pfn(pfn):
            return PageResult("gfn_to_page", None, "ERR_PTR_BAD_PAGE")
        pg = refcounted_page(w, pfn)
        if pg is None:
            return PageResult("gfn_to_page", None, "ERR_PTR_BAD_PAGE")
        return PageResult("gfn_to_page", pg, None, lambda: kvm_release_page(w, pg, False))

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        return kvm_vcpu_map(w, op.gfn, gfn_to_pfn(w, op.gfn))

    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None:
        if m.hva is None:
            return
        if dirty:
            w.mark_page_dirty(w.slot_for(m.gfn, vcpu=True), m.gfn)
        kvm_release_pfn(w, m.pfn, dirty)
        m.hva = m.page = None

    # --- x86 (§2.7) ---------------------------------------------------------------------------
    def gup(self, w: World, f: Fault, interruptible: bool, async_: Out | None) -> int:
        f.attempts.append("__gfn_to_pfn_memslot")
        writable, hva = Out(f.map_writable), Out(f.hva)
        pfn = gfn_to_pfn_memslot(w, f.slot, f.gfn, False, interruptible, async_, f.write, writable, hva)
        f.map_writable, f.hva = bool(writable.value), hva.value
        return pfn

    def faultin(self, w: World, f: Fault) -> int:
        f.mmu_seq = w.notifier.seq
        r = self._faultin(w, f)
        if r != RET_PF_CONTINUE:
            return r
        if is_error_pfn(f.pfn):
            return kvm_handle_error_pfn(w, f)
        if f.slot is None:
            return kvm_handle_noslot_fault(w, f)
        return RET_PF_CONTINUE

    def _visibility(self, w: World, f: Fault) -> int | None:
        """The memslot checks that open ``__kvm_faultin_pfn`` (≤ v6.12)."""
        slot = f.slot
        if slot is not None and slot.invalid:
            return RET_PF_RETRY
        if slot is None or slot.internal:          # !kvm_is_visible_memslot
            if w.vcpu.guest_mode:                  # never expose internal slots to L2
                f.slot, f.pfn, f.map_writable = None, KVM_PFN_NOSLOT, False
                return RET_PF_CONTINUE
            if slot is not None and slot.id == APIC_ACCESS_PAGE_PRIVATE_MEMSLOT and not w.vcpu.apicv:
                return RET_PF_EMULATE
        return None

    def _faultin(self, w: World, f: Fault) -> int:
        """``__kvm_faultin_pfn``."""
        r = self._visibility(w, f)
        if r is not None:
            return r
        async_ = Out(False)
        f.pfn = self.gup(w, f, False, async_)
        if not async_.value:
            return RET_PF_CONTINUE                 # success or a terminal error
        r = try_async_pf(w, f)
        if r is not None:
            return r
        f.pfn = self.gup(w, f, True, None)         # synchronous, interruptible
        return RET_PF_CONTINUE

    def is_stale(self, w: World, f: Fault) -> bool:
        return f.slot is not None and w.notifier.retry_hva(f.mmu_seq, f.hva)

    def finish(self, w: World, f: Fault, r: int) -> None:
        kvm_release_pfn(w, f.pfn, False)           # unconditional: accessed even on RETRY (D20)

    def spte_zapped(self, w: World, spte: Spte) -> None:
        if spte.accessed:
            kvm_set_pfn_accessed(w, spte.pfn)
        if spte.dirty:
            kvm_set_pfn_dirty(w, spte.pfn)

