"""What an op touched, derived from the scenario alone (no backend): the memslot, VMA and frame
behind the op's gfn at the time the op runs.

Why: catalogue conditions must be precise ("a remapped refcount-0 page", "a read-only slot"),
but trace records name pages, not their kinds, and VMM-level records name nothing.  Which
memslots and VMAs exist comes from the scenario format's ``replay``; this module follows what the
host events (madvise, page_state, pte, mprotect, invalidate_begin/end) leave in the pages and in
the open invalidations, symbolically.  It is independent of every generation, so it cannot hide
a generation's bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmsim.constants import PAGE_SHIFT
from kvmsim.scenario import LiveSlot, MemoryMap, Op, Scenario, SlotTable, VmaSpec, replay

REMAPPED = ("pfnmap", "io")
HOST_EVENTS = frozenset({"munmap", "mprotect", "page_state", "pte", "madvise", "invalidate_begin"})
KVM_OPS = frozenset({"lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault", "access"})
Range = tuple[tuple[int, int], tuple[int, int] | None]        # an open invalidation: (hva range, gfn range)


@dataclass(slots=True)
class _Pages:
    """What the scenario says about one VMA's pages, as host events change it."""
    spec: VmaSpec
    states: dict[int, str]
    ptes: dict[int, dict[str, Any]]
    named: dict[int, str]               # page index -> the named frame there
    default_state: str                  # the state of a page the scenario does not name (the VMA's state)
    default_pte_writable: bool          # a remapped PTE the scenario does not name

    @classmethod
    def of(cls, v: VmaSpec) -> _Pages:
        if not v.ptes and not v.page_states:          # most VMAs name no page (no comprehension to run)
            pages = cls(v, {}, {}, {}, v.state, v.prot == "rw")
        else:
            ptes = {i: {"page": p.page, "present": p.present, "writable": p.writable} for i, p in v.ptes.items()}
            pages = cls(v, {i: st for i, (st, _) in v.page_states.items()}, ptes,
                        {i: pg for i, (_, pg) in v.page_states.items() if pg}, v.state, v.prot == "rw")
        if "w" not in v.prot:
            pages.built_read_only()
        return pages

    def built_read_only(self) -> None:
        """A VMA built without PROT_WRITE has no writable PTE (§1.3; ``World.build_vma``: ``Mm.fit`` on
        each page it names, remapped PTEs writable only with VM_WRITE), and a later PROT_WRITE does not
        make them writable.  A page it does not name gets its PTE at first use (``Mm.entry``), so the
        default state stays."""
        self.states = {i: "present_ro" if st == "present_rw" else st for i, st in self.states.items()}
        for pte in self.ptes.values():
            pte["writable"] = False

    def write_protect(self) -> None:
        """What ``mprotect`` without PROT_WRITE leaves (``mm.protect``): every present writable page and
        every remapped PTE write-protected, and a later PROT_WRITE does not make them writable again."""
        self.built_read_only()
        if self.default_state == "present_rw":
            self.default_state = "present_ro"
        self.default_pte_writable = False

    def madvise_dontneed(self, page: int, count: int) -> None:
        """The page states ``madvise(MADV_DONTNEED)`` leaves (``mm.zap``): present private pages are freed
        (unpopulated, their named frame gone), present shared pages stay resident.  Without this, a later
        op's ``ctx.state`` would still say ``present_rw``."""
        spec = self.spec
        for i in _madvised_pages(spec, page, count) or ():
            if self.states.get(i, self.default_state) in ("present_rw", "present_ro"):
                self.states[i] = "resident" if spec.shared else "unpopulated"
                if not spec.shared:
                    self.named.pop(i, None)

    def follow(self, kind: str, a: dict[str, Any]) -> None:
        """A host event's effect on the pages."""
        if kind == "mprotect" and "w" not in a["prot"]:
            self.write_protect()
        elif kind == "madvise":
            self.madvise_dontneed(a["page"], a["count"])
        elif kind == "page_state":
            self.states[a["page"]] = a["state"]
        elif kind == "pte":
            named = self.ptes.get(a["page"], {}).get("page")
            self.ptes[a["page"]] = {"page": named, "present": a["present"], "writable": a["writable"]}


