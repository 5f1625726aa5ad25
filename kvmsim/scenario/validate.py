"""Structural validation: a scenario is rejected, with one line naming FILE:LINE, when it names
unknown pages or VMAs, places memslots outside their VMA or over each other, runs ops on memslots
or VMAs that do not exist then, leaves notifier ends unbalanced or puts frames in the wrong kind
of VMA.  The ops are checked against the memslot/VMA life cycle ``replay`` gives.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import Any

from ..constants import KVM_USER_MEM_SLOTS, PAGE_SHIFT
from ..yamlsrc import ScenarioError
from .replay import LiveSlot, MemoryMap, SlotTable, replay
from .schema import MAX_GFN, MAX_SLOT_PAGES, Op, PageSpec, Scenario, VmaSpec
from .vocabulary import NO_STRUCT_PAGE, REFCOUNT0

REMAPPED = ("pfnmap", "io")              # VM_IO/VM_PFNMAP: PTEs, not page states


class _Intervals:
    """Disjoint half-open ranges kept sorted by start: adding one checks only its neighbours, so
    validating n VMAs costs O(n log n) instead of O(n^2)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.items: list[tuple[int, int, Any]] = []          # (start, end, name)

    def add(self, start: int, end: int, name: Any) -> Any:
        """Insert [start, end); returns the name of a range it overlaps (and inserts nothing)."""
        i = bisect_right(self.starts, start)
        if i > 0 and self.items[i - 1][1] > start:
            return self.items[i - 1][2]
        if i < len(self.items) and self.items[i][0] < end:
            return self.items[i][2]
        self.starts.insert(i, start)
        self.items.insert(i, (start, end, name))
        return None

    def remove(self, start: int, name: Any) -> None:
        i = bisect_left(self.starts, start)
        while self.items[i][2] != name:
            i += 1
        del self.starts[i], self.items[i]


def validate(sc: Scenario) -> None:
    """Reject an inconsistent scenario with a ScenarioError naming the offending line."""
    v = _Validator(sc)
    v.world()
    for _, op, mem in replay(sc):
        v.op(op, mem)


def valid_ops(sc: Scenario, world_valid: bool = False, memory: MemoryMap | None = None) -> list[Op]:
    """The ops ``validate`` would accept once every rejected op is dropped, first rejected first:
    each op is checked against the world and the ops kept before it, in one pass.  Equal to
    validating, dropping the op an error names and validating again until nothing is rejected,
    without replaying the kept prefix each time.  A world error raises (ScenarioError).
    ``world_valid``: the caller has seen a world with equal pages, VMAs and memslots pass (the
    world's checks read nothing else of it), so they are skipped.  ``memory``: the memory map
    ``MemoryMap.of_world`` gives for a world with equal pages, VMAs and memslots, to be shared: it
    is only read, and the first kept op that changes which memslots or VMAs exist gets a map of
    its own.  Why: most decoded scenarios keep no such op, and building the map was a fifth of
    checking their ops."""
    v = _Validator(sc)
    if world_valid:
        v.vmas = {x.name: x for x in sc.world.vmas}         # what the op checks read of the world
    else:
        v.world()
    shared = memory is not None
    mem = memory if memory is not None else MemoryMap.of_world(sc.world)
    kept: list[Op] = []
    for op in sc.ops:
        saved = v.open_ranges, v.handles, v.nmaps
        try:
            v.op(op, mem)
        except ScenarioError:
            v.open_ranges, v.handles, v.nmaps = saved        # as if the op had never been there
            continue
        if op.kind in CHANGES_MEMORY:             # (``apply`` changes nothing for the other ops)
            if shared:
                mem, shared = MemoryMap.of_world(sc.world), False     # the ops kept so far changed nothing
            mem.apply(op)
        kept.append(op)
    return kept


# The ops whose ``MemoryMap.apply`` changes the map (every other op leaves it as it is).
CHANGES_MEMORY = frozenset({"memslot_create", "memslot_delete", "memslot_move", "memslot_flags", "memslot_invalidate",
                            "munmap", "mprotect"})


