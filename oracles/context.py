"""What an op touched, derived from the scenario alone (no backend): the memslot, VMA and frame
behind the op's gfn at the time the op runs.

Why: catalogue conditions must be precise ("a remapped refcount-0 page", "a read-only slot"),
but trace records name pages, not their kinds, and VMM-level records name nothing.  This replays
the structural ops (memslot create/delete/move/flags/invalidate, munmap, mprotect, page_state,
pte, invalidate_begin/end) symbolically; it is independent of every generation, so it cannot
hide a generation's bug.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, replace
from typing import Any

from kvmsim.constants import PAGE_SHIFT
from kvmsim.scenario import Scenario, SlotSpec, VmaSpec


@dataclass
class _Slot:
    spec: SlotSpec
    gfn: int
    invalid: bool = False
    log_dirty: bool = False


class _Slots(dict):
    """``(as_id, id) -> _Slot`` plus a gfn-ordered index per address space and a count of slots
    per VMA, kept up to date on every change, so finding the slot behind an op's gfn is
    O(log n) and a scenario's contexts cost linear time in its memslots and ops.  Slots of one
    address space do not overlap in a valid scenario; if they do, lookups scan in order."""

    def __init__(self, items: dict) -> None:
        super().__init__()
        self._starts: dict[int, list[int]] = {}
        self._sorted: dict[int, list[_Slot]] = {}
        self.per_vma: dict[str, int] = {}
        self._overlaps = False
        for k, v in items.items():
            self[k] = v

    def __setitem__(self, key: tuple[int, int], s: _Slot) -> None:
        if key in self:
            self.pop(key)
        super().__setitem__(key, s)
        self._index(key[0], s)
        self.per_vma[s.spec.vma] = self.per_vma.get(s.spec.vma, 0) + 1

    def pop(self, key: tuple[int, int], default: Any = None) -> Any:
        s = super().pop(key, None)
        if s is None:
            return default
        self._unindex(key[0], s)
        self.per_vma[s.spec.vma] -= 1
        return s

    def move(self, key: tuple[int, int], gfn: int) -> None:
        s = self[key]
        self._unindex(key[0], s)
        s.gfn, s.invalid, s.spec = gfn, False, replace(s.spec, gfn=gfn)
        self._index(key[0], s)

    def _index(self, as_id: int, s: _Slot) -> None:
        starts, slots = self._starts.setdefault(as_id, []), self._sorted.setdefault(as_id, [])
        i = bisect_right(starts, s.gfn)
        if (i > 0 and slots[i - 1].gfn + slots[i - 1].spec.pages > s.gfn) or \
                (i < len(slots) and slots[i].gfn < s.gfn + s.spec.pages):
            self._overlaps = True
        starts.insert(i, s.gfn)
        slots.insert(i, s)

    def _unindex(self, as_id: int, s: _Slot) -> None:
        starts, slots = self._starts[as_id], self._sorted[as_id]
        i = bisect_left(starts, s.gfn)
        while slots[i] is not s:
            i += 1
        del starts[i], slots[i]

    def at(self, as_id: int, gfn: int) -> _Slot | None:
        """The slot of ``as_id`` containing gfn (the first created, should slots overlap)."""
        if self._overlaps:
            return next((s for (a, _), s in self.items() if a == as_id and s.gfn <= gfn < s.gfn + s.spec.pages), None)
        starts = self._starts.get(as_id)
        i = bisect_right(starts, gfn) - 1 if starts else -1
        if i >= 0:
            s = self._sorted[as_id][i]
            if gfn < s.gfn + s.spec.pages:
                return s
        return None


@dataclass
class _Vma:
    spec: VmaSpec
    prot: str
    live: bool = True
    states: dict[int, str] = field(default_factory=dict)
    ptes: dict[int, dict[str, Any]] = field(default_factory=dict)
    default_state: str = ""             # the state of a page the scenario does not name (the VMA's state)
    default_pte_writable: bool = True   # a remapped PTE the scenario does not name

    def __post_init__(self) -> None:
        self.default_state = self.default_state or self.spec.state
        self.default_pte_writable = self.prot == "rw"

    def write_protect(self) -> None:
        """What ``mprotect`` without PROT_WRITE leaves (``mm.protect``): every present writable page and
        every remapped PTE write-protected, and a later PROT_WRITE does not make them writable again."""
        self.states = {i: "present_ro" if st == "present_rw" else st for i, st in self.states.items()}
        if self.default_state == "present_rw":
            self.default_state = "present_ro"
        for pte in self.ptes.values():
            pte["writable"] = False
        self.default_pte_writable = False


def op_contexts(sc: Scenario) -> list[dict[str, Any]]:
    """One dict per op: ``ctx.signal`` (none|pending|fatal), ``ctx.lock_contended``, ``ctx.slot`` (none|invalid|ro|rw), ``ctx.internal``,
    ``ctx.internal_slot`` (tss|apic_access|identity_map or None), ``ctx.guest_mode`` (the vCPU runs L2), ``ctx.log_dirty``,
    ``ctx.vma`` (none|normal|mixedmap|remapped), ``ctx.prot``, ``ctx.state`` (normal page state),
    ``ctx.frame`` (kind of the page behind the gfn, when known), ``ctx.pte_present``,
    ``ctx.pte_writable``, ``ctx.invalidating`` (an invalidation is open), ``ctx.raced_before`` (an earlier fault raced
    with an invalidation), ``ctx.allow_unsafe_mappings`` (the module parameter), ``ctx.host_page``
    (VMA and page index behind the gfn, ``vma+idx``), ``ctx.seq0``
    (the notifier sequence may still be 0)."""
    w = sc.world
    kinds = {p.name: p.kind for p in w.pages}
    slots = _Slots({(s.as_id, s.id): _Slot(s, s.gfn, False, s.log_dirty) for s in w.memslots})
    vmas = {v.name: _Vma(v, v.prot, True, {i: st for i, (st, _) in v.page_states.items()},
                         {i: {"page": p.page, "present": p.present, "writable": p.writable}
                          for i, p in v.ptes.items()}) for v in w.vmas}
    named = {v.name: {i: pg for i, (_, pg) in v.page_states.items() if pg} for v in w.vmas}
    open_inval = 0
    ranges: list[tuple[tuple[int, int], tuple[int, int] | None]] = []   # open (hva range, gfn range)
    seq_moved = w.seq != 0
    signal, contended = w.signal, w.mmap_lock_contended
    raced = False
    smm, guest_mode = w.smm, w.guest_mode
    maps: dict[str, tuple[int, bool]] = {}
    nmaps = 0
    out: list[dict[str, Any]] = []
    for op in sc.ops:
        a = op.args
        k = op.kind
        gfn = a.get("gfn")
        ctx: dict[str, Any] = {"ctx.invalidating": open_inval > 0, "ctx.seq0": not seq_moved,
                               "ctx.signal": signal, "ctx.lock_contended": contended, "ctx.raced_before": raced,
                               "ctx.guest_mode": guest_mode,
                               "ctx.allow_unsafe_mappings": sc.world.allow_unsafe_mappings}
        if k == "x86_fault" and a["race_invalidate"]:
            raced = True
            slot = slots.at(a.get("as_id", 0), gfn)
            if open_inval and slot is not None:     # the racing invalidation covers the faulting page
                hva = _slot_hva(sc, slot) + ((gfn - slot.gfn) << PAGE_SHIFT)
                hr = (hva, hva + (1 << PAGE_SHIFT))
                ranges.append((hr, _gfn_range(sc, hr, slots)))
        if k == "signal":
            signal = a["kind"]
        elif k == "mmap_lock":
            contended = a["contended"]
        elif k in ("lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault", "access") and signal == "pending":
            signal = "none"               # delivered when the op ends (the executor's rule)
        if k == "access":
            gfn = a["gpa"] >> PAGE_SHIFT
        elif k == "vcpu_map":
            maps[a["handle"] or f"map{nmaps}"] = (a["gfn"], a["writable"])
            nmaps += 1
        elif k == "vcpu_unmap" and a["handle"] in maps:
            gfn, ctx["ctx.map_writable"] = maps.pop(a["handle"])
        elif k == "get_dirty_log":
            s = slots.get((a["as_id"], a["slot"]))
            ctx["ctx.gfns"] = (s.gfn, s.gfn + s.spec.pages) if s is not None else None
        if k == "vcpu_state" and a["smm"] is not None:
            smm = a["smm"]
        if k == "vcpu_state" and a["guest_mode"] is not None:
            guest_mode = a["guest_mode"]
        # x86 faults and guest accesses use the vCPU's address space (SMM = 1), kvm_vcpu_map and
        # gfn_to_page address space 0, lookups whichever the request names (spec §1.2)
        as_id = 1 if smm and (k in ("x86_fault", "access") or (k == "lookup" and a["vcpu"])) else 0
        if gfn is not None:
            ctx["ctx.gfn"] = gfn
            ctx.update(_backing(gfn, slots, vmas, kinds, named, as_id))
            ctx.update(_in_ranges(sc, gfn, slots, ranges, as_id))
        out.append(ctx)
        if k == "memslot_create":
            spec = SlotSpec(a["slot"], a["gfn"], a["pages"], a["vma"], a["offset"], a["readonly"], a["log_dirty"],
                            a["as_id"])
            slots[(a["as_id"], a["slot"])] = _Slot(spec, a["gfn"], False, a["log_dirty"])
        elif k == "memslot_delete":
            slots.pop((a["as_id"], a["slot"]), None)
        elif k == "memslot_move":
            if (a["as_id"], a["slot"]) in slots:
                slots.move((a["as_id"], a["slot"]), a["gfn"])
        elif k == "memslot_flags":
            s = slots.get((a["as_id"], a["slot"]))
            if s is not None:
                s.log_dirty = a["log_dirty"]
        elif k == "memslot_invalidate":
            s = slots.get((a["as_id"], a["slot"]))
            if s is not None:
                s.invalid = True
        elif k in ("munmap", "mprotect", "page_state", "pte", "madvise", "invalidate_begin"):
            v = vmas.get(a["vma"])
            if v is None:
                continue
            if slots.per_vma.get(v.spec.name):
                seq_moved = seq_moved or k != "invalidate_begin"
            if k == "munmap":
                v.live = False
            elif k == "mprotect":
                v.prot = a["prot"]
                if "w" not in v.prot:
                    v.write_protect()
            elif k == "madvise":
                _madvise_dontneed(v, named, a["page"], a["count"])
            elif k == "page_state":
                v.states[a["page"]] = a["state"]
            elif k == "pte":
                old = v.ptes.get(a["page"], {})
                v.ptes[a["page"]] = {"page": old.get("page"), "present": a["present"], "writable": a["writable"]}
            if k == "invalidate_begin":
                open_inval += 1
            hr = _event_hvas(sc, v.spec, k, a)
            if hr is not None and (open_inval or k == "invalidate_begin"):
                # an event's own invalidation widens an open one's range (kvm_mmu_invalidate_range_add)
                ranges.append((hr, _gfn_range(sc, hr, slots)))
        elif k == "invalidate_end":
            open_inval = max(0, open_inval - 1)
            if not open_inval:
                ranges.clear()         # the range stays as wide as it grew until none is in progress
            seq_moved = True
    return out


# Pages in a 2 MiB host mapping; madvise takes only whole, aligned huge pages there.
_HUGE_PAGES = {"4k": 1, "2m": 512}


def _madvised_pages(v: VmaSpec, page: int, count: int) -> range | None:
    """The pages ``madvise(MADV_DONTNEED)`` acts on, as the model's executor (``op_madvise``) takes them:
    none for VM_IO/VM_PFNMAP VMAs, a zero length or a misaligned start in a 2 MiB mapping, and only
    whole huge pages there."""
    level = _HUGE_PAGES[v.host_level]
    if v.remap in ("pfnmap", "io") or page % level:
        return None
    count -= count % level
    return range(page, min(page + count, v.pages)) if count else None


def _madvise_dontneed(v: _Vma, named: dict, page: int, count: int) -> None:
    """The page states ``madvise(MADV_DONTNEED)`` leaves (``mm.zap``): present private pages are freed
    (unpopulated, their named frame gone), present shared pages stay resident.  Without this, a later
    op's ``ctx.state`` would still say ``present_rw``."""
    spec = v.spec
    for i in _madvised_pages(spec, page, count) or ():
        if v.states.get(i, v.default_state) in ("present_rw", "present_ro"):
            v.states[i] = "resident" if spec.shared else "unpopulated"
            if not spec.shared:
                named.get(spec.name, {}).pop(i, None)


