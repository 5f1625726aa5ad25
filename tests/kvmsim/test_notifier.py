"""The mmu_notifier counters (spec §1.5): the sequence starts at 0 and only moves for
invalidations that overlap a memslot; in_progress and the (hva or gfn) range are the union of
in-flight ranges; the retry predicates; and no gfn→pfn API consults them (I9, K7)."""

from __future__ import annotations

import pytest
from helpers import GENERATIONS, GFN, ORIG, build, host_scenario, last, run, slot, vma

from kvmsim.memslot import Memslot, Memslots
from kvmsim.notifier import MmuNotifier

# ram: 8 pages; memslot 0 covers pages 0..3 only (gfn GFN..GFN+3)
WORLD = {"vmas": [vma(pages=8, page_states={0: "present_rw"})], "memslots": [slot(pages=4)]}


def notifier_records(ops, **world):
    t = run("sim:g3", build(ops, **{**WORLD, **world}))
    return t.records


def test_seq_starts_at_zero() -> None:
    assert MmuNotifier().seq == 0 and MmuNotifier().in_progress == 0
    recs = notifier_records([{"invalidate_begin": {"vma": "ram", "page": 0}}])
    assert recs[0].api == {"counted": True, "seq": 0, "in_progress": 1}


def test_overlapping_invalidation_moves_seq_at_end() -> None:
    recs = notifier_records([{"invalidate_begin": {"vma": "ram", "page": 1}}, {"invalidate_end": None}])
    assert recs[0].api == {"counted": True, "seq": 0, "in_progress": 1}
    assert recs[1].api == {"seq": 1, "in_progress": 0}


def test_non_overlapping_invalidation_does_not_count() -> None:
    recs = notifier_records([{"invalidate_begin": {"vma": "ram", "page": 6, "count": 2}},
                             {"invalidate_end": None}])
    assert recs[0].api == {"counted": False, "seq": 0, "in_progress": 0}
    assert recs[1].api == {"seq": 0, "in_progress": 0}


@pytest.mark.parametrize("op,moves", [
    pytest.param({"madvise": {"vma": "ram", "page": 0}}, 1, id="madvise-in-slot"),
    pytest.param({"madvise": {"vma": "ram", "page": 5, "count": 3}}, 0, id="madvise-outside-slot"),
    pytest.param({"mprotect": {"vma": "ram", "prot": "r"}}, 1, id="mprotect"),
    pytest.param({"mprotect": {"vma": "ram", "prot": "rw"}}, 0, id="mprotect-same-prot"),   # mprotect_fixup
    pytest.param({"page_state": {"vma": "ram", "page": 2, "state": "needs_io"}}, 1, id="page_state-in-slot"),
    pytest.param({"page_state": {"vma": "ram", "page": 7, "state": "needs_io"}}, 0, id="page_state-outside"),
    pytest.param({"munmap": {"vma": "ram"}}, 1, id="munmap"),
    pytest.param({"memslot_invalidate": {"slot": 0}}, 0, id="memslot-invalidate"),
    pytest.param({"memslot_flags": {"slot": 0, "log_dirty": True}}, 0, id="memslot-flags"),
    pytest.param({"memslot_delete": {"slot": 0}}, 0, id="memslot-delete"),
    pytest.param({"signal": {"kind": "pending"}}, 0, id="signal"),
])
def test_which_host_events_move_seq(op, moves) -> None:
    """Only memslot-overlapping mmu_notifier invalidations move the sequence (§1.5)."""
    recs = notifier_records([op, {"invalidate_begin": {"vma": "ram", "page": 0}}]) \
        if "munmap" not in op and "memslot_delete" not in op else None
    if recs is not None:
        assert recs[-1].api["seq"] == moves
        return
    # after munmap/memslot_delete no later op can name the vma/slot: observe through a second slot
    w = {"vmas": [vma(pages=8, page_states={0: "present_rw"}), vma(name="other", pages=2)],
         "memslots": [slot(pages=4), slot(id=1, gfn=0x800, pages=2, vma="other")]}
    t = run("sim:g3", build([op, {"invalidate_begin": {"vma": "other", "page": 0}}], **w))
    assert t.records[-1].api["seq"] == moves


def test_seq_wraps_on_32_bit() -> None:
    recs = notifier_records([{"madvise": {"vma": "ram", "page": 0}},
                             {"invalidate_begin": {"vma": "ram", "page": 0}}],
                            notifier={"seq": 0xFFFFFFFF, "seq_bits": 32})
    assert recs[-1].api["seq"] == 0


def test_nested_invalidations_union_and_count() -> None:
    recs = notifier_records([{"invalidate_begin": {"vma": "ram", "page": 0}},
                             {"invalidate_begin": {"vma": "ram", "page": 3}},
                             {"invalidate_end": None}, {"invalidate_end": None}])
    assert [r.api["in_progress"] for r in recs] == [1, 2, 1, 0]
    assert [r.api["seq"] for r in recs] == [0, 0, 1, 2]


