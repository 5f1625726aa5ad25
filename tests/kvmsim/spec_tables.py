"""Spec §2.6 (G1 outcome decision table) and the §2.2/§2.5 memslot invariants, as data.

Each row is one host state × one request (the table's columns W = ``write``, P = writable
pointer = ``try_writable``, A = async pointer = ``nowait``, I = ``interruptible``) and the
observations the row names.  G1 runs every row; G2's legacy shims run them unchanged and G2's
noref entry points run them with the §3.4 deltas (see test_g2.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from helpers import COW, FRAME, ORIG, ZERO

UNSET = object()


@dataclass
class Row:
    id: str
    state: str
    args: dict[str, Any]
    result: str
    frame: Any = UNSET
    writable: Any = UNSET          # expected `writable` (None = untouched / no pointer)
    held: dict[str, int] = field(default_factory=dict)
    async_: Any = UNSET
    hva: Any = UNSET
    ro_slot: bool = False
    gup: bool = True               # the pfn came from GUP (G2: *page is the frame)
    early: bool = False            # RO_FAULT/NOSLOT early return before hva_to_pfn (G2: *page unwritten)
    remapped: bool = False
    accessed: Any = UNSET
    pre: list[Any] = field(default_factory=list)

    def param(self):
        import pytest
        return pytest.param(self, id=self.id)


def _r(id: str, state: str, args: dict[str, Any], result: str, **kw: Any) -> Row:
    args = {"try_writable": True, **args}
    return Row(id, state, args, result, **kw)


ERR = "ERR_FAULT"
W, R = {"write": True}, {"write": False}

G1_TABLE: list[Row] = [
    # normal VMA, PRESENT_RW: fast path (needs W or P)
    _r("2.6:present_rw:W", "present_rw", W, "pfn", frame=ORIG, writable=True, held={ORIG: 1}),
    _r("2.6:present_rw:!W,P", "present_rw", R, "pfn", frame=ORIG, writable=True, held={ORIG: 1}),
    # PRESENT_RO, W, VM_WRITE: slow path breaks COW
    _r("2.6:present_ro:W:cow", "present_ro", W, "pfn", frame=COW, writable=True, held={COW: 1}),
    # PRESENT_RO, !W: upgrade fails
    _r("2.6:present_ro:!W", "present_ro", R, "pfn", frame=ORIG, writable=False, held={ORIG: 1}),
    # UNPOPULATED_ANON, !W: zero page, +1, release skips accessed
    _r("2.6:unpopulated:!W:zero", "unpopulated", R, "pfn", frame=ZERO, writable=False, held={ZERO: 1},
       accessed=[]),
    # RESIDENT_UNMAPPED: minor fault, even with A
    _r("2.6:resident:W", "resident", W, "pfn", frame=ORIG, writable=True, held={ORIG: 1}),
    _r("2.6:resident:W,A:minor", "resident", {**W, "nowait": True}, "pfn", frame=ORIG, writable=True,
       held={ORIG: 1}, async_=False),
    _r("2.6:resident:!W,A:minor:upgrade-fails", "resident", {**R, "nowait": True}, "pfn", frame=ORIG,
       writable=False, held={ORIG: 1}, async_=False),
    # ... and "true if upgrade works": a MAP_SHARED rw page is mapped writable on a read fault
    _r("2.6:resident:!W,P:shared:upgrade-works", "resident_shared", R, "pfn", frame=ORIG, writable=True,
       held={ORIG: 1}),
    # NEEDS_IO, A: FAULT, writable = W, async iff vma_is_valid
    _r("2.6:needs_io:A:!W", "needs_io", {**R, "nowait": True}, ERR, writable=False, async_=True, gup=False),
    _r("2.6:needs_io:A:W", "needs_io", {**W, "nowait": True}, ERR, writable=True, async_=True, gup=False),
    _r("2.6:needs_io:A:W:vma-invalid", "ro_vma_needs_io", {**W, "nowait": True}, ERR, writable=True,
       async_=False, gup=False),
    # NEEDS_IO, !A, I, non-fatal signal: SIGPENDING
    _r("2.6:needs_io:I:signal:!W", "needs_io_signal", {**R, "interruptible": True}, "ERR_SIGPENDING",
       writable=False, gup=False),
    _r("2.6:needs_io:I:signal:W", "needs_io_signal", {**W, "interruptible": True}, "ERR_SIGPENDING",
       writable=True, gup=False),
    # NEEDS_IO, !A, no signal (or not interruptible): sleeps for I/O, page
    _r("2.6:needs_io:sync:W", "needs_io", W, "pfn", frame=ORIG, writable=True, held={ORIG: 1}),
    _r("2.6:needs_io:sync:I", "needs_io", {**W, "interruptible": True}, "pfn", frame=ORIG, writable=True,
       held={ORIG: 1}),
    _r("2.6:needs_io:sync:signal-not-I", "needs_io_signal", W, "pfn", frame=ORIG, writable=True,
       held={ORIG: 1}),
    # any, fatal signal while GUP must wait (I8: even without I)
    _r("2.6:fatal:needs_io:!W", "needs_io_fatal", R, "ERR_SIGPENDING", writable=False, gup=False),
    _r("2.6:fatal:needs_io:W", "needs_io_fatal", W, "ERR_SIGPENDING", writable=True, gup=False),
    _r("2.6:fatal:unpopulated:W", "unpopulated_fatal", W, "ERR_SIGPENDING", writable=True, gup=False),
    # HWPOISON
    _r("2.6:hwpoison:!W", "hwpoison", R, "ERR_HWPOISON", writable=False, gup=False),
    _r("2.6:hwpoison:W", "hwpoison", W, "ERR_HWPOISON", writable=True, gup=False),
    _r("2.6:hwpoison:W,A", "hwpoison", {**W, "nowait": True}, "ERR_HWPOISON", writable=True, async_=False,
       gup=False),
    # no VMA: FAULT, async never set
    _r("2.6:no_vma:A:!W", "no_vma", {**R, "nowait": True}, ERR, writable=False, async_=False, gup=False),
    _r("2.6:no_vma:A:W", "no_vma", {**W, "nowait": True}, ERR, writable=True, async_=False, gup=False),
    # W and !VM_WRITE, or !VM_READ: FAULT, async never set
    _r("2.6:vma-no-write:W,A", "ro_vma", {**W, "nowait": True}, ERR, writable=True, async_=False, gup=False),
    _r("2.6:vma-no-read:!W,A", "none_vma", {**R, "nowait": True}, ERR, writable=False, async_=False, gup=False),
    # remapped, PTE present, W and PTE RO: RO_FAULT
    _r("2.6:remap:W:pte-ro", "remap:none:ro", W, "ERR_RO_FAULT", writable=True, gup=False, remapped=True),
    # remapped, PTE present, no struct page / reserved: PTE pfn, pte.writable, no ref
    _r("2.6:remap:no-struct-page", "remap:none", R, "pfn", frame=FRAME, writable=True, gup=False, remapped=True),
    _r("2.6:remap:no-struct-page:pte-ro", "remap:none:ro", R, "pfn", frame=FRAME, writable=False, gup=False,
       remapped=True),
    _r("2.6:remap:reserved", "remap:reserved", R, "pfn", frame=FRAME, writable=True, gup=False, remapped=True),
    _r("2.6:remap:reserved:W", "remap:reserved", W, "pfn", frame=FRAME, writable=True, gup=False, remapped=True),
    # remapped, refcounted struct page: +1 (ZONE_DEVICE counts as refcounted, §2.4)
    _r("2.6:remap:refcounted", "remap:normal", R, "pfn", frame=FRAME, writable=True, held={FRAME: 1},
       gup=False, remapped=True),
    _r("2.6:remap:refcounted:pte-ro", "remap:normal:ro", R, "pfn", frame=FRAME, writable=False,
       held={FRAME: 1}, gup=False, remapped=True),
    _r("2.6:remap:zone_device", "remap:zone_device", W, "pfn", frame=FRAME, writable=True, held={FRAME: 1},
       gup=False, remapped=True),
    # remapped, struct page refcount 0: FAULT, writable = pte.writable (stale)
    _r("2.6:remap:refcount0", "remap:refcount0", R, ERR, writable=True, gup=False, remapped=True),
    # remapped, PTE absent, handler populates: as present, synchronous even with A
    _r("2.6:remap:absent:populates:A", "remap:normal:absent-populates", {**R, "nowait": True}, "pfn",
       frame=FRAME, writable=True, held={FRAME: 1}, async_=False, gup=False, remapped=True),
    _r("2.6:remap:absent:populates:no-struct-page", "remap:none:absent-populates", W, "pfn", frame=FRAME,
       writable=True, gup=False, remapped=True),
    # remapped, handler drops mmap lock: retry lookup, then as present
    _r("2.6:remap:absent:drops_lock", "remap:normal:absent-drops_lock", {**R, "nowait": True}, "pfn",
       frame=FRAME, writable=True, held={FRAME: 1}, async_=False, gup=False, remapped=True),
    # remapped, handler fails: FAULT, writable = W
    _r("2.6:remap:absent:fails:!W", "remap:normal:absent-fails", R, ERR, writable=False, gup=False,
       remapped=True),
    _r("2.6:remap:absent:fails:W", "remap:normal:absent-fails", W, ERR, writable=True, gup=False,
       remapped=True),
    # (atomic) anything not fast-path-able: FAULT, writable untouched
    _r("2.6:atomic:present_ro:!W", "present_ro", {**R, "atomic": True}, ERR, writable=None, gup=False),
    _r("2.6:atomic:unpopulated:W", "unpopulated", {**W, "atomic": True}, ERR, writable=None, gup=False),
    _r("2.6:atomic:needs_io:W", "needs_io", {**W, "atomic": True}, ERR, writable=None, gup=False),
    _r("2.6:atomic:remap:W", "remap:none", {**W, "atomic": True}, ERR, writable=None, gup=False),
    _r("2.6:atomic:present_rw:W", "present_rw", {**W, "atomic": True}, "pfn", frame=ORIG, writable=True,
       held={ORIG: 1}),
]

# §2.2 memslot handling and §2.5 invariants I1-I3, I7 (unchanged in G2, §3.4).
MEMSLOT_ROWS: list[Row] = [
    _r("2.5-I2:ro-slot:W", "present_rw", W, "ERR_RO_FAULT", writable=False, hva="HVA_ERR_RO_BAD", ro_slot=True,
       gup=False, early=True),
    _r("2.5-I1:ro-slot:!W,P", "present_rw", R, "pfn", frame=ORIG, writable=False, held={ORIG: 1}, ro_slot=True),
    _r("2.5-I1:ro-slot:!W,P:remap-rw-pte", "remap:none", R, "pfn", frame=FRAME, writable=False, ro_slot=True,
       gup=False, remapped=True),
    _r("2.5-I3:no-slot", "present_rw", {**W, "gfn": 0x5000}, "NOSLOT", writable=False, hva="HVA_ERR_BAD",
       gup=False, early=True),
    _r("2.5-I3:invalid-slot", "present_rw", W, "NOSLOT", writable=False, hva="HVA_ERR_BAD", gup=False,
       early=True, pre=[{"memslot_invalidate": {"slot": 0}}]),
]
