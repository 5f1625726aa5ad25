"""One scenario's execution on the real kernel: set-up, then ops in order (consecutive accesses as
one batch, every other op as an event), then teardown; the records in the sim backends' trace
schema (docs/traces.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmsim.scenario import Scenario

from .. import guest_code as g
from .. import kvm_ioctl as k
from .. import layout
from ..faultpath import marker
from .batches import AccessBatches
from .events import Events
from .memory import HostMemory
from .state import TaskState

if TYPE_CHECKING:
    from .machine import Machine


@dataclass
class Options:
    cpl: int = 3                    # 3: native fault path; 0: the instruction emulator
    resolve_io: bool = True         # False: needs_io pages are never filled (I/O that hangs)
    region_v1: bool = False         # use KVM_SET_USER_MEMORY_REGION even where ...REGION2 exists


class Execution:
    def __init__(self, m: Machine, sc: Scenario, opts: Options) -> None:
        self.m, self.sc, self.opts = m, sc, opts
        self.vm = m.vm
        self.records: list[dict[str, Any]] = []
        self.task = TaskState()
        self.memory = HostMemory(m, self.task, opts.resolve_io)
        self.events = Events(self.vm, self.memory, self.task, sc.world)
        self.batches: AccessBatches | None = None
        self.current = 0

    def setup(self) -> str | None:
        """The shim, the guest's page tables, the task, the VMAs and memslots; why the scenario
        cannot run here at all, or None."""
        sc, w = self.sc, self.sc.world
        lay = layout.choose(sc)
        if lay is None:
            return "no free GPA window or memslot id for the shim region"
        self.memory.drop_stale_slots(w)
        accessed = {op.args["gpa"] for op in sc.ops if op.kind == "access"}
        va = {gpa: va for gpa in accessed for va in [g.va_of(gpa & ~0x7)] if va is not None}
        gpas = sorted({gpa & ~0xFFF for gpa in va})          # one PTE per distinct page
        why = self.m.prepare_shim(lay, gpas, self.opts.cpl)
        if why is not None:
            return why
        regs = g.initial_regs(lay.shim_gpa)
        self.vm.set_regs(regs)
        doorbell = lay.shim_gpa + g.DOORBELL_PAGE * k.PAGE
        self.batches = AccessBatches(self.m, sc, self.memory, self.task, self.records, va, regs, doorbell)
        t = self.task
        t.signal, t.lock_contended = w.signal, w.mmap_lock_contended
        t.flags.update(guest_mode=w.guest_mode, smm=w.smm, async_pf=w.async_pf, apicv=w.apicv)
        return self.memory.build(w)

    def teardown(self) -> None:
        self.memory.release()

    def run(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": "native-cpl3" if self.opts.cpl == 3 else "emulated",
                                "memslot_ioctl": "KVM_SET_USER_MEMORY_REGION2" if self.vm.region2
                                else "KVM_SET_USER_MEMORY_REGION"}
        why = self.setup()
        if why is not None:
            meta["not_realisable"] = why
            self.records[:] = [{"index": i, "op": op.kind, "vmm": {"not_realisable": why}}
                               for i, op in enumerate(self.sc.ops)]
            return {"records": self.records, "meta": meta}
        meta.update(self._ignored())
        i = 0
        while i < len(self.sc.ops):
            self.current = i
            i = self._step(i)
        if self.memory.unrealised:
            meta["unrealised"] = self.memory.unrealised
        assert self.batches is not None
        meta["kvm_run_seconds"] = round(self.batches.run_seconds, 6)
        return {"records": self.records, "meta": meta}

    def _ignored(self) -> dict[str, str]:
        """World settings this host cannot apply: unrealised, or noted in the meta as ignored."""
        w, meta = self.sc.world, {}
        if w.seq_bits != 64:
            self.memory.unrealised.append("notifier.seq_bits 32: mmu_invalidate_seq is an unsigned long on x86-64")
        if w.seq:
            meta["seq_ignored"] = "the mmu notifier sequence cannot be set from userspace (not VMM-observable)"
        if w.allow_unsafe_mappings != _host_unsafe():
            meta["allow_unsafe_mappings_ignored"] = "module parameter; affects kvm_vcpu_map only (not reached here)"
        return meta

    def _step(self, i: int) -> int:
        """Run op i (an access: the batch starting there); the index of the next op to run."""
        op, batches = self.sc.ops[i], self.batches
        assert batches is not None
        marker.mark(i)                              # fault-path tracing: what follows is op i's
        if op.kind != "access":
            batches.forget()
            self.records.append(self.events.record(i, op))
            return i + 1
        batch, why = batches.take(self.sc.ops, i)
        if not batch:
            self.records.append({"index": i, "op": "access", "vmm": {"not_realisable": why}})
            return i + 1
        batches.run(batch)
        return i + len(batch)

    def partial(self, why: str) -> dict[str, Any]:
        """The records up to an exception in this process (a shim failure, not a kernel one): the
        op that was running is a crash and the rest never ran.  The parent replaces the worker."""
        done = {r["index"] for r in self.records}
        cur = self.current
        recs = list(self.records)
        for i, op in enumerate(self.sc.ops):
            if i in done:
                continue
            if i == cur:
                vmm: dict[str, Any] = ({"outcome": "crash", "data": None, "exits": []} if op.kind == "access"
                                       else {"crash": why})
            else:
                vmm = {"skipped": f"the execution ended at op {cur} (crash)"}
            recs.append({"index": i, "op": op.kind, "vmm": vmm})
        recs.sort(key=lambda r: r["index"])
        return {"records": recs, "meta": {"lost": "crash", "lost_at": cur, "reason": why}}


def _host_unsafe() -> bool:
    try:
        with open("/sys/module/kvm/parameters/allow_unsafe_mappings") as fh:
            return fh.read().strip() == "Y"
    except OSError:
        return False
