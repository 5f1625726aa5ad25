"""G1 LEGACY: ``gfn_to_pfn*`` / ``__gfn_to_pfn_memslot`` / ``hva_to_pfn`` as in v6.3/v6.4 (spec §2).

The GUP-era path G1 defines and the later pre-6.13 generations keep (``__gfn_to_pfn_memslot``'s
slot checks, ``hva_to_pfn``, the §2.4 helpers, ``kvm_vcpu_map``, x86 ``kvm_faultin_pfn``) lives in
``gup_era``; this module holds G1's own decisions: a reference on every remapped refcounted page
(§2.3, C2), the legacy entry points and their release by pfn.

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

from . import gup_era
from .constants import EFAULT, is_error_noslot_pfn
from .generation import Fault, Generation, HostMap, Lookup, Out, PageResult
from .memslot import Memslot
from .mm import Vma
from .scenario import Op
from .world import Spte, World

# --- §2.2, §2.3 ---------------------------------------------------------------------------------

def gfn_to_pfn_memslot(w: World, slot: Memslot | None, gfn: int, atomic: bool, interruptible: bool,
                       async_out: Out | None, write_fault: bool, writable_out: Out | None,
                       hva_out: Out | None) -> int:
    """``__gfn_to_pfn_memslot``."""
    hva, early, writable_out = gup_era.memslot_prelude(slot, gfn, write_fault, writable_out, hva_out)
    if early is not None:
        return early
    return gup_era.hva_to_pfn(w, hva, atomic, interruptible, async_out, write_fault, writable_out,
                              hva_to_pfn_remapped)


def hva_to_pfn_remapped(w: World, vma: Vma, hva: int, write_fault: bool,
                        writable_out: Out | None) -> tuple[int, int]:
    """§2.3: a refcounted struct page is taken a reference on, under the PTE lock (C2)."""
    r, pfn, mapped = gup_era.remapped_pte_pfn(w, vma, hva, write_fault, writable_out)
    if not mapped:
        return r, pfn
    pg = gup_era.refcounted_page(w, pfn)
    if pg is not None and not w.db.get_unless_zero(pg):    # under the PTE lock
        return -EFAULT, 0                          # refcount-0 struct page refused (C2)
    return 0, pfn


# --- §2.8 ---------------------------------------------------------------------------------------

def gfn_to_pfn(w: World, gfn: int) -> int:
    """``gfn_to_pfn(kvm, gfn)``: AS 0, write fault, may sleep."""
    return gfn_to_pfn_memslot(w, w.slot_for(gfn, vcpu=False), gfn, False, False, None, True, None, None)


class G1Legacy(Generation, name="g1", spec="§2", title="legacy gfn_to_pfn family (v6.3/v6.4)",
               builds_on=(gup_era,)):
    """§2: the GUP-era path with G1's remapped step; references released by pfn."""

    def lookup(self, w: World, op: Op) -> Lookup:
        o = gup_era.legacy_outs(w, op)
        pfn = gfn_to_pfn_memslot(w, o.slot, op.gfn, op.atomic, op.interruptible, o.async_out, op.write,
                                 o.writable_out, o.hva_out)
        return o.result("__gfn_to_pfn_memslot", pfn, None, lambda: gup_era.kvm_release_pfn(w, pfn, False))

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        pfn = gfn_to_pfn(w, op.gfn)
        if is_error_noslot_pfn(pfn):
            return PageResult("gfn_to_page", None, "ERR_PTR_BAD_PAGE")
        pg = gup_era.refcounted_page(w, pfn)
        if pg is None:
            return PageResult("gfn_to_page", None, "ERR_PTR_BAD_PAGE")
        return PageResult("gfn_to_page", pg, None, lambda: gup_era.kvm_release_page(w, pg, False))

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        return gup_era.kvm_vcpu_map(w, op.gfn, gfn_to_pfn(w, op.gfn))

    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None:
        gup_era.kvm_vcpu_unmap(w, m, dirty)        # released by pfn

    # --- x86 (§2.7) ---------------------------------------------------------------------------
    def faultin(self, w: World, f: Fault) -> int:
        return gup_era.kvm_faultin_pfn(w, f, self.faultin_lookup)

    def faultin_lookup(self, w: World, f: Fault, sync: bool) -> tuple[int, bool]:
        """``__gfn_to_pfn_memslot``: ``&async`` on the first try, interruptible on the second."""
        return gup_era.legacy_faultin_lookup(
            f, sync, "__gfn_to_pfn_memslot",
            lambda async_, writable, hva: gfn_to_pfn_memslot(w, f.slot, f.gfn, False, sync, async_, f.write, writable,
                                                             hva))

    def is_stale(self, w: World, f: Fault) -> bool:
        return f.slot is not None and w.notifier.retry_hva(f.mmu_seq, f.hva)

    def finish(self, w: World, f: Fault, r: int) -> None:
        gup_era.kvm_release_pfn(w, f.pfn, False)   # unconditional: accessed even on RETRY (D20)

    def spte_zapped(self, w: World, spte: Spte) -> None:
        gup_era.spte_zapped_by_pfn(w, spte)
