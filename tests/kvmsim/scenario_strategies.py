"""Hypothesis strategies for small random scenarios: two VMAs (a normal one, possibly
VM_MIXEDMAP with a PG_reserved page, and a VM_PFNMAP one), two memslots, random world flags,
and a random op stream of lookups, faults, guest accesses, maps and host events.  Most
``vcpu_map``s are unmapped at the end; after the run KVM should hold exactly what the still-open
maps hold (spec §2.5 C1, §3.4, §5.1, §6.6 K1/K2), except for the leaks the spec names (D19)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

A_GFN, B_GFN, NO_SLOT_GFN = 0x100, 0x200, 0x300
GFNS = [A_GFN, A_GFN + 1, A_GFN + 2, A_GFN + 3, B_GFN, B_GFN + 1, NO_SLOT_GFN]
STATES = ["unpopulated", "present_rw", "present_ro", "resident", "needs_io", "hwpoison"]
FRAME_KINDS = ["none", "reserved", "refcount0", "normal", "zone_device"]
B = st.booleans()


@st.composite
def worlds(draw) -> dict[str, Any]:
    rsv = draw(B)
    a: dict[str, Any] = {"name": "a", "pages": 4, "prot": draw(st.sampled_from(["rw", "rw", "r", "none"])),
                         "shared": draw(B), "remap": draw(st.sampled_from(["none", "mixedmap"])),
                         "state": draw(st.sampled_from(STATES))}
    ps = {i: draw(st.sampled_from(STATES)) for i in draw(st.sets(st.integers(0, 3), max_size=3))}
    if rsv:
        ps[3] = {"state": draw(st.sampled_from(["present_rw", "present_ro"])), "page": "rsv"}
    if ps:
        a["page_states"] = ps
    b: dict[str, Any] = {"name": "b", "pages": 2, "remap": "pfnmap", "prot": draw(st.sampled_from(["rw", "r"])),
                         "frames": draw(st.sampled_from(FRAME_KINDS))}
    ptes = {}
    for i in draw(st.sets(st.integers(0, 1), max_size=2)):
        ptes[i] = {"present": draw(B), "writable": draw(B),
                   "handler": draw(st.sampled_from(["populates", "drops_lock", "fails"]))}
    if ptes:
        b["ptes"] = ptes
    w: dict[str, Any] = {
        "vmas": [a, b],
        "memslots": [{"id": 0, "gfn": A_GFN, "pages": 4, "vma": "a", "readonly": draw(B), "log_dirty": draw(B)},
                     {"id": 1, "gfn": B_GFN, "pages": 2, "vma": "b", "readonly": draw(B)}],
        "signal": draw(st.sampled_from(["none", "none", "pending", "fatal"])),
        "mmap_lock_contended": draw(B),
        "allow_unsafe_mappings": draw(B),
        "vcpu": {"async_pf": draw(B)},
        "notifier": {"seq": draw(st.sampled_from([0, 0, 5]))},
    }
    if rsv:
        w["pages"] = [{"name": "rsv", "kind": "reserved"}]
    return w


def _lookup(draw) -> dict[str, Any]:
    atomic = draw(B)
    return {"lookup": {"gfn": draw(st.sampled_from(GFNS)), "write": draw(B), "nowait": (not atomic) and draw(B),
                       "interruptible": draw(B), "atomic": atomic, "want_ref": draw(B), "guarded": draw(B),
                       "pin": draw(B), "try_writable": draw(B), "vcpu": draw(B)}}


class _Stream:
    """The ops drawn so far, and what later ops may close: vcpu_map handles, open invalidations."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.handles: list[str] = []
        self.open_ranges = 0


def _vcpu_map(draw, gfn: int, s: _Stream) -> dict[str, Any] | None:
    h = f"m{len(s.ops)}"
    s.handles.append(h)
    return {"vcpu_map": {"gfn": gfn, "writable": draw(B), "handle": h}}