def op_contexts(sc: Scenario) -> list[dict[str, Any]]:
    """One dict per op: ``ctx.signal`` (none|pending|fatal), ``ctx.lock_contended``, ``ctx.slot``
    (none|invalid|ro|rw), ``ctx.internal``, ``ctx.internal_slot`` (tss|apic_access|identity_map or
    None), ``ctx.guest_mode`` (the vCPU runs L2), ``ctx.log_dirty``, ``ctx.vma``
    (none|normal|mixedmap|remapped), ``ctx.prot``, ``ctx.state`` (normal page state), ``ctx.frame``
    (kind of the page behind the gfn, when known), ``ctx.pte_present``, ``ctx.pte_writable``,
    ``ctx.invalidating`` (an invalidation is open), ``ctx.raced_before`` (an earlier fault raced with
    an invalidation), ``ctx.allow_unsafe_mappings`` (the module parameter), ``ctx.host_page`` (VMA
    and page index behind the gfn, ``vma+idx``), ``ctx.seq0`` (the notifier sequence may still be 0)."""
    c = _Contexts(sc)
    out = []
    context, follow = c.context, c.follow
    for _, op, mem in replay(sc):
        out.append(context(op, mem))
        follow(op, mem)
    return out


# Ops whose ``task`` step can change the task state whatever it is (the others only deliver a
# pending signal), and the op kinds whose target ``target`` works out beyond their ``gfn`` argument.
_TASK_OPS = frozenset({"signal", "mmap_lock"})
_TARGETING = frozenset({"access", "vcpu_map", "vcpu_unmap", "get_dirty_log"})


