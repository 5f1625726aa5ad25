"""Memslots and gfn → hva translation (spec §1.2; identical in every generation)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from .constants import (
    KVM_HVA_ERR_BAD,
    KVM_HVA_ERR_RO_BAD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMSLOT_INVALID,
    KVM_USER_MEM_SLOTS,
    PAGE_SHIFT,
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
    """The installed memslots of both x86 address spaces (0: normal, 1: SMM).

    Indexed like the kernel's (an id table and a gfn-ordered tree per address space), so that a
    lookup costs O(log n) and a scenario with thousands of memslots runs in linear time.  Slots of
    one address space never overlap in a valid scenario; if a caller installs overlapping ones
    anyway, ``find``/``overlapping`` fall back to the first match in installation order."""

    def __init__(self) -> None:
        self._order: dict[int, Memslot] = {}                       # id(slot) -> slot, installation order
        self._ids: dict[tuple[int, int], list[Memslot]] = {}       # (as_id, id) -> slots
        self._starts: dict[int, list[int]] = {}                    # as_id -> sorted base gfns ...
        self._sorted: dict[int, list[Memslot]] = {}                # ... and the slots in that order
        self._overlaps = False

    @property
    def slots(self) -> list[Memslot]:
        return list(self._order.values())

    def add(self, slot: Memslot) -> None:
        """Installs ``slot``.  The first slot of an address space collides with nothing and starts
        its index: a world is built with one or two slots, so that case skips the search."""
        as_id = slot.as_id
        if as_id not in self._starts:
            self._starts[as_id], self._sorted[as_id] = [slot.base_gfn], [slot]
        else:
            if not self._overlaps and self._collides(as_id, slot.base_gfn, slot.npages, None):
                self._overlaps = True
            self._index(slot)
        self._order[id(slot)] = slot
        same = self._ids.get((as_id, slot.id))
        if same is None:
            self._ids[(as_id, slot.id)] = [slot]
        else:
            same.append(slot)

    def remove(self, slot: Memslot) -> None:
        del self._order[id(slot)]
        same = self._ids[(slot.as_id, slot.id)]
        same.remove(slot)
        if not same:
            del self._ids[(slot.as_id, slot.id)]
        self._unindex(slot)

    def move(self, slot: Memslot, base_gfn: int) -> None:
        """``KVM_MR_MOVE``: the slot keeps its id and host range at a new guest address."""
        self._unindex(slot)
        slot.base_gfn = base_gfn
        if not self._overlaps and self._collides(slot.as_id, base_gfn, slot.npages, slot):
            self._overlaps = True
        self._index(slot)

    def _index(self, slot: Memslot) -> None:
        starts = self._starts.setdefault(slot.as_id, [])
        i = bisect_right(starts, slot.base_gfn)
        starts.insert(i, slot.base_gfn)
        self._sorted.setdefault(slot.as_id, []).insert(i, slot)

    def _unindex(self, slot: Memslot) -> None:
        starts, slots = self._starts[slot.as_id], self._sorted[slot.as_id]
        i = bisect_left(starts, slot.base_gfn)
        while slots[i] is not slot:
            i += 1
        del starts[i], slots[i]

    def by_id(self, as_id: int, slot_id: int) -> Memslot | None:
        same = self._ids.get((as_id, slot_id))
        return same[0] if same else None

    def find(self, as_id: int, gfn: int) -> Memslot | None:
        """``__gfn_to_memslot`` in one address space (an INVALID slot is still found)."""
        if self._overlaps:
            return next((s for s in self._order.values()
                         if s.as_id == as_id and s.base_gfn <= gfn < s.base_gfn + s.npages), None)
        starts = self._starts.get(as_id)
        if not starts:
            return None
        i = bisect_right(starts, gfn) - 1
        if i >= 0:
            s = self._sorted[as_id][i]
            if gfn < s.base_gfn + s.npages:
                return s
        return None

    def overlapping(self, as_id: int, base_gfn: int, npages: int, ignore: Memslot | None = None) -> Memslot | None:
        if not self._overlaps and not self._collides(as_id, base_gfn, npages, ignore):
            return None
        return next((s for s in self._order.values() if s is not ignore and s.as_id == as_id
                     and s.base_gfn < base_gfn + npages and base_gfn < s.base_gfn + s.npages), None)

    def _collides(self, as_id: int, base_gfn: int, npages: int, ignore: Memslot | None) -> bool:
        """Does [base_gfn, +npages) overlap an installed slot?  With non-overlapping slots sorted
        by start, the last one starting before the range's end also ends last of those."""
        starts, slots = self._starts.get(as_id) or [], self._sorted.get(as_id) or []
        i = bisect_left(starts, base_gfn + npages) - 1
        while i >= 0 and slots[i] is ignore:
            i -= 1
        return i >= 0 and slots[i].base_gfn + slots[i].npages > base_gfn


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
