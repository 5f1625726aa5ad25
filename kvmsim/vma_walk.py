"""The end of ``hva_to_pfn`` that every generation keeps (spec §2.3, §5.1, §6.2): once GUP has
failed, look the VMA up under mmap_lock, let a VM_IO/VM_PFNMAP mapping resolve through the
generation's own remapped step, and look up again when that step dropped the lock (-EAGAIN)."""

from __future__ import annotations

from collections.abc import Callable

from .constants import EAGAIN, KVM_PFN_ERR_FAULT, KVM_PFN_ERR_NEEDS_IO, VM_REMAPPED
from .mm import Vma, vma_is_valid
from .world import World

# A generation's ``hva_to_pfn_remapped`` for one VMA: (0 or -errno, pfn).
Remapped = Callable[[Vma], tuple[int, int]]


def hva_to_pfn_vma(w: World, hva: int, write: bool, nowait: bool, remapped: Remapped) -> int:
    """The ``retry:`` block of ``hva_to_pfn``.  ``KVM_PFN_ERR_NEEDS_IO`` when the caller may not
    wait and the VMA is valid for the access (G1/G2 report it as ``*async = true`` with FAULT,
    G2f/G3 return it, §2.3 I5, §5.1); FAULT for a missing or invalid VMA."""
    while True:
        vma = w.mm.find(hva)
        if vma is None:
            return KVM_PFN_ERR_FAULT
        if vma.flags & VM_REMAPPED:
            r, pfn = remapped(vma)
            if r == -EAGAIN:
                continue                           # the fault handler dropped mmap_lock: look up again
            return KVM_PFN_ERR_FAULT if r < 0 else pfn
        if nowait and vma_is_valid(vma, write):
            return KVM_PFN_ERR_NEEDS_IO
        return KVM_PFN_ERR_FAULT