class _Contexts:
    """The task, vCPU, page and invalidation state op contexts read, followed op by op."""

    __slots__ = ("sc", "kinds", "pages", "open_inval", "ranges", "seq_moved", "signal", "contended", "raced", "smm",
                 "guest_mode", "maps", "nmaps", "unsafe")

    def __init__(self, sc: Scenario) -> None:
        w = sc.world
        self.sc = sc
        self.kinds = {p.name: p.kind for p in w.pages}
        self.pages = {v.name: _Pages.of(v) for v in w.vmas}
        self.open_inval = 0
        self.ranges: list[Range] = []
        self.seq_moved = w.seq != 0
        self.signal, self.contended = w.signal, w.mmap_lock_contended
        self.raced = False
        self.smm, self.guest_mode = w.smm, w.guest_mode
        self.maps: dict[str, tuple[int, bool]] = {}
        self.nmaps = 0
        self.unsafe = w.allow_unsafe_mappings

    def context(self, op: Op, mem: MemoryMap) -> dict[str, Any]:
        """The context of one op, from the state before it; the task and vCPU state it changes is
        followed here (the memory it changes is followed by ``follow``)."""
        a, k = op.args, op.kind
        ctx: dict[str, Any] = {"ctx.invalidating": self.open_inval > 0, "ctx.seq0": not self.seq_moved,
                               "ctx.signal": self.signal, "ctx.lock_contended": self.contended,
                               "ctx.raced_before": self.raced, "ctx.guest_mode": self.guest_mode,
                               "ctx.allow_unsafe_mappings": self.unsafe}
        if k == "x86_fault" and a["race_invalidate"]:
            self.race(a, mem.slots)
        if k in _TASK_OPS or self.signal == "pending":
            self.task(op)
        gfn = self.target(op, mem, ctx) if k in _TARGETING else a.get("gfn")
        if k == "vcpu_state":
            self.vcpu(a)
        # x86 faults and guest accesses use the vCPU's address space (SMM = 1), kvm_vcpu_map and
        # gfn_to_page address space 0, lookups whichever the request names (spec §1.2)
        as_id = 1 if self.smm and (k in ("x86_fault", "access") or (k == "lookup" and a["vcpu"])) else 0
        if gfn is not None:
            ctx["ctx.gfn"] = gfn
            self.backing(gfn, mem, as_id, ctx)
            if self.ranges:
                _in_ranges(self.sc, gfn, mem.slots, self.ranges, as_id, ctx)
            else:                                   # no invalidation open: what _in_ranges says then
                ctx["ctx.inval_hva"] = ctx["ctx.inval_gfn"] = False
        return ctx

    def race(self, a: dict[str, Any], slots: SlotTable) -> None:
        """An x86 fault that races with an invalidation: the racing invalidation covers the faulting page."""
        self.raced = True
        gfn = a["gfn"]
        slot = slots.at(a.get("as_id", 0), gfn)
        if self.open_inval and slot is not None:
            hva = _slot_hva(self.sc, slot) + ((gfn - slot.gfn) << PAGE_SHIFT)
            hr = (hva, hva + (1 << PAGE_SHIFT))
            self.ranges.append((hr, _gfn_range(self.sc, hr, slots)))

    def task(self, op: Op) -> None:
        if op.kind == "signal":
            self.signal = op.args["kind"]
        elif op.kind == "mmap_lock":
            self.contended = op.args["contended"]
        elif op.kind in KVM_OPS and self.signal == "pending":
            self.signal = "none"               # delivered when the op ends (the executor's rule)

    def vcpu(self, a: dict[str, Any]) -> None:
        if a["smm"] is not None:
            self.smm = a["smm"]
        if a["guest_mode"] is not None:
            self.guest_mode = a["guest_mode"]

    def target(self, op: Op, mem: MemoryMap, ctx: dict[str, Any]) -> int | None:
        """The gfn the op works on (None: none), and what else it names into ``ctx``."""
        a, k = op.args, op.kind
        gfn = a.get("gfn")
        if k == "access":
            gfn = a["gpa"] >> PAGE_SHIFT
        elif k == "vcpu_map":
            self.maps[a["handle"] or f"map{self.nmaps}"] = (a["gfn"], a["writable"])
            self.nmaps += 1
        elif k == "vcpu_unmap" and a["handle"] in self.maps:
            gfn, ctx["ctx.map_writable"] = self.maps.pop(a["handle"])
        elif k == "get_dirty_log":
            s = mem.slots.get((a["as_id"], a["slot"]))
            ctx["ctx.gfns"] = (s.gfn, s.end) if s is not None else None
        return gfn

    def follow(self, op: Op, mem: MemoryMap) -> None:
        """What the op leaves in the pages, the open invalidations and the notifier sequence."""
        if op.kind in HOST_EVENTS and not (op.kind == "mprotect" and _same_prot(op, mem)):
            self.host_event(op, mem.slots)
        elif op.kind == "invalidate_end":
            self.open_inval = max(0, self.open_inval - 1)
            if not self.open_inval:
                self.ranges.clear()         # the range stays as wide as it grew until none is in progress
            self.seq_moved = True

    def host_event(self, op: Op, slots: SlotTable) -> None:
        k, a = op.kind, op.args
        p = self.pages.get(a["vma"])
        if p is None:
            return
        if slots.per_vma.get(p.spec.name):
            self.seq_moved = self.seq_moved or k != "invalidate_begin"
        p.follow(k, a)
        if k == "invalidate_begin":
            self.open_inval += 1
        hr = _event_hvas(self.sc, p.spec, k, a)
        if hr is not None and (self.open_inval or k == "invalidate_begin"):
            # an event's own invalidation widens an open one's range (kvm_mmu_invalidate_range_add)
            self.ranges.append((hr, _gfn_range(self.sc, hr, slots)))

    def backing(self, gfn: int, mem: MemoryMap, as_id: int, ctx: dict[str, Any]) -> None:
        """What backs the gfn, into ``ctx``: the memslot, the VMA and the page behind it."""
        slot = mem.slot_at(as_id, gfn)
        if slot is None:
            ctx["ctx.slot"] = "none"
            return
        spec = slot.spec
        ctx["ctx.slot"] = "invalid" if slot.invalid else ("ro" if spec.readonly else "rw")
        ctx["ctx.internal"] = spec.internal is not None
        ctx["ctx.log_dirty"] = slot.log_dirty
        ctx["ctx.internal_slot"] = spec.internal
        v = mem.vmas.get(spec.vma)
        if v is None or not v.mapped:
            ctx["ctx.vma"] = "none"
            return
        idx = spec.offset + gfn - slot.gfn
        vspec = v.spec
        ctx["ctx.host_page"] = f"{vspec.name}+{idx}"      # the host page, shared by gfns that alias it
        ctx["ctx.prot"] = v.prot
        pages = self.pages[vspec.name]
        if vspec.remap in REMAPPED:
            _remapped_page(pages, idx, self.kinds, ctx)
        else:
            _normal_page(pages, idx, self.kinds, ctx)


def _remapped_page(p: _Pages, idx: int, kinds: dict[str, str], ctx: dict[str, Any]) -> None:
    pte = p.ptes.get(idx)
    page = pte.get("page") if pte else None
    ctx["ctx.vma"] = "remapped"
    ctx["ctx.frame"] = kinds.get(page, p.spec.frames) if page else p.spec.frames
    ctx["ctx.pte_present"] = pte["present"] if pte else True
    ctx["ctx.pte_writable"] = pte["writable"] if pte else p.default_pte_writable


