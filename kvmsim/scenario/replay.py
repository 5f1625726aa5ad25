"""The memslot/VMA life cycle of a scenario, replayed from the scenario alone: which memslots and
VMAs exist, with what flags and backing, when each op runs.

Why one replay: the validator, the oracles' op contexts and the real host's layout and quirks all
ask "what is behind this gfn at op i?", and each answering it by hand let them drift apart.  It
follows the ops that change structure (memslot_create/delete/move/flags/invalidate, munmap,
mprotect) the way KVM's memslot ioctls and the mm do (spec §1.2, §1.3); page contents are left to
the callers that need them.  It never raises: an op on a missing memslot or VMA changes nothing
(the validator rejects such scenarios before anyone else replays them).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from .schema import Op, Scenario, SlotSpec, VmaSpec, WorldSpec

SlotKey = tuple[int, int]          # (address space, memslot id)


@dataclass(slots=True)
class LiveSlot:
    """A memslot as it is at one point: ``spec`` as created (its gfn follows moves)."""
    spec: SlotSpec
    gfn: int
    invalid: bool = False          # memslot_invalidate: a delete or move half done (KVM_MEMSLOT_INVALID)
    log_dirty: bool = False

    @property
    def end(self) -> int:
        return self.gfn + self.spec.pages


@dataclass(slots=True)
class LiveVma:
    """A world VMA as it is at one point: its protection, and whether it is still mapped."""
    spec: VmaSpec
    prot: str
    mapped: bool = True


class SlotTable(dict[SlotKey, LiveSlot]):
    """``(as_id, id) -> LiveSlot`` plus a gfn-ordered index per address space and a count of slots
    per VMA, kept up to date on every change, so finding the slot behind a gfn is O(log n) and a
    replay costs linear time in memslots and ops.  Slots of one address space do not overlap in a
    valid scenario; if they do, lookups scan in creation order."""

    __slots__ = ("_starts", "_sorted", "per_vma", "_overlaps")

    def __init__(self) -> None:
        super().__init__()
        self._starts: dict[int, list[int]] = {}
        self._sorted: dict[int, list[LiveSlot]] = {}
        self.per_vma: dict[str, int] = {}
        self._overlaps = False

    def __setitem__(self, key: SlotKey, s: LiveSlot) -> None:
        if key in self:
            self.pop(key)
        dict.__setitem__(self, key, s)
        self._index(key[0], s)
        vma = s.spec.vma
        self.per_vma[vma] = self.per_vma.get(vma, 0) + 1

    def pop(self, key: SlotKey, default: Any = None) -> Any:  # type: ignore[override]
        s = super().pop(key, None)
        if s is None:
            return default
        self._unindex(key[0], s)
        self.per_vma[s.spec.vma] -= 1
        return s

    def move(self, key: SlotKey, gfn: int) -> None:
        """memslot_move: the slot at its new gfn, no longer invalid."""
        s = self[key]
        self._unindex(key[0], s)
        s.gfn, s.invalid, s.spec = gfn, False, replace(s.spec, gfn=gfn)
        self._index(key[0], s)

    def _index(self, as_id: int, s: LiveSlot) -> None:
        starts = self._starts.get(as_id)
        if starts is None:                    # the first slot of its address space (the common case)
            self._starts[as_id], self._sorted[as_id] = [s.gfn], [s]
            return
        slots = self._sorted[as_id]
        i = bisect_right(starts, s.gfn)
        if (i > 0 and slots[i - 1].end > s.gfn) or (i < len(slots) and slots[i].gfn < s.end):
            self._overlaps = True
        starts.insert(i, s.gfn)
        slots.insert(i, s)

    def _unindex(self, as_id: int, s: LiveSlot) -> None:
        starts, slots = self._starts[as_id], self._sorted[as_id]
        i = bisect_left(starts, s.gfn)
        while slots[i] is not s:
            i += 1
        del starts[i], slots[i]

    def at(self, as_id: int, gfn: int) -> LiveSlot | None:
        """The slot of ``as_id`` containing gfn (the first created, should slots overlap)."""
        if self._overlaps:
            return next((s for (a, _), s in self.items() if a == as_id and s.gfn <= gfn < s.end), None)
        starts = self._starts.get(as_id)
        i = bisect_right(starts, gfn) - 1 if starts else -1
        if i >= 0:
            s = self._sorted[as_id][i]
            if gfn < s.end:
                return s
        return None

    def overlapping(self, as_id: int, gfn: int, pages: int, ignore: LiveSlot | None = None) -> LiveSlot | None:
        """A slot of ``as_id`` other than ``ignore`` that [gfn, gfn + pages) overlaps (the one
        below it first), or None; only its neighbours are looked at, as slots do not overlap."""
        starts, slots = self._starts.get(as_id, []), self._sorted.get(as_id, [])
        i = bisect_right(starts, gfn)
        left = i - 1 if i > 0 and slots[i - 1] is not ignore else i - 2
        if left >= 0 and slots[left].end > gfn:
            return slots[left]
        right = i if i < len(slots) and slots[i] is not ignore else i + 1
        if right < len(slots) and slots[right].gfn < gfn + pages:
            return slots[right]
        return None


@dataclass(slots=True)
class MemoryMap:
    """The memslots and VMAs that exist at one point of a scenario."""
    slots: SlotTable
    vmas: dict[str, LiveVma]

    @classmethod
    def of_world(cls, w: WorldSpec) -> MemoryMap:
        slots = SlotTable()
        for s in w.memslots:
            slots[(s.as_id, s.id)] = LiveSlot(s, s.gfn, False, s.log_dirty)
        return cls(slots, {v.name: LiveVma(v, v.prot) for v in w.vmas})

    def slot_at(self, as_id: int, gfn: int) -> LiveSlot | None:
        return self.slots.at(as_id, gfn)

    def apply(self, op: Op) -> None:
        """The op's effect on which memslots and VMAs exist (none for every other op)."""
        step = _STEPS.get(op.kind)
        if step is not None:
            step(self, op.args)


