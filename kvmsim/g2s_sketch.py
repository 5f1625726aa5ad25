"""G2s SKETCH: Sean Christopherson's "very, *very* rough sketch" of ``kvm_follow_pfn()``
(reply to v6 1/4, 22 May 2023) (spec §4), on top of the G2 noref functions (``g2_noref``) and the
GUP-era path the sketch leaves as it was (``gup_era``).

Two modes (spec §4.3, §9):

* ``intended`` (§4.1/§4.2): the prose's meaning — the guard is "in an mmu_notifier sequence or
  wants a reference", caller flags are honoured, errors are pfn errors, the x86 fault path keeps
  no reference on either attempt and only marks the page accessed.
* ``literal``: the sketch's bugs that have semantics, each a named quirk that can be enabled
  alone (``sim:g2s-literal:S4,S8``):
  S2 WARN+FAULT when ``!FOLL_GET && mmu_seq == 0`` (seq is 0 for a new VM);
  S4 ``kvm_follow_pfn`` forces ``FOLL_GET|FOLL_WRITE`` (x86 2nd attempt, kvm_vcpu_map);
  S5 ``KVM_HVA_ERR_BAD``/``KVM_HVA_ERR_RO_BAD`` returned as a pfn;
  S6 the x86 initialiser sets no slot, so the 1st attempt sees "no slot";
  S8 the x86 exit path still puts ``fault->page`` although the 1st attempt dropped its ref.
  S13 (kmap only GUP pages in kvm_vcpu_map) is the sketch's design and holds in both modes.

Neutral-op mapping: ``lookup`` → ``__kvm_follow_pfn(&foll)`` with FOLL_GET iff ``want_ref``,
FOLL_WRITE/NOWAIT/INTERRUPTIBLE from the request, ``mmu_seq`` = the request's value, else the
VM's current sequence when ``guarded``, else 0; ``atomic`` → the G2 legacy shim (the sketch has
no atomic form). ``vcpu_map`` → the sketch's ``kvm_vcpu_map``. ``gfn_to_page`` → G2 (unconverted).
``allow_unsafe_mappings`` stands for the sketch's ``allow_unsafe_kmap``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import g2_noref, gup_era
from .constants import (
    EFAULT,
    EINVAL,
    FOLL_GET,
    FOLL_INTERRUPTIBLE,
    FOLL_NOWAIT,
    FOLL_WRITE,
    KVM_HVA_ERR_BAD,
    KVM_HVA_ERR_RO_BAD,
    KVM_PFN_ERR_FAULT,
    KVM_PFN_ERR_NEEDS_IO,
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_NOSLOT,
    is_error_noslot_pfn,
)
from .g2_noref import gfn_to_pfn_noref_memslot, kvm_release_pfn_noref_clean, legacy_shim
from .generation import UNINIT, Fault, Generation, HostMap, Lookup, Out, PageResult
from .memslot import Memslot
from .page_flags import kvm_set_page_accessed
from .pfndb import Page
from .scenario import Op
from .world import Spte, World

QUIRKS = ("S2", "S4", "S5", "S6", "S8")
# S9: KVM_PFN_ERR_FAULT_MINOR is undefined in the mail; the model gives it NEEDS_IO's value.
KVM_PFN_ERR_FAULT_MINOR = KVM_PFN_ERR_NEEDS_IO


@dataclass(slots=True)
class Foll:
    """``struct kvm_follow_pfn`` as the sketch uses it (fields implied, never defined)."""
    slot: Memslot | None
    gfn: int
    flags: int
    mmu_seq: int = 0
    guarded: bool = False          # intended mode: "inside an mmu_notifier sequence"
    page: Page | None = None
    hva: int = 0
    writable: bool = False


class G2sSketch(Generation, name="g2s", spec="§4.1-§4.2",
                title="kvm_follow_pfn sketch from review, intended reading (May 2023, never code)",
                builds_on=(g2_noref, gup_era)):
    """§4: the sketch's ``kvm_follow_pfn`` on G2's noref functions, intended or literal (quirks)."""

    def __init__(self, quirks: frozenset[str] = frozenset()) -> None:
        unknown = set(quirks) - set(QUIRKS)
        if unknown:
            raise ValueError(f"unknown sketch quirks: {sorted(unknown)} (known: {', '.join(QUIRKS)})")
        self.quirks = frozenset(quirks)
        if quirks:
            self.name = "g2s-literal" if self.quirks == frozenset(QUIRKS) else "g2s-literal:" + ",".join(sorted(quirks))
            self.title = "kvm_follow_pfn sketch taken literally (quirks " + ", ".join(sorted(quirks)) + ")"
            self.spec = "§4.3"

    # --- the sketch's core ----------------------------------------------------------------------
    def follow_pfn_core(self, w: World, foll: Foll) -> int:
        """``__kvm_follow_pfn``."""
        unguarded = foll.mmu_seq == 0 if "S2" in self.quirks else not foll.guarded
        if not foll.flags & FOLL_GET and unguarded:
            w.warn_once("__kvm_follow_pfn:!FOLL_GET && !mmu_seq")
            return KVM_PFN_ERR_FAULT
        async_ = Out(False) if foll.flags & FOLL_NOWAIT else None
        writable, hva, page = Out(False), Out(0), Out(UNINIT)
        pfn = gfn_to_pfn_noref_memslot(w, foll.slot, foll.gfn, False, bool(foll.flags & FOLL_INTERRUPTIBLE), async_,
                                       bool(foll.flags & FOLL_WRITE), writable, hva, page)
        if async_ is not None and async_.value:
            pfn = KVM_PFN_ERR_FAULT_MINOR          # FOLL_NOWAIT && vma_is_valid (§4.1 item 3)
        foll.page = None if page.value is UNINIT else page.value
        foll.hva, foll.writable = hva.value, bool(writable.value)
        if foll.page is not None and not foll.flags & FOLL_GET:
            w.db.put(foll.page)                    # ref dropped, pointer kept
        return pfn

    def kvm_follow_pfn(self, w: World, gfn: int, flags: int, foll: Foll | None = None,
                       vcpu: bool = True) -> tuple[int, Foll]:
        """The sketch's public entry: FOLL_GET|FOLL_WRITE hard-coded (S4), slot looked up here,
        hva error constants returned as pfns (S5)."""
        flags = FOLL_GET | FOLL_WRITE if "S4" in self.quirks else flags | FOLL_GET
        slot = w.slot_for(gfn, vcpu=vcpu)
        if foll is None:
            foll = Foll(slot, gfn, flags)
        foll.slot, foll.flags = slot, flags
        if slot is None or slot.invalid:
            return (KVM_HVA_ERR_BAD if "S5" in self.quirks else KVM_PFN_NOSLOT), foll
        if slot.readonly and ("S4" in self.quirks or flags & FOLL_WRITE):
            return (KVM_HVA_ERR_RO_BAD if "S5" in self.quirks else KVM_PFN_ERR_RO_FAULT), foll
        return self.follow_pfn_core(w, foll), foll

    # --- neutral ops ----------------------------------------------------------------------------
    def lookup(self, w: World, op: Op) -> Lookup:
        slot = w.slot_for(op.gfn, op.vcpu)
        if op.atomic:
            return self._shim_lookup(w, op, slot)
        flags = (FOLL_GET if op.want_ref else 0) | (FOLL_WRITE if op.write else 0) \
            | (FOLL_NOWAIT if op.nowait else 0) | (FOLL_INTERRUPTIBLE if op.interruptible else 0)
        seq = op.mmu_seq if op.mmu_seq is not None else (w.notifier.seq if op.guarded else 0)
        foll = Foll(slot, op.gfn, flags, seq, op.guarded or op.mmu_seq is not None)
        pfn = self.follow_pfn_core(w, foll)
        pg, get = foll.page, bool(flags & FOLL_GET)
        release = (lambda: kvm_release_pfn_noref_clean(w, pfn, pg)) if get else (lambda: None)
        return Lookup("__kvm_follow_pfn", pfn, pg, foll.writable if op.try_writable else None, foll.hva,
                      None, release)

    def _shim_lookup(self, w: World, op: Op, slot: Memslot | None) -> Lookup:
        writable = Out(None) if op.try_writable else None
        hva = Out()
        pfn = legacy_shim(w, slot, op.gfn, True, op.interruptible, Out(False) if op.nowait else None, op.write,
                          writable, hva)
        return Lookup("gfn_to_pfn_memslot_atomic (shim)", pfn, None, writable.value if writable else None,
                      hva.value, None, lambda: gup_era.kvm_release_pfn(w, pfn, False))

    def gfn_to_page(self, w: World, op: Op) -> PageResult:
        return g2_noref.shim_gfn_to_page(w, op.gfn)       # unconverted: G2's shim

    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]:
        """Sketch ``kvm_vcpu_map``: kmap only a page the API returned (S13), memremap only with
        ``allow_unsafe_kmap``."""
        m = HostMap(op.gfn)
        pfn, foll = self.kvm_follow_pfn(w, op.gfn, FOLL_WRITE, vcpu=False)   # vcpu->kvm: address space 0
        if is_error_noslot_pfn(pfn):
            return -EINVAL, m
        m.pfn = pfn
        if foll.page is not None:
            m.page, m.hva = foll.page, "kmap"
        elif w.allow_unsafe_mappings and _memremap_ok(w, pfn):
            m.hva = "memremap"
        else:
            return -EFAULT, m
        return 0, m

    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None:
        def release() -> None:
            if m.page is not None:                 # only a GUP page carries the FOLL_GET reference
                gup_era.kvm_release_page(w, m.page, dirty)
        gup_era.kvm_vcpu_unmap(w, m, dirty, release)

    # --- x86 ------------------------------------------------------------------------------------
    def faultin(self, w: World, f: Fault) -> int:
        return gup_era.kvm_faultin_pfn(w, f, self.faultin_lookup)

    def faultin_lookup(self, w: World, f: Fault, sync: bool) -> tuple[int, bool]:
        """``__kvm_follow_pfn(&foll)`` first; the second attempt through ``kvm_follow_pfn`` (S3/S4:
        the public entry with FOLL_GET|FOLL_WRITE forced, with S4; else the caller's flags)."""
        foll = Foll(None if "S6" in self.quirks else f.slot, f.gfn,
                    (FOLL_INTERRUPTIBLE if sync else FOLL_NOWAIT) | (FOLL_WRITE if f.write else 0),
                    f.mmu_seq, guarded=True)
        if not sync:
            f.attempts.append("__kvm_follow_pfn")
            pfn = self.follow_pfn_core(w, foll)
        elif "S4" in self.quirks:
            f.attempts.append("kvm_follow_pfn")
            pfn, foll = self.kvm_follow_pfn(w, f.gfn, foll.flags, foll)
        else:
            f.attempts.append("kvm_follow_pfn")
            pfn = self.follow_pfn_core(w, foll)
        if not is_error_noslot_pfn(pfn):
            self._success(f, foll)
        return pfn, not sync and pfn == KVM_PFN_ERR_FAULT_MINOR

    @staticmethod
    def _success(f: Fault, foll: Foll) -> None:
        f.hva, f.page, f.map_writable = foll.hva, foll.page, foll.writable

    def is_stale(self, w: World, f: Fault) -> bool:
        return f.slot is not None and w.notifier.retry_hva(f.mmu_seq, f.hva)   # G2's, unchanged (§3.4)

    def finish(self, w: World, f: Fault, r: int) -> None:
        if "S8" in self.quirks:                    # v6 2/4's exit path, unchanged by the sketch
            kvm_release_pfn_noref_clean(w, f.pfn, f.page)
        elif f.page is not None and not is_error_noslot_pfn(f.pfn):
            kvm_set_page_accessed(w, f.page)       # no reference is held on either attempt

    def huge_ok(self, f: Fault) -> bool:
        return f.page is not None                  # G2's D16, unchanged

    def spte_zapped(self, w: World, spte: Spte) -> None:
        gup_era.spte_zapped_by_page(w, spte)       # is_refcounted_page_pte (§4.1 item 6)


def _memremap_ok(w: World, pfn: int) -> bool:
    pg = w.db.lookup(pfn)
    return pg is None or pg.memremap_ok
