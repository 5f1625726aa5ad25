"""Guest accesses: consecutive ``access`` ops run as one batch of the guest loop (one exit at the
end), each access's exits and outcome recorded as the VMM sees them."""

from __future__ import annotations

import errno
import os
import signal
import struct
import time
from typing import TYPE_CHECKING, Any

from kvmsim.scenario import Op, Scenario

from .. import guest_code as g
from .. import kvm_ioctl as k
from ..faultpath import marker
from .memory import HostMemory
from .state import Pending, TaskState

if TYPE_CHECKING:
    from .machine import Machine

ST_IDLE, ST_RUNNING, ST_FATAL = 0, 1, 2
VCPU_WAYS = (("guest_mode", "the vCPU in guest mode needs a nested L2 guest"),
             ("smm", "SMM (address space 1) needs KVM_CAP_MULTI_ADDRESS_SPACE"),
             ("async_pf", "async PF needs a guest kernel that enables it (MSR + IDT)"))


class AccessBatches:
    def __init__(self, m: Machine, sc: Scenario, memory: HostMemory, task: TaskState, records: list[dict[str, Any]],
                 va: dict[int, int], regs: Any, doorbell: int) -> None:
        self.m, self.vm, self.sc, self.memory, self.task = m, m.vm, sc, memory, task
        self.records, self.va, self.regs, self.doorbell = records, va, regs, doorbell
        self.why: dict[int, str | None] = {}           # per page while no event runs
        self.run_seconds = 0.0
        self.status_due = False

    # --- which accesses can run ------------------------------------------------------------------
    def take(self, ops: list[Op], i: int) -> tuple[list[Pending], str | None]:
        """The batch starting at op i (empty: op i cannot be made real, and why)."""
        batch: list[Pending] = []
        why = None
        j = i
        while j < len(ops) and ops[j].kind == "access" and len(batch) < g.MAX_BATCH:
            why = self.unrealisable(ops[j])
            if why is not None:
                break
            a = ops[j].args
            if marker.ENABLED and any(p.gpa >> 12 == a["gpa"] >> 12 for p in batch):
                break                        # traced: one access per page and batch, so faults attribute
            batch.append(Pending(j, a["gpa"], self.va[a["gpa"]], a["write"], a["value"]))
            j += 1
            if self.task.signal != "none":
                break                        # a signal is consumed by the first KVM op
        return batch, why

    def unrealisable(self, op: Op) -> str | None:
        """Why this access cannot be made real now (None: it can).  Cached per page while no
        event runs (``forget`` empties the cache before every non-access op)."""
        gpa = op.args["gpa"]
        key = gpa >> 12
        if key in self.why and gpa in self.va:
            return self.why[key]
        why = self._unrealisable(gpa)
        if gpa in self.va:
            self.why[key] = why
        return why

    def forget(self) -> None:
        self.why.clear()

    def _unrealisable(self, gpa: int) -> str | None:
        if self.sc.world.seq_bits != 64:
            return "a 32-bit mmu notifier sequence (this kernel's is 64-bit)"
        if gpa not in self.va:
            return "gpa beyond the guest's MAXPHYADDR (48 bits)"
        for flag, why in VCPU_WAYS:
            if self.task.flags[flag]:
                return why
        if self.task.lock_contended:
            return "the mmap lock cannot be held contended around a KVM fault deterministically"
        if self.task.open_invalidations:
            return "an open mmu-notifier invalidation cannot be held from userspace"
        return self.memory.access_problem(gpa >> 12)

    # --- running a batch -------------------------------------------------------------------------
    def run(self, batch: list[Pending]) -> None:
        """Run the batch to its doorbell, one KVM_RUN per exit; a stuck access is a stall."""
        mem = self.m.mem
        g.set_batch(mem, [(p.va, p.write, p.value) for p in batch])
        self.m.status(ST_FATAL if self.task.signal == "fatal" else ST_RUNNING, self.records, batch)
        self.task.signal_sent = False
        if self.task.signal == "fatal":
            os.kill(os.getpid(), signal.SIGKILL)
        guard = 0
        self.status_due = False
        while True:
            if self.status_due:                # the parent's status, refreshed just before re-entering
                self.m.status(ST_RUNNING, self.records, batch)
                self.status_due = False
            r = self._enter()
            i = g.progress(mem)
            cur = batch[i] if i < len(batch) else None
            self.status_due = not (r.ret == 0 and r.exit_reason == k.KVM_EXIT_MMIO and r.mmio_gpa == self.doorbell)
            guard += 1
            if guard > 64 + 4 * len(batch):
                if cur is None:
                    break
                cur.vmm = {"outcome": "stall", "data": None, "exits": cur.exits}
                self._skip()
                guard = 0
                continue
            if not self._handle(r, cur):
                break
        self.task.deliver_pending()            # not consumed by a wait: delivered as the op ends
        self._finish(batch)

    def _enter(self) -> Any:
        run = self.vm.run_map
        assert run is not None
        struct.pack_into("<I", run, k.RUN_EXIT_REASON, 0)
        self.task.in_run = True
        t0 = time.perf_counter()
        r = self.vm.run()
        self.run_seconds += time.perf_counter() - t0
        self.task.in_run = False
        return r

    def _skip(self) -> None:
        """Past the current access, to the next one of the batch."""
        g.skip_current(self.m.mem)
        self.vm.set_regs(self.regs)

    def _handle(self, r: Any, cur: Pending | None) -> bool:
        """Record one KVM_RUN return on the current access; False: the batch is over."""
        if r.ret == -errno.EINTR:
            if cur is not None:
                cur.exits.append("EINTR")
            if self.task.signal == "pending" and self.task.signal_sent:
                self.task.signal = "none"
            return True
        if r.exit_reason == k.KVM_EXIT_MMIO and r.ret >= 0:
            return self._mmio(r, cur)
        if cur is None:
            return False
        if r.ret < 0:
            self._error(r, cur)
        else:
            cur.exits.append(r.name)
            cur.vmm = {"outcome": "exit", "exit_reason": r.name, "data": None, "exits": cur.exits}
        self._skip()
        return True

    def _error(self, r: Any, cur: Pending) -> None:
        name = k.errno_name(r.ret)
        cur.exits.append(name)
        cur.vmm = {"outcome": "efault" if name == "EFAULT" else "errno", "data": None, "exits": cur.exits}
        run = self.vm.run_map
        assert run is not None
        reason = struct.unpack_from("<I", run, k.RUN_EXIT_REASON)[0]
        if reason == k.KVM_EXIT_MEMORY_FAULT:
            fl, gpa, size = struct.unpack_from("<QQQ", run, k.RUN_MMIO_PHYS)
            cur.vmm["memory_fault"] = {"flags": fl, "gpa": gpa, "size": size}

    def _mmio(self, r: Any, cur: Pending | None) -> bool:
        if r.mmio_gpa == self.doorbell and r.mmio_write:
            return False
        if cur is None:
            return False
        cur.exits.append("MMIO")
        cur.vmm = {"outcome": "mmio", "data": None, "exits": cur.exits,
                   "mmio": {"gpa": r.mmio_gpa, "len": r.mmio_len, "is_write": r.mmio_write,
                            "data": r.mmio_data if r.mmio_write else None}}
        if not r.mmio_write:
            self.vm.complete_mmio_read(0)
        return True

    def _finish(self, batch: list[Pending]) -> None:
        results = g.results(self.m.mem, len(batch))
        for n, p in enumerate(batch):
            if p.vmm is None:
                p.vmm = {"outcome": "ok", "data": None if p.write else results[n], "exits": p.exits}
            self.records.append({"index": p.index, "op": "access", "vmm": p.vmm})