def _event_hvas(sc: Scenario, v: VmaSpec, kind: str, a: dict[str, Any]) -> tuple[int, int] | None:
    """The hva range whose mmu_notifier invalidation a host event runs, as the model's executor runs it
    (``op_munmap``/``op_mprotect``: the whole VMA; ``op_madvise``, ``op_page_state``, ``op_pte``,
    ``invalidate_begin``: the pages named); None when the event runs none (a refused or empty madvise)."""
    base = sc.vma_start(v)
    if kind in ("munmap", "mprotect"):
        return base, base + (v.pages << PAGE_SHIFT)
    pages = range(a["page"], min(a["page"] + a.get("count", 1), v.pages))
    if kind == "madvise":
        pages = _madvised_pages(v, a["page"], a["count"])
        if pages is None:
            return None
    return base + (pages.start << PAGE_SHIFT), base + (max(pages.start, pages.stop) << PAGE_SHIFT)


def _slot_hva(sc: Scenario, s: _Slot) -> int:
    return sc.vma_start(sc.vma_named(s.spec.vma)) + (s.spec.offset << PAGE_SHIFT)


def _gfn_range(sc: Scenario, hr: tuple[int, int], slots: dict) -> tuple[int, int] | None:
    lo = hi = None
    for s in slots.values():
        base = _slot_hva(sc, s)
        a, b = max(hr[0], base), min(hr[1], base + (s.spec.pages << PAGE_SHIFT))
        if a < b:
            g0 = s.gfn + ((a - base) >> PAGE_SHIFT)
            g1 = s.gfn + ((b - 1 - base) >> PAGE_SHIFT) + 1
            lo = g0 if lo is None else min(lo, g0)
            hi = g1 if hi is None else max(hi, g1)
    return None if lo is None else (lo, hi)


