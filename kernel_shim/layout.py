"""Where things go: the shim region's GPA and memslot id for one scenario, host VMA addresses.

The shim region (guest code, control block, page tables) must not overlap any GPA the scenario
uses at any time, so it is chosen per scenario.  Host mappings are placed in a private window far
below the kernel's top-down mmap area, so that a hole the scenario punches (``munmap``) stays a
hole and is not reused by the Python allocator during the execution.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmsim.constants import KVM_USER_MEM_SLOTS
from kvmsim.scenario import Scenario, replay

from .guest_code import SHIM_SPAN, USER_VA_LIMIT

HOST_WINDOW = 0x2000_0000_0000
HOST_STRIDE = 1 << 32
SHIM_CANDIDATES = [0xC000_0000, 0x8000_0000, 0x4000_0000] + [n << 32 for n in range(1, 64)]


@dataclass
class Layout:
    shim_gpa: int
    shim_slot: int


def gpa_ranges(sc: Scenario) -> list[tuple[int, int]]:
    """Every [start, end) GPA range a memslot of the scenario may occupy, plus accessed pages."""
    out = [(s.gfn << 12, (s.gfn + s.pages) << 12) for s in sc.world.memslots]
    for _, op, mem in replay(sc):
        a = op.args
        if op.kind == "memslot_create":
            out.append((a["gfn"] << 12, (a["gfn"] + a["pages"]) << 12))
        elif op.kind == "memslot_move":
            moved = mem.slots.get((a["as_id"], a["slot"]))
            n = moved.spec.pages if moved is not None else 1
            out.append((a["gfn"] << 12, (a["gfn"] + n) << 12))
    for g in {op.args["gpa"] & ~0xFFF for op in sc.ops if op.kind == "access"}:
        out.append((g, g + 0x1000))
    return out


def choose(sc: Scenario) -> Layout | None:
    ranges = gpa_ranges(sc)
    used_ids = {s.id for s in sc.world.memslots} | {op.args["slot"] for op in sc.ops if op.kind.startswith("memslot_")}
    slot = next((i for i in range(KVM_USER_MEM_SLOTS - 1, -1, -1) if i not in used_ids), None)
    if slot is None:
        return None
    for base in SHIM_CANDIDATES:
        if base + SHIM_SPAN > USER_VA_LIMIT:
            break
        if all(e <= base or s >= base + SHIM_SPAN for s, e in ranges):
            return Layout(base, slot)
    return None


def host_address(index: int) -> int:
    return HOST_WINDOW + index * HOST_STRIDE