def _create(m: MemoryMap, a: dict[str, Any]) -> None:
    spec = SlotSpec(a["slot"], a["gfn"], a["pages"], a["vma"], a["offset"], a["readonly"], a["log_dirty"], a["as_id"])
    m.slots[(a["as_id"], a["slot"])] = LiveSlot(spec, a["gfn"], False, a["log_dirty"])


def _delete(m: MemoryMap, a: dict[str, Any]) -> None:
    m.slots.pop((a["as_id"], a["slot"]), None)


def _move(m: MemoryMap, a: dict[str, Any]) -> None:
    if (a["as_id"], a["slot"]) in m.slots:
        m.slots.move((a["as_id"], a["slot"]), a["gfn"])


def _flags(m: MemoryMap, a: dict[str, Any]) -> None:
    s = m.slots.get((a["as_id"], a["slot"]))
    if s is not None:
        s.log_dirty = a["log_dirty"]


def _invalidate(m: MemoryMap, a: dict[str, Any]) -> None:
    s = m.slots.get((a["as_id"], a["slot"]))
    if s is not None:
        s.invalid = True


def _munmap(m: MemoryMap, a: dict[str, Any]) -> None:
    v = m.vmas.get(a["vma"])
    if v is not None:
        v.mapped = False


def _mprotect(m: MemoryMap, a: dict[str, Any]) -> None:
    v = m.vmas.get(a["vma"])
    if v is not None:
        v.prot = a["prot"]


_STEPS: dict[str, Callable[[MemoryMap, dict[str, Any]], None]] = {
    "memslot_create": _create, "memslot_delete": _delete, "memslot_move": _move, "memslot_flags": _flags,
    "memslot_invalidate": _invalidate, "munmap": _munmap, "mprotect": _mprotect,
}


def replay(sc: Scenario) -> Iterator[tuple[int, Op, MemoryMap]]:
    """Each op (index, op) with the memory map it runs against: every earlier op applied, its own
    effect applied once the caller asks for the next.  The map is one object, updated in place."""
    m = MemoryMap.of_world(sc.world)
    for i, op in enumerate(sc.ops):
        yield i, op, m
        m.apply(op)


def memory_at(sc: Scenario, index: int) -> MemoryMap:
    """The memory map op ``index`` runs against."""
    m = MemoryMap.of_world(sc.world)
    for op in sc.ops[:index]:
        m.apply(op)
    return m