# --- predicates, on the counters directly -------------------------------------------------------------

def _slots() -> Memslots:
    s = Memslots()
    s.add(Memslot(0, 0, 0x100, 4, 0x10000))
    s.add(Memslot(1, 0, 0x200, 4, 0x20000))
    return s


def test_retry_predicates() -> None:
    n = MmuNotifier()
    slots = _slots()
    assert not n.retry(0) and not n.retry_hva(0, 0x10000) and not n.retry_gfn(0, 0x100)
    assert n.begin(slots, 0x10000, 0x11000)                 # gfn 0x100
    assert n.begin(slots, 0x22000, 0x23000)                 # gfn 0x202: union is [0x100, 0x203)
    # in progress: the unconditional predicate always retries
    assert n.retry(0)
    # hva range (≤ 6.7): union of [0x10000,0x11000) and [0x22000,0x23000) = [0x10000, 0x23000)
    assert n.retry_hva(0, 0x10000) and n.retry_hva(0, 0x15000) and n.retry_hva(0, 0x22fff)
    assert not n.retry_hva(0, 0x23000) and not n.retry_hva(0, 0xf000)
    # gfn range (≥ 6.8)
    assert n.retry_gfn(0, 0x100) and n.retry_gfn(0, 0x150) and n.retry_gfn(0, 0x202)
    assert not n.retry_gfn(0, 0x203) and not n.retry_gfn(0, 0xff)
    n.end()
    n.end()
    assert n.in_progress == 0 and n.seq == 2
    # seq changed: every predicate retries for the old snapshot, none for the new one
    assert n.retry(0) and n.retry_hva(0, 0x90000) and n.retry_gfn(0, 0x900)
    assert not n.retry(2) and not n.retry_hva(2, 0x10000) and not n.retry_gfn(2, 0x100)


def test_range_restarts_after_all_ends() -> None:
    n = MmuNotifier()
    slots = _slots()
    n.begin(slots, 0x10000, 0x11000)
    n.end()
    n.begin(slots, 0x22000, 0x23000)
    assert not n.retry_gfn(n.seq, 0x100) and n.retry_gfn(n.seq, 0x202)
    assert not n.retry_hva(n.seq, 0x10000)


def test_begin_outside_memslots_changes_nothing() -> None:
    n = MmuNotifier()
    assert not n.begin(_slots(), 0x50000, 0x60000)
    assert (n.seq, n.in_progress) == (0, 0)


# --- no API consults the counters (I9, K7); only callers do ---------------------------------------------

@pytest.mark.parametrize("backend", GENERATIONS)
def test_lookup_ignores_invalidation_in_progress(backend) -> None:
    base = [{"lookup": {"gfn": GFN, "write": True}}]
    quiet = last(run(backend, host_scenario("present_rw", base))).api
    busy = last(run(backend, host_scenario("present_rw", [{"invalidate_begin": {"vma": "ram", "page": 1}}] + base,
                                           notifier={"seq": 7}))).api
    for k in ("result", "frame", "writable", "held", "leaked"):
        assert quiet[k] == busy[k], (backend, k)


@pytest.mark.parametrize("backend,ret,calls", [
    ("sim:g1", "RETRY", 1),      # GUP done, stale under mmu_lock (hva range)
    ("sim:g2", "RETRY", 1),
    ("sim:g2s", "RETRY", 1),
    ("sim:g2f", "RETRY", 1),     # D20: "same as G1" (v11's base predates the 6.8 pre-check)
    ("sim:g3", "RETRY", 0),      # v6.8+: lock-free pre-check before GUP
])
def test_x86_fault_retries_when_invalidation_covers_the_page(backend, ret, calls) -> None:
    sc = host_scenario("present_rw", [{"invalidate_begin": {"vma": "ram", "page": 0}},
                                      {"x86_fault": {"gfn": GFN, "write": True}}])
    api = last(run(backend, sc)).api
    assert api["ret"] == ret and len(api["calls"]) == calls and api["leaked"] == {}


@pytest.mark.parametrize("backend", GENERATIONS)
def test_x86_fault_ignores_invalidation_elsewhere(backend) -> None:
    sc = host_scenario("present_rw", [{"invalidate_begin": {"vma": "ram", "page": 3}},
                                      {"x86_fault": {"gfn": GFN, "write": True}}], notifier={"seq": 1})
    api = last(run(backend, sc)).api
    assert api["ret"] == "FIXED" and api["frame"] == ORIG


@pytest.mark.parametrize("backend", GENERATIONS)
def test_x86_fault_retries_when_seq_moves_during_gup(backend) -> None:
    sc = host_scenario("present_rw", [{"x86_fault": {"gfn": GFN, "write": True, "race_invalidate": True}}],
                       notifier={"seq": 1})
    t = run(backend, sc)
    api = last(t).api
    assert api["ret"] == "RETRY" and api["spte"] is None and api["leaked"] == {}
    assert t.meta["refs_held_at_end"] == {}