class _Validator:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.kinds: dict[str, str] = {}
        self.vmas: dict[str, VmaSpec] = {}
        self.open_ranges = 0
        self.handles: frozenset[str] = frozenset()     # replaced on change: valid_ops saves it by reference
        self.nmaps = 0

    def err(self, msg: str, line: int = 0) -> ScenarioError:
        return ScenarioError(msg, line, self.sc.file)

    # --- the world ----------------------------------------------------------------------------
    def world(self) -> None:
        w = self.sc.world
        self.pages(w.pages)
        spans = _Intervals()
        for v in w.vmas:
            self.vma(v, spans)
        slots = SlotTable()
        for s in w.memslots:
            self.new_slot(slots, s.as_id, s.id, s.gfn, s.pages, s.vma, s.offset, s.line)
            slots[(s.as_id, s.id)] = LiveSlot(s, s.gfn)

    def pages(self, pages: list[PageSpec]) -> None:
        pfns = set()
        for p in pages:
            if p.name in self.kinds or p.name == "zero":
                raise self.err(f"duplicate page name {p.name!r}", p.line)
            self.kinds[p.name] = p.kind
            if p.pfn is not None:
                if p.pfn in pfns:
                    raise self.err(f"duplicate pfn {p.pfn:#x} (page {p.name!r})", p.line)
                pfns.add(p.pfn)

    def vma(self, v: VmaSpec, spans: _Intervals) -> None:
        if v.name in self.vmas:
            raise self.err(f"duplicate vma name {v.name!r}", v.line)
        self.vmas[v.name] = v
        start = self.sc.vma_start(v)
        other = spans.add(start, start + (v.pages << PAGE_SHIFT), v.name)
        if other is not None:
            raise self.err(f"vma {v.name!r} overlaps vma {other!r}", v.line)
        if v.host_level == "2m" and start & ((1 << 21) - 1):
            raise self.err(f"vma {v.name!r} has host_level 2m but is not 2 MiB aligned", v.line)
        remapped = v.remap in REMAPPED
        if remapped and v.page_states:
            raise self.err(f"vma {v.name!r} is remapped (VM_IO/VM_PFNMAP): use 'ptes', not 'page_states'", v.line)
        if not remapped and v.ptes:
            raise self.err(f"vma {v.name!r} is not remapped: use 'page_states', not 'ptes'", v.line)
        self.frames(v)

    def frames(self, v: VmaSpec) -> None:
        """Pages a VMA names exist, and frames without a refcounted struct page are remapped."""
        for i, (_, pname) in v.page_states.items():     # errors name the entry's own line
            if pname is None:
                continue
            if pname not in self.kinds:
                raise self.err(f"vma {v.name!r} names unknown page {pname!r}", v.entry_lines.get(i, v.line))
            if self.kinds[pname] in (REFCOUNT0, NO_STRUCT_PAGE):
                raise self.err(f"page {pname!r} ({self.kinds[pname]}) can only be mapped by a VM_IO/VM_PFNMAP vma",
                               v.entry_lines.get(i, v.line))
        for i, pte in v.ptes.items():
            if pte.page is not None and pte.page not in self.kinds:
                raise self.err(f"vma {v.name!r} names unknown page {pte.page!r}", v.entry_lines.get(i, v.line))

    def new_slot(self, slots: SlotTable, as_id: int, sid: int, gfn: int, pages: int, vma: str, offset: int,
                 line: int) -> None:
        if vma not in self.vmas:
            raise self.err(f"memslot {sid} names unknown vma {vma!r}", line)
        if offset + pages > self.vmas[vma].pages:
            raise self.err(f"memslot {sid} (offset {offset}, {pages} pages) extends past vma {vma!r} "
                           f"({self.vmas[vma].pages} pages)", line)
        if (as_id, sid) in slots:
            raise self.err(f"memslot {sid} already exists in address space {as_id}", line)
        other = slots.overlapping(as_id, gfn, pages)
        if other is not None:
            raise self.err(f"memslot {sid} (gfns {gfn:#x}+{pages}) overlaps memslot {other.spec.id}", line)

    # --- the ops ------------------------------------------------------------------------------
    def op(self, op: Op, mem: MemoryMap) -> None:
        a = op.args
        if "vma" in a and op.kind != "memslot_create":
            self.vma_op(op, mem)
        check = _OP_CHECKS.get(op.kind)
        if check is not None:
            check(self, op, mem)
        if "gfn" in a and a["gfn"] > MAX_GFN:
            raise self.err(f"{op.kind}.gfn {a['gfn']:#x} is out of range", op.line)
        if op.kind == "access":
            self.access(op)

    def vma_op(self, op: Op, mem: MemoryMap) -> None:
        a, line = op.args, op.line
        live = mem.vmas.get(a["vma"])
        if live is None or not live.mapped:
            raise self.err(f"op {op.kind} names unknown or unmapped vma {a['vma']!r}", line)
        v = live.spec
        if "page" in a and not 0 <= a["page"] < v.pages:
            raise self.err(f"page {a['page']} is not within vma {v.name!r} (0..{v.pages - 1})", line)
        if op.kind == "pte" and v.remap not in REMAPPED:
            raise self.err(f"op pte needs a VM_IO/VM_PFNMAP vma; {v.name!r} is not remapped", line)
        if op.kind == "page_state" and v.remap in REMAPPED:
            raise self.err(f"op page_state needs a normal vma; {v.name!r} is remapped (use op pte)", line)

    def memslot_create(self, op: Op, mem: MemoryMap) -> None:
        a, line = op.args, op.line
        live = mem.vmas.get(a["vma"])
        if live is None or not live.mapped:
            raise self.err(f"memslot_create names unknown or unmapped vma {a['vma']!r}", line)
        if a["slot"] >= KVM_USER_MEM_SLOTS or a["gfn"] > MAX_GFN or not 1 <= a["pages"] <= MAX_SLOT_PAGES:
            raise self.err("memslot_create: slot, gfn or pages out of range", line)
        self.new_slot(mem.slots, a["as_id"], a["slot"], a["gfn"], a["pages"], a["vma"], a["offset"], line)

    def existing_slot(self, op: Op, mem: MemoryMap) -> LiveSlot:
        a = op.args
        s = mem.slots.get((a["as_id"], a["slot"]))
        if s is None:
            raise self.err(f"op {op.kind}: no memslot {a['slot']} in address space {a['as_id']}", op.line)
        return s

    def memslot_move(self, op: Op, mem: MemoryMap) -> None:
        a = op.args
        s = self.existing_slot(op, mem)
        if a["gfn"] > MAX_GFN:
            raise self.err("memslot_move: gfn out of range", op.line)
        other = mem.slots.overlapping(a["as_id"], a["gfn"], s.spec.pages, ignore=s)
        if other is not None:
            raise self.err(f"memslot_move: memslot {a['slot']} would overlap memslot {other.spec.id}", op.line)

    def invalidate_begin(self, op: Op, mem: MemoryMap) -> None:
        self.open_ranges += 1

    def invalidate_end(self, op: Op, mem: MemoryMap) -> None:
        if self.open_ranges == 0:
            raise self.err("invalidate_end without a matching invalidate_begin", op.line)
        self.open_ranges -= 1

    def vcpu_map(self, op: Op, mem: MemoryMap) -> None:
        h = op.args["handle"] or f"map{self.nmaps}"
        self.nmaps += 1
        if h in self.handles:
            raise self.err(f"vcpu_map handle {h!r} is already in use", op.line)
        self.handles = self.handles | {h}

    def vcpu_unmap(self, op: Op, mem: MemoryMap) -> None:
        if op.args["handle"] not in self.handles:
            raise self.err(f"vcpu_unmap: no open map {op.args['handle']!r}", op.line)
        self.handles = self.handles - {op.args["handle"]}

    def access(self, op: Op) -> None:
        gpa = op.args["gpa"]
        if gpa >> PAGE_SHIFT > MAX_GFN:
            raise self.err(f"access.gpa {gpa:#x} is out of range", op.line)
        if gpa & 7:
            raise self.err(f"access.gpa {gpa:#x} is not 8-byte aligned (accesses are 8-byte loads/stores)", op.line)


_OP_CHECKS: dict[str, Callable[[_Validator, Op, MemoryMap], Any]] = {
    "memslot_create": _Validator.memslot_create,
    "memslot_delete": _Validator.existing_slot,
    "memslot_move": _Validator.memslot_move,
    "memslot_flags": _Validator.existing_slot,
    "memslot_invalidate": _Validator.existing_slot,
    "get_dirty_log": _Validator.existing_slot,
    "invalidate_begin": _Validator.invalidate_begin,
    "invalidate_end": _Validator.invalidate_end,
    "vcpu_map": _Validator.vcpu_map,
    "vcpu_unmap": _Validator.vcpu_unmap,
}
