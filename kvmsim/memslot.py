"""Memslots and gfn → hva translation (spec §1.2; identical in every generation)."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import (
    KVM_HVA_ERR_BAD, KVM_HVA_ERR_RO_BAD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID,
    KVM_USER_MEM_SLOTS, PAGE_SHIFT,
)


@dataclass(slots=True)
class Memslot:
    id: int
    as_id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0

    @property
    def readonly(self) -> bool:
        return bool(self.flags & KVM_MEM_READONLY)

    @property
    def invalid(self) -> bool:
        return bool(self.flags & KVM_MEMSLOT_INVALID)

    @property
    def dirty_log(self) -> bool:
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    @property
    def internal(self) -> bool:
        return self.id >= KVM_USER_MEM_SLOTS

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    @property
    def hva_end(self) -> int:
        return self.userspace_addr + (self.npages << PAGE_SHIFT)


class Memslots:
    """The installed memslots of both x86 address spaces (0: normal, 1: SMM)."""

    def __init__(self) -> None:
        self.slots: list[Memslot] = []

    def add(self, slot: Memslot) -> None:
        self.slots.append(slot)

    def remove(self, slot: Memslot) -> None:
        self.slots.remove(slot)

    def by_id(self, as_id: int, slot_id: int) -> Memslot | None:
        for s in self.slots:
            if s.as_id == as_id and s.id == slot_id:
                return s
        return None

    def find(self, as_id: int, gfn: int) -> Memslot | None:
        """``__gfn_to_memslot`` in one address space (an INVALID slot is still found)."""
        for s in self.slots:
            if s.as_id == as_id and s.base_gfn <= gfn < s.base_gfn + s.npages:
                return s
        return None

    def overlapping(self, as_id: int, base_gfn: int, npages: int, ignore: Memslot | None = None) -> Memslot | None:
        for s in self.slots:
            if s is not ignore and s.as_id == as_id and s.base_gfn < base_gfn + npages and base_gfn < s.base_gfn + s.npages:
                return s
        return None


def gfn_to_hva_in_slot(slot: Memslot, gfn: int) -> int:
    """``__gfn_to_hva_memslot`` (the out-of-range clamp of array_index_nospec included)."""
    off = gfn - slot.base_gfn
    if off < 0 or off >= slot.npages:
        off = 0
    return slot.userspace_addr + (off << PAGE_SHIFT)


def gfn_to_hva_many(slot: Memslot | None, gfn: int, write: bool) -> int:
    """``__gfn_to_hva_many``: error hva for a missing/INVALID slot or a write to a RO slot."""
    if slot is None or slot.flags & KVM_MEMSLOT_INVALID:
        return KVM_HVA_ERR_BAD
    if slot.flags & KVM_MEM_READONLY and write:
        return KVM_HVA_ERR_RO_BAD
    return gfn_to_hva_in_slot(slot, gfn)
