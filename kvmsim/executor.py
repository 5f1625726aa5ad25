"""Runs a scenario on one generation and records the trace (spec §9 "Record, per call")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .constants import (
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMSLOT_INVALID,
    PAGE_SHIFT,
    PAGE_SIZE,
    VM_READ,
    VM_WRITE,
    kvm_is_error_hva,
    pfn_class,
    ret_name,
)
from .generation import UNINIT, Fault, Generation, HostMap, KernelBug
from .memslot import Memslot
from .mm import RemapPte
from .scenario import Op, Scenario
from .trace import OpRecord, Trace
from .vmm import guest_access
from .world import PROT_FLAGS, World
from .x86 import page_fault

KVM_OPS = frozenset(("lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault", "access"))


def _name(pg: Any) -> str | None:
    if pg is None:
        return None
    if pg is UNINIT:
        return "<uninitialised>"
    return pg.name


def _frame(w: World, pfn: int) -> str | None:
    """The frame a pfn names: its page, ``pfn:<hex>`` without one, None for an error value."""
    return _result(w, pfn)[1]


def _result(w: World, pfn: int) -> tuple[str, str | None]:
    """``(pfn_class(pfn), _frame(w, pfn))`` with one classification: a lookup reports both."""
    cls = pfn_class(pfn)
    if cls != "pfn":
        return cls, None
    pg = w.db.pages.get(pfn)
    return cls, pg.name if pg is not None else f"pfn:{pfn:#x}"


def _hva(hva: int | None) -> Any:
    if hva is None:
        return None
    if kvm_is_error_hva(hva):
        return "HVA_ERR_RO_BAD" if hva & PAGE_SIZE else "HVA_ERR_BAD"
    return hva


Deltas = tuple[dict[str, int], dict[str, int], list[str], list[str]]


def _deltas(w: World) -> Deltas:
    """Per-page changes since the op started: KVM references, pins, accessed, dirty (sorted names)."""
    touched = w.db.touched
    if not touched:                                # most ops that fail early touch no page
        return {}, {}, [], []
    refs, pins = _held(w)
    accessed = sorted(pg.name for pg, (_, _, a0, _) in touched.items() if pg.accessed and not a0)
    dirty = sorted(pg.name for pg, (_, _, _, d0) in touched.items() if pg.dirty and not d0)
    return refs, pins, accessed, dirty


def _held(w: World) -> tuple[dict[str, int], dict[str, int]]:
    """``_deltas``' references and pins alone: what a call holds before its release (the
    accessed/dirty lists a full ``_deltas`` also sorts are not reported there)."""
    touched = w.db.touched
    refs: dict[str, int] = {}
    pins: dict[str, int] = {}
    for pg, (r0, p0, _, _) in touched.items():
        kvm_refs = pg.refcount - pg.base_refs
        if kvm_refs != r0:
            refs[pg.name] = kvm_refs - r0
        if pg.pincount != p0:
            pins[pg.name] = pg.pincount - p0
    return refs, pins


def _net(taken: dict[str, int], given_back: dict[str, int]) -> dict[str, int]:
    net = {n: taken.get(n, 0) + given_back.get(n, 0) for n in set(taken) | set(given_back)}
    return {n: v for n, v in sorted(net.items()) if v > 0}


class _OpFields(Op):
    """An op whose fields read as ordinary attributes: its instance dictionary *is* the op's
    ``args``.  Why: ``Op`` serves fields through ``__getattr__``, which Python reaches only after
    the normal lookup has failed, and a generation reads several fields per op; sharing the dict
    costs one small object per op, no copy.  Read-only: nothing in the model assigns op fields.
    (A field named like an ``Op`` attribute -- ``signal``'s ``kind`` -- reads as the field: the
    executor dispatches on the op's own ``kind``.)"""

    @property
    def args(self) -> dict[str, Any]:               # type: ignore[override]
        return self.__dict__


_new_fields = object.__new__
"""An ``_OpFields`` without ``__init__``; ``Executor.run`` then gives it the op's ``args`` as its dict."""


class Executor:
    """One scenario execution: a fresh world, the generation, and the open kvm_vcpu_map handles."""

    def __init__(self, gen: Generation, sc: Scenario) -> None:
        self.gen, self.sc = gen, sc
        self.w = World.from_scenario(sc)
        self.w.on_zap = gen.spte_zapped
        self.maps: dict[str, HostMap] = {}
        self.map_held: dict[str, tuple[dict[str, int], dict[str, int]]] = {}    # handle -> (refs, pins) taken
        self.nmaps = 0
        self.dead: str | None = None

    def run(self, backend: str) -> Trace:
        trace = Trace(backend, [], {"generation": self.gen.name, "spec": self.gen.spec, "path": "sim"})
        records = trace.records
        step = self.step
        for i, op in enumerate(self.sc.ops):
            fields = _new_fields(_OpFields)            # _fields(op), inline: one call less per op
            fields.__dict__ = op.args
            records.append(step(i, op.kind, fields))
        refs: dict[str, int] = {}
        pins: dict[str, int] = {}
        for p in self.w.db.pages.values():             # one pass, in page order, for both
            if p.refcount != p.base_refs:
                refs[p.name] = p.refcount - p.base_refs     # Page.kvm_refs
            if p.pincount:
                pins[p.name] = p.pincount
        trace.meta["refs_held_at_end"] = refs
        trace.meta["pins_held_at_end"] = pins
        return trace

    def step(self, i: int, kind: str, op: Op) -> OpRecord:
        """Op ``i`` of kind ``kind``; ``op`` gives its fields."""
        rec = OpRecord(i, kind)
        if self.dead is not None:
            rec.api = {"skipped": self.dead}
            return rec
        w = self.w
        db = w.db
        events = w.events = rec.events             # this op's own list: the next op starts a new one
        if db.touched:
            db.touched = {}
        underflows = db.underflows
        nunder = len(underflows)
        try:
            handler = _HANDLERS.get(kind)
            if handler is None:
                getattr(self, "op_" + kind)(op, rec)
            else:
                handler(self, op, rec)
        except KernelBug as e:
            self.dead = f"kernel BUG earlier: {e}"
            rec.api = {"oops": str(e)}
        if len(underflows) > nunder:
            events.extend(f"BUG:refcount_underflow:{n}" for n in underflows[nunder:])
        task = w.task
        if task.signal == "pending" and kind in KVM_OPS:
            task.signal = "none"                   # an armed signal is delivered when the op ends
        task.signal_consumed = False
        return rec

    # --- API-level ops ------------------------------------------------------------------------
    def op_lookup(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        lk = self.gen.lookup(w, op)
        held, pinned = _held(w)
        lk.release()
        leaked, pins_leaked, accessed, dirty = _deltas(w)
        result, frame = _result(w, lk.pfn)
        rec.api = {"call": lk.api, "result": result, "frame": frame,
                   "page": _name(lk.page_out), "writable": lk.writable, "hva": _hva(lk.hva), "async": lk.async_,
                   "held": held, "pinned": pinned, "leaked": leaked,
                   "pins_leaked": pins_leaked, "accessed": accessed, "dirty": dirty}

    def op_gfn_to_page(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        res = self.gen.gfn_to_page(w, op)
        held, _ = _held(w)
        res.release()
        leaked, _, accessed, dirty = _deltas(w)
        rec.api = {"call": res.api, "result": res.page.name if res.page is not None else res.error,
                   "held": held, "leaked": leaked, "accessed": accessed, "dirty": dirty}

    def op_vcpu_map(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        handle = op.handle or f"map{self.nmaps}"
        self.nmaps += 1
        r, m = self.gen.vcpu_map(w, op)
        self.maps[handle] = m
        held, pinned = _held(w)
        self.map_held[handle] = (held, pinned)
        rec.api = {"ret": ret_name(r) if r else 0, "handle": handle, "method": m.hva if r == 0 else None,
                   "frame": _frame(w, m.pfn) if r == 0 else None, "held": held, "pinned": pinned}

    def op_vcpu_unmap(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        m = self.maps.pop(op.handle)
        before = {k: set(v) for k, v in w.dirty.items()}
        self.gen.vcpu_unmap(w, m, op.dirty)
        released, unpinned, accessed, dirty = _deltas(w)
        logged = any(w.dirty.get(k, set()) != before.get(k, set()) for k in w.dirty)
        refs, pins = self.map_held.pop(op.handle, ({}, {}))
        # what the map took and the unmap did not give back (G1's reserved pages, D19)
        rec.api = {"released": released, "unpinned": unpinned, "leaked": _net(refs, released),
                   "pins_leaked": _net(pins, unpinned), "accessed": accessed, "dirty": dirty,
                   "dirty_logged": logged}

    def op_x86_fault(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        f = Fault(op.gfn, op.write, op.prefetch, w.slot_for(op.gfn, True))     # positional: keywords cost
        if op.race_invalidate:
            w.race_hook = lambda: self._race(f)
        r, spte = page_fault(self.gen, w, f)
        w.race_hook = None
        leaked, _, accessed, dirty = _deltas(w)
        called = bool(f.attempts) or f.noslot      # a retry before any lookup has no pfn to report
        result, frame = _result(w, f.pfn)
        rec.api = {"ret": ret_name(r), "result": result if called else None, "frame": frame,
                   "map_writable": f.map_writable if r >= 0 else None,
                   "spte": None if spte is None else {"writable": spte.writable, "level": spte.level},
                   "calls": f.attempts, "async_pf": f.async_pf, "mmio_spte": f.mmio_spte,
                   "leaked": leaked, "accessed": accessed, "dirty": dirty}
        if w.task.signals_sent:
            rec.api["signals"] = list(w.task.signals_sent)
            w.task.signals_sent.clear()

    def _race(self, f: Fault) -> None:
        """An invalidation of the faulting page that begins and ends while GUP runs."""
        slot = f.slot
        if slot is None:
            return
        hva = slot.userspace_addr + ((f.gfn - slot.base_gfn) << PAGE_SHIFT)
        self.invalidate(hva, hva + PAGE_SIZE, lambda: None)

    # --- VMM-level ops ------------------------------------------------------------------------
    def op_access(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        vmm, api = guest_access(self.gen, w, op.gpa, op.write, op.value)
        rec.fault = api.pop("fault_path")
        leaked, _, accessed, dirty = _deltas(w)
        api["leaked"], api["accessed"], api["dirty"] = leaked, accessed, dirty
        rec.vmm, rec.api = vmm, api

    def op_get_dirty_log(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        slot = w.slots.by_id(op.as_id, op.slot)
        key = (op.as_id, op.slot)
        bits = sorted(w.dirty.pop(key, set()))
        if slot is not None and slot.dirty_log:     # KVM_GET_DIRTY_LOG re-protects logged pages
            for (as_id, gfn), spte in w.sptes.items():
                if as_id == slot.as_id and slot.contains(gfn):
                    spte.writable = False
            rec.vmm = {"ret": 0, "dirty": bits}
        else:
            rec.vmm = {"ret": "-ENOENT", "dirty": []}   # no dirty bitmap for this slot

    # --- host events ----------------------------------------------------------------------------
    def invalidate(self, start: int, end: int, change) -> None:
        """mmu_notifier invalidate_range_start → zap SPTEs → the mm change → range_end."""
        w = self.w
        counted = w.notifier.begin(w.slots, start, end)
        w.zap_hva_range(start, end)
        change()
        if counted:
            w.notifier.end()

    def _vma(self, op: Op):
        return self.w.mm.by_name(op.vma)

    def _span(self, op: Op) -> tuple[Any, int, int]:
        v = self._vma(op)
        page = getattr(op, "page", 0)
        count = getattr(op, "count", 1)
        return v, v.start + (page << PAGE_SHIFT), min(v.end, v.start + ((page + count) << PAGE_SHIFT))

    def op_madvise(self, op: Op, rec: OpRecord) -> None:
        """``madvise(MADV_DONTNEED)``: refused (-EINVAL) for VM_IO/VM_PFNMAP VMAs
        (``madvise_dontneed_free_valid_vma``); on a 2 MiB (hugetlb) mapping the start must be
        huge-page aligned and the length is rounded down to whole huge pages."""
        v, s, e = self._span(op)
        count = op.count
        if count == 0:
            rec.vmm = {"ret": 0}                   # a zero length succeeds before any VMA check
            return
        if v.remapped or (v.host_level > 1 and s % (v.host_level << PAGE_SHIFT)):
            rec.vmm = {"ret": "-EINVAL"}
            return
        if v.host_level > 1:
            count -= count % v.host_level
            e = s + (count << PAGE_SHIFT)
        if count:
            self.invalidate(s, e, lambda: self.w.mm.zap(v, op.page, count))
        rec.vmm = {"ret": 0}

    def op_mprotect(self, op: Op, rec: OpRecord) -> None:
        """mm/mprotect.c ``mprotect_fixup``: ``if (newflags == oldflags) { *pprev = vma; return 0; }``
        -- the protection the VMA already has changes nothing: no change_protection, no mmu_notifier
        invalidation, the SPTEs stay."""
        v = self._vma(op)
        if v.flags & (VM_READ | VM_WRITE) != PROT_FLAGS[op.prot]:
            self.invalidate(v.start, v.end, lambda: self.w.mm.protect(v, op.prot != "none", op.prot == "rw"))
        rec.vmm = {"ret": 0}

    def op_munmap(self, op: Op, rec: OpRecord) -> None:
        v = self._vma(op)
        self.invalidate(v.start, v.end, lambda: self.w.mm.unmap(v))
        rec.vmm = {"ret": 0}

    def op_page_state(self, op: Op, rec: OpRecord) -> None:
        v, s, e = self._span(op)
        self.invalidate(s, e, lambda: self.w.mm.set_state(v, op.page, op.state))
        rec.vmm = {"ret": 0}

    def op_pte(self, op: Op, rec: OpRecord) -> None:
        v, s, e = self._span(op)

        def change() -> None:
            old = v.pte(op.page)
            v.ptes[op.page] = RemapPte(op.present, old.page if old else None,   # writable only with
                                       op.writable and bool(v.flags & VM_WRITE), op.handler)   # VM_WRITE
        self.invalidate(s, e, change)
        rec.vmm = {"ret": 0}

    def op_invalidate_begin(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        v, s, e = self._span(op)
        counted = w.notifier.begin(w.slots, s, e)
        w.zap_hva_range(s, e)
        self._open = getattr(self, "_open", [])
        self._open.append(counted)
        rec.api = {"counted": counted, "seq": w.notifier.seq, "in_progress": w.notifier.in_progress}

    def op_invalidate_end(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        if self._open.pop():
            w.notifier.end()
        rec.api = {"seq": w.notifier.seq, "in_progress": w.notifier.in_progress}

    def op_signal(self, op: Op, rec: OpRecord) -> None:
        self.w.task.signal = op.args["kind"]   # the field, not the op name

    def op_mmap_lock(self, op: Op, rec: OpRecord) -> None:
        self.w.task.mmap_lock_contended = op.contended

    def op_vcpu_state(self, op: Op, rec: OpRecord) -> None:
        v = self.w.vcpu
        for k in ("guest_mode", "smm", "async_pf", "apicv"):
            if op.args[k] is not None:
                setattr(v, k, op.args[k])

    # --- memslot events -------------------------------------------------------------------------
    def _slot(self, op: Op) -> Memslot:
        s = self.w.slots.by_id(op.as_id, op.slot)
        assert s is not None, "validated scenario names an existing memslot"
        return s

    def _flush_slot(self, s: Memslot) -> None:
        """``kvm_arch_flush_shadow_memslot``: zap every SPTE of the slot."""
        self.w.zap_gfns(s.as_id, s.base_gfn, s.base_gfn + s.npages)

    def op_memslot_create(self, op: Op, rec: OpRecord) -> None:
        w = self.w
        v = w.mm.by_name(op.vma)
        assert v is not None, "validated scenario: a memslot is created over an existing VMA"
        flags = (KVM_MEM_READONLY if op.readonly else 0) | (KVM_MEM_LOG_DIRTY_PAGES if op.log_dirty else 0)
        w.slots.add(Memslot(op.slot, op.as_id, op.gfn, op.pages, v.start + (op.offset << PAGE_SHIFT), flags))
        rec.vmm = {"ret": 0}

    def op_memslot_delete(self, op: Op, rec: OpRecord) -> None:
        s = self._slot(op)
        self._flush_slot(s)
        self.w.slots.remove(s)
        self.w.dirty.pop((s.as_id, s.id), None)
        rec.vmm = {"ret": 0}

    def op_memslot_move(self, op: Op, rec: OpRecord) -> None:
        s = self._slot(op)
        self._flush_slot(s)
        self.w.slots.move(s, op.gfn)
        s.flags &= ~KVM_MEMSLOT_INVALID
        rec.vmm = {"ret": 0}

    def op_memslot_flags(self, op: Op, rec: OpRecord) -> None:
        s = self._slot(op)
        if op.log_dirty and not s.dirty_log:       # enabling dirty logging write-protects the slot
            for (as_id, gfn), spte in list(self.w.sptes.items()):
                if as_id == s.as_id and s.contains(gfn):
                    if spte.level > 1:
                        self.w.zap_gfns(as_id, gfn, gfn + 1)
                    else:
                        spte.writable = False
        s.flags = (s.flags & ~KVM_MEM_LOG_DIRTY_PAGES) | (KVM_MEM_LOG_DIRTY_PAGES if op.log_dirty else 0)
        if not op.log_dirty:
            self.w.dirty.pop((s.as_id, s.id), None)
        rec.vmm = {"ret": 0}

    def op_memslot_invalidate(self, op: Op, rec: OpRecord) -> None:
        s = self._slot(op)
        s.flags |= KVM_MEMSLOT_INVALID             # a delete/move in flight: the INVALID copy is live
        self._flush_slot(s)
        rec.vmm = {"ret": 0}


_HANDLERS: dict[str, Callable[[Executor, Op, OpRecord], None]] = {
    name[len("op_"):]: fn for name, fn in vars(Executor).items() if name.startswith("op_")}
"""Op kind -> handler, built once: ``step`` runs per op of every backend, and a dict lookup is
cheaper than composing ``"op_" + kind`` and resolving it with ``getattr`` each time."""


def run_generation(gen: Generation, sc: Scenario, backend: str) -> Trace:
    return Executor(gen, sc).run(backend)