def _in_ranges(sc: Scenario, gfn: int, slots: _Slots, ranges: list, as_id: int = 0) -> dict[str, Any]:
    """Whether the gfn lies in the union of the open invalidations, counted in hvas (<= 6.7) and
    in gfns (>= 6.8), as ``mmu_invalidate_retry_hva``/``_gfn`` see it."""
    counted = [(h, g) for h, g in ranges if g is not None]
    if not counted:
        return {"ctx.inval_hva": False, "ctx.inval_gfn": False}
    slot = slots.at(as_id, gfn)
    hlo, hhi = min(h[0] for h, _ in counted), max(h[1] for h, _ in counted)
    glo, ghi = min(g[0] for _, g in counted), max(g[1] for _, g in counted)
    in_hva = False
    if slot is not None:
        hva = _slot_hva(sc, slot) + ((gfn - slot.gfn) << PAGE_SHIFT)
        in_hva = hlo <= hva < hhi
    return {"ctx.inval_hva": in_hva, "ctx.inval_gfn": glo <= gfn < ghi}


def _backing(gfn: int, slots: _Slots, vmas: dict, kinds: dict, named: dict, as_id: int = 0) -> dict[str, Any]:
    slot = slots.at(as_id, gfn)
    if slot is None:
        return {"ctx.slot": "none"}
    ctx: dict[str, Any] = {"ctx.slot": "invalid" if slot.invalid else ("ro" if slot.spec.readonly else "rw"),
                           "ctx.internal": slot.spec.internal is not None, "ctx.log_dirty": slot.log_dirty,
                           "ctx.internal_slot": slot.spec.internal}
    v = vmas.get(slot.spec.vma)
    if v is None or not v.live:
        ctx["ctx.vma"] = "none"
        return ctx
    idx = slot.spec.offset + gfn - slot.gfn
    spec = v.spec
    ctx["ctx.host_page"] = f"{spec.name}+{idx}"      # the host page, shared by gfns that alias it
    ctx["ctx.prot"] = v.prot
    if spec.remap in ("pfnmap", "io"):
        ctx["ctx.vma"] = "remapped"
        pte = v.ptes.get(idx)
        page = pte.get("page") if pte else None
        ctx["ctx.frame"] = kinds.get(page, spec.frames) if page else spec.frames
        ctx["ctx.pte_present"] = pte["present"] if pte else True
        ctx["ctx.pte_writable"] = pte["writable"] if pte else v.default_pte_writable
    else:
        ctx["ctx.vma"] = "mixedmap" if spec.remap == "mixedmap" else "normal"
        ctx["ctx.state"] = v.states.get(idx, v.default_state)
        page = named.get(spec.name, {}).get(idx)
        ctx["ctx.frame"] = kinds[page] if page else "normal"
    return ctx