def _normal_page(p: _Pages, idx: int, kinds: dict[str, str], ctx: dict[str, Any]) -> None:
    page = p.named.get(idx)
    ctx["ctx.vma"] = "mixedmap" if p.spec.remap == "mixedmap" else "normal"
    ctx["ctx.state"] = p.states.get(idx, p.default_state)
    ctx["ctx.frame"] = kinds[page] if page else "normal"


# Pages in a 2 MiB host mapping; madvise takes only whole, aligned huge pages there.
_HUGE_PAGES = {"4k": 1, "2m": 512}


def _madvised_pages(v: VmaSpec, page: int, count: int) -> range | None:
    """The pages ``madvise(MADV_DONTNEED)`` acts on, as the model's executor (``op_madvise``) takes them:
    none for VM_IO/VM_PFNMAP VMAs, a zero length or a misaligned start in a 2 MiB mapping, and only
    whole huge pages there."""
    level = _HUGE_PAGES[v.host_level]
    if v.remap in REMAPPED or page % level:
        return None
    count -= count % level
    return range(page, min(page + count, v.pages)) if count else None


def _same_prot(op: Op, mem: MemoryMap) -> bool:
    """An ``mprotect`` to the protection the VMA already has: mm/mprotect.c ``mprotect_fixup`` returns
    at ``if (newflags == oldflags)`` -- no page change, no mmu_notifier invalidation (``op_mprotect``).
    ``mem`` is the map the op runs against, so its prot is the one before the op."""
    v = mem.vmas.get(op.args["vma"]) if op.kind == "mprotect" else None
    return v is not None and v.prot == op.args["prot"]


def _event_hvas(sc: Scenario, v: VmaSpec, kind: str, a: dict[str, Any]) -> tuple[int, int] | None:
    """The hva range whose mmu_notifier invalidation a host event runs, as the model's executor runs it
    (``op_munmap``/``op_mprotect`` changing the protection: the whole VMA; ``op_madvise``, ``op_page_state``,
    ``op_pte``, ``invalidate_begin``: the pages named); None when the event runs none (a refused or empty
    madvise)."""
    base = sc.vma_start(v)
    if kind in ("munmap", "mprotect"):
        return base, base + (v.pages << PAGE_SHIFT)
    pages: range | None = range(a["page"], min(a["page"] + a.get("count", 1), v.pages))
    if kind == "madvise":
        pages = _madvised_pages(v, a["page"], a["count"])
    if pages is None:
        return None
    return base + (pages.start << PAGE_SHIFT), base + (max(pages.start, pages.stop) << PAGE_SHIFT)


def _slot_hva(sc: Scenario, s: LiveSlot) -> int:
    return sc.vma_start(sc.vma_named(s.spec.vma)) + (s.spec.offset << PAGE_SHIFT)


def _gfn_range(sc: Scenario, hr: tuple[int, int], slots: SlotTable) -> tuple[int, int] | None:
    lo = hi = None
    for s in slots.values():
        base = _slot_hva(sc, s)
        a, b = max(hr[0], base), min(hr[1], base + (s.spec.pages << PAGE_SHIFT))
        if a < b:
            g0 = s.gfn + ((a - base) >> PAGE_SHIFT)
            g1 = s.gfn + ((b - 1 - base) >> PAGE_SHIFT) + 1
            lo = g0 if lo is None else min(lo, g0)
            hi = g1 if hi is None else max(hi, g1)
    return None if lo is None or hi is None else (lo, hi)


def _in_ranges(sc: Scenario, gfn: int, slots: SlotTable, ranges: list[Range], as_id: int,
               ctx: dict[str, Any]) -> None:
    """Whether the gfn lies in the union of the open invalidations, counted in hvas (<= 6.7) and
    in gfns (>= 6.8), as ``mmu_invalidate_retry_hva``/``_gfn`` see it, into ``ctx``."""
    counted = [(h, g) for h, g in ranges if g is not None] if ranges else None
    if not counted:
        ctx["ctx.inval_hva"] = ctx["ctx.inval_gfn"] = False
        return
    slot = slots.at(as_id, gfn)
    hlo, hhi = min(h[0] for h, _ in counted), max(h[1] for h, _ in counted)
    glo, ghi = min(g[0] for _, g in counted), max(g[1] for _, g in counted)
    in_hva = False
    if slot is not None:
        hva = _slot_hva(sc, slot) + ((gfn - slot.gfn) << PAGE_SHIFT)
        in_hva = hlo <= hva < hhi
    ctx["ctx.inval_hva"] = in_hva
    ctx["ctx.inval_gfn"] = glo <= gfn < ghi