def _vcpu_unmap(draw, gfn: int, s: _Stream) -> dict[str, Any] | None:
    if not s.handles:
        return None
    h = s.handles.pop(draw(st.integers(0, len(s.handles) - 1)))
    return {"vcpu_unmap": {"handle": h, "dirty": draw(B)}}


def _invalidate_begin(draw, gfn: int, s: _Stream) -> dict[str, Any] | None:
    s.open_ranges += 1
    return {"invalidate_begin": {"vma": draw(st.sampled_from(["a", "b"])), "page": 0}}


def _invalidate_end(draw, gfn: int, s: _Stream) -> dict[str, Any] | None:
    if not s.open_ranges:
        return None
    s.open_ranges -= 1
    return {"invalidate_end": None}


# op kind -> (draw, gfn, stream) -> the op, or None when nothing can be drawn for it now
_OPS = {
    "lookup": lambda draw, gfn, s: _lookup(draw),
    "gfn_to_page": lambda draw, gfn, s: {"gfn_to_page": {"gfn": gfn, "write": draw(B)}},
    "x86_fault": lambda draw, gfn, s: {"x86_fault": {"gfn": gfn, "write": draw(B), "prefetch": draw(B),
                                                     "race_invalidate": draw(B)}},
    "access": lambda draw, gfn, s: {"access": {"gpa": gfn << 12 | 0x10, "write": draw(B), "value": 7}},
    "vcpu_map": _vcpu_map,
    "vcpu_unmap": _vcpu_unmap,
    "madvise": lambda draw, gfn, s: {"madvise": {"vma": draw(st.sampled_from(["a", "b"])), "page": 0, "count": 4}},
    "mprotect": lambda draw, gfn, s: {"mprotect": {"vma": draw(st.sampled_from(["a", "b"])),
                                                   "prot": draw(st.sampled_from(["none", "r", "rw"]))}},
    "page_state": lambda draw, gfn, s: {"page_state": {"vma": "a", "page": draw(st.integers(0, 3)),
                                                       "state": draw(st.sampled_from(STATES))}},
    "pte": lambda draw, gfn, s: {"pte": {"vma": "b", "page": draw(st.integers(0, 1)), "present": draw(B),
                                         "writable": draw(B),
                                         "handler": draw(st.sampled_from(["populates", "drops_lock", "fails"]))}},
    "invalidate_begin": _invalidate_begin,
    "invalidate_end": _invalidate_end,
    "signal": lambda draw, gfn, s: {"signal": {"kind": draw(st.sampled_from(["none", "pending", "fatal"]))}},
    "mmap_lock": lambda draw, gfn, s: {"mmap_lock": {"contended": draw(B)}},
    "memslot_invalidate": lambda draw, gfn, s: {"memslot_invalidate": {"slot": draw(st.integers(0, 1))}},
}
# lookups and faults weigh more: they are what the decision tables are about
_KINDS = ["lookup", "lookup", "lookup", "gfn_to_page", "x86_fault", "x86_fault", "access", "vcpu_map", "vcpu_unmap",
          "madvise", "mprotect", "page_state", "pte", "invalidate_begin", "invalidate_end", "signal", "mmap_lock",
          "memslot_invalidate"]


@st.composite
def op_streams(draw, max_ops: int = 10) -> list[dict[str, Any]]:
    s = _Stream()
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(_KINDS))
        gfn = draw(st.sampled_from(GFNS))
        op = _OPS[kind](draw, gfn, s)
        if op is not None:
            s.ops.append(op)
    keep_open = draw(st.integers(0, len(s.handles)))          # maps still open when the scenario ends
    for h in s.handles[keep_open:]:
        s.ops.append({"vcpu_unmap": {"handle": h, "dirty": False}})
    return s.ops


@st.composite
def scenarios(draw, max_ops: int = 10) -> dict[str, Any]:
    return {"version": 1, "world": draw(worlds()), "ops": draw(op_streams(max_ops))}
