"""The memslot, VMA and interval indexes behind linear-time scenarios answer exactly what the
linear scans they replaced answered (first match in installation order), including after moves,
deletes and (invalid, never validated) overlapping slots."""

from __future__ import annotations

import random

import pytest

from kvmsim import ScenarioError, loads_scenario
from kvmsim.memslot import Memslot, Memslots
from kvmsim.mm import Mm, Vma
from kvmsim.pfndb import PfnDB


def _scan(slots: list[Memslot], as_id: int, gfn: int) -> Memslot | None:
    return next((s for s in slots if s.as_id == as_id and s.base_gfn <= gfn < s.base_gfn + s.npages), None)


@pytest.mark.parametrize("overlapping", [False, True])
def test_memslot_lookup_matches_a_scan(overlapping):
    rng = random.Random(7)
    ms, live = Memslots(), []
    for i in range(200):
        base = rng.randrange(0, 4000) if overlapping else i * 20 + rng.randrange(0, 5)
        s = Memslot(i, rng.randrange(2), base, rng.randrange(1, 15), 0x1000 * i)
        ms.add(s)
        live.append(s)
    for _ in range(60):
        s = rng.choice(live)
        if rng.random() < 0.5:
            ms.remove(s)
            live.remove(s)
        elif overlapping:
            ms.move(s, rng.randrange(0, 4000))
        else:
            free = max(x.base_gfn + x.npages for x in live) + 5
            ms.move(s, free)
    assert ms.slots == live
    for as_id in (0, 1):
        for gfn in range(0, 4200, 3):
            assert ms.find(as_id, gfn) is _scan(live, as_id, gfn)
    for s in live:
        assert ms.by_id(s.as_id, s.id) is s


def test_memslot_added_to_an_emptied_address_space_is_indexed_and_checked():
    ms = Memslots()
    first = Memslot(1, 0, 0x10, 8, 0x1000)
    ms.add(first)
    ms.remove(first)                                  # AS 0 now has an index, and no slot
    a, b = Memslot(2, 0, 0x20, 8, 0x2000), Memslot(3, 0, 0x24, 8, 0x3000)
    ms.add(a)
    assert ms.find(0, 0x27) is a and ms.find(0, 0x10) is None
    ms.add(b)                                         # overlaps a: the fallback scans take over
    assert ms.find(0, 0x25) is a and ms.find(0, 0x2B) is b
    assert ms.overlapping(0, 0x2A, 1) is b and ms.overlapping(0, 0x22, 1) is a
    c = Memslot(4, 1, 0x24, 8, 0x4000)                # first slot of AS 1
    ms.add(c)
    assert ms.find(1, 0x24) is c and ms.by_id(1, 4) is c and ms.slots == [a, b, c]


def test_vma_lookup_and_direct_edits():
    mm = Mm(PfnDB())
    vmas = [mm.add(Vma(f"v{i}", 0x10000 * (i + 1), 0x10000 * (i + 1) + 0x3000, 0)) for i in range(50)]
    assert mm.find(0x10000 * 7 + 0x2FFF) is vmas[6] and mm.find(0x10000 * 7 + 0x3000) is None
    assert mm.by_name("v9") is vmas[9]
    mm.unmap(vmas[9])
    assert mm.by_name("v9") is None and mm.find(0x10000 * 10) is None
    mm.vmas.clear()                                   # edited directly: the index follows
    assert mm.find(0x10000 * 7) is None


def test_overlap_errors_still_name_both_sides():
    with pytest.raises(ScenarioError, match="memslot 2 .*overlaps memslot 1"):
        loads_scenario("world:\n  vmas: [{name: a, pages: 8}, {name: b, pages: 8}]\n  memslots:\n"
                       "    - {id: 1, gfn: 0x10, pages: 8, vma: a}\n"
                       "    - {id: 2, gfn: 0x17, pages: 1, vma: b}\nops: []\n")
    with pytest.raises(ScenarioError, match="vma 'b' overlaps vma 'a'"):
        loads_scenario("world:\n  vmas: [{name: a, pages: 8, start: 0x100000}, {name: b, pages: 1, start: 0x107000}]\n"
                       "ops: []\n")
    with pytest.raises(ScenarioError, match="memslot_move: memslot 2 would overlap memslot 1"):
        loads_scenario("world:\n  vmas: [{name: a, pages: 8}]\n  memslots:\n"
                       "    - {id: 1, gfn: 0x10, pages: 4, vma: a}\n"
                       "    - {id: 2, gfn: 0x20, pages: 4, vma: a, offset: 4}\n"
                       "ops:\n  - memslot_delete: {slot: 1}\n"
                       "  - memslot_create: {slot: 1, gfn: 0x30, pages: 4, vma: a}\n"
                       "  - memslot_move: {slot: 2, gfn: 0x32}\n")
