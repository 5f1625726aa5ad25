"""Executes one scenario on the real kernel (inside the worker child) and records VMM-level
observations in the sim backends' trace schema (docs/traces.md).

Consecutive guest accesses run as one batch of the guest loop (one exit at the end); host and
memslot events run between batches.  Anything the scenario asks for that this host cannot make
real is reported on the op concerned as ``{"not_realisable": reason}``; API-level ops are
``{"not_observable": reason}``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kvmsim.constants import KVM_USER_MEM_SLOTS
from kvmsim.scenario import API_OPS, Op, Scenario

from . import guest_code as g
from . import kvm_ioctl as k
from . import layout, uffd
from .backings import Backing, Unrealisable
from .vm import Vm

NOT_OBSERVABLE = {
    "lookup": "the gfn→pfn lookup is internal to KVM; a VMM sees only KVM_RUN results",
    "gfn_to_page": "gfn_to_page is internal to KVM (nested/APIC consumers); not reachable from /dev/kvm",
    "vcpu_map": "kvm_vcpu_map is used by nested virtualisation; this host runs no L2 guest",
    "vcpu_unmap": "kvm_vcpu_unmap is used by nested virtualisation; this host runs no L2 guest",
    "x86_fault": "kvm_mmu_page_fault's return value is internal; see the access op for its VMM effect",
}
STATUS_PAGE = 10                    # shim pages [10, 64): status for the parent (never guest-mapped)
STATUS_BATCH = STATUS_PAGE + 1
STATUS_RECORDS = STATUS_PAGE + 2
STATUS_END = g.PT_FIRST
ST_IDLE, ST_RUNNING, ST_FATAL = 0, 1, 2


@dataclass
class Options:
    cpl: int = 3                    # 3: native fault path; 0: the instruction emulator
    resolve_io: bool = True         # False: needs_io pages are never filled (I/O that hangs)
    region_v1: bool = False         # use KVM_SET_USER_MEMORY_REGION even where ...REGION2 exists


@dataclass
class Slot:
    id: int
    gfn: int
    pages: int
    vma: str
    offset: int
    flags: int


@dataclass
class Pending:
    """One access of the current batch."""
    index: int
    gpa: int
    va: int
    write: bool
    value: int
    exits: list[str] = field(default_factory=list)
    vmm: dict[str, Any] | None = None


class Machine:
    """The worker's long-lived VM: one vCPU and the shim memfd (shared with the parent)."""

    def __init__(self, shim_fd: int) -> None:
        self.kvm = k.KvmHandle.open()
        self.vm = Vm.create(self.kvm)
        self.region2 = self.vm.region2
        self.shim_fd = shim_fd
        size = g.SHIM_PAGES * k.PAGE
        self.shim_hva = k.mmap(0, size, k.PROT_READ | k.PROT_WRITE, k.MAP_SHARED, shim_fd, 0)
        self.mem = memoryview((ctypes.c_char * size).from_address(self.shim_hva)).cast("B")
        self.shim_slot: int | None = None
        self.shim_gpa = -1
        self.ptmap: g.IdentityMap | None = None
        self.cpl = -1
        self.sregs = k.Sregs()
        self.executions = 0
        signal.signal(signal.SIGUSR1, lambda *_: None)

    def close(self) -> None:
        self.mem.release()
        k.munmap(self.shim_hva, g.SHIM_PAGES * k.PAGE)
        self.vm.close()
        self.kvm.close()

    def status(self, state: int, records: list[dict[str, Any]], batch: list[Pending] = ()) -> None:
        """What the parent needs if this process hangs or dies: the records so far and the
        accesses of the batch in flight (the guest's progress is in the control block)."""
        base = STATUS_PAGE * k.PAGE
        index = struct.pack(f"<{len(batch)}I", *(p.index for p in batch))
        write = bytes(p.write for p in batch)
        seen = {n: (p.exits, p.vmm) for n, p in enumerate(batch) if p.exits or p.vmm}
        blob = pickle.dumps((records, index, write, seen), protocol=pickle.HIGHEST_PROTOCOL)
        room = (STATUS_END - STATUS_RECORDS) * k.PAGE
        if len(blob) > room:
            blob = pickle.dumps(([], b"", b"", {}), protocol=pickle.HIGHEST_PROTOCOL)
        self.mem[STATUS_RECORDS * k.PAGE:STATUS_RECORDS * k.PAGE + len(blob)] = blob
        struct.pack_into("<QQQQ", self.mem, base, self.executions, state, 0, len(blob))

    def execute(self, sc: Scenario, opts: Options) -> dict[str, Any]:
        self.executions += 1
        self.vm.region2 = self.region2 and not opts.region_v1
        struct.pack_into("<Q", self.mem, STATUS_PAGE * k.PAGE + 24, 0)
        t0 = time.perf_counter()
        ex = Execution(self, sc, opts)
        try:
            out = ex.run()
        except Exception as e:                      # noqa: BLE001 - a shim failure, reported per op
            out = ex.partial(f"{type(e).__name__}: {e}")
        finally:
            ex.teardown()
        out["meta"]["worker_seconds"] = round(time.perf_counter() - t0, 6)
        return out


class Execution:
    def __init__(self, m: Machine, sc: Scenario, opts: Options) -> None:
        self.m, self.sc, self.opts = m, sc, opts
        self.vm = m.vm
        self.records: list[dict[str, Any]] = []
        self.backings: dict[str, Backing] = {}
        self.slots: dict[int, Slot] = {}
        self.bad_slots: dict[int, str] = {}          # slot id -> why accesses to it are not real
        self.uffd_fd = -1
        self.resolver: uffd.Resolver | None = None
        self.signal = "none"
        self.in_run = False
        self.flags = {"guest_mode": False, "smm": False, "async_pf": False, "apicv": True}
        self.lock_contended = False
        self.open_invalidations = 0
        self.unrealised: list[str] = []
        self.signal_sent = False
        self.current = 0
        self._why: dict[int, str | None] = {}
        self.run_seconds = 0.0
        self.dead_vmas: dict[str, str] = {}

    # --- setup -----------------------------------------------------------------------------
    def setup(self) -> str | None:
        sc, w = self.sc, self.sc.world
        lay = layout.choose(sc)
        if lay is None:
            return "no free GPA window or memslot id for the shim region"
        self.lay = lay
        m = self.m
        self.drop_stale_slots()
        accessed = {op.args["gpa"] for op in sc.ops if op.kind == "access"}
        self.va = {gpa: va for gpa in accessed for va in [g.va_of(gpa & ~0x7)] if va is not None}
        gpas = sorted({gpa & ~0xFFF for gpa in self.va})          # one PTE per distinct page
        fresh = m.ptmap is None or (m.shim_slot, m.shim_gpa) != (lay.shim_slot, lay.shim_gpa)
        if not fresh:
            try:
                for gpa in gpas:
                    if g.va_of(gpa) is not None:
                        m.ptmap.ensure(gpa)
                        m.ptmap.clear_ad(gpa)
            except OverflowError:
                fresh = True
        if fresh:
            if m.shim_slot is not None:              # deleting a slot zaps every shadow page
                self.vm.delete_slot(m.shim_slot)
                m.shim_slot = None
            g.write_code(m.mem)
            m.ptmap = g.IdentityMap(lay.shim_gpa, m.mem)
            shim = [lay.shim_gpa + p * k.PAGE for p in list(range(g.STACK_PAGE + 1)) + [g.DOORBELL_PAGE]]
            for gpa in shim + gpas:
                if g.va_of(gpa) is not None:
                    m.ptmap.ensure(gpa)
            r = self.vm.set_slot(lay.shim_slot, lay.shim_gpa, g.SHIM_PAGES * k.PAGE, m.shim_hva)
            if r < 0:
                return f"shim memslot: {k.errno_name(r)}"
            m.shim_slot, m.shim_gpa = lay.shim_slot, lay.shim_gpa
            m.sregs = self.vm.get_sregs()
            m.cpl = -1
        if m.cpl != self.opts.cpl:
            g.long_mode_sregs(m.sregs, m.ptmap.cr3, self.opts.cpl)
            m.cpl = self.opts.cpl
            self.vm.set_sregs(m.sregs)
        self.regs = g.initial_regs(lay.shim_gpa)
        self.vm.set_regs(self.regs)
        self.doorbell = lay.shim_gpa + g.DOORBELL_PAGE * k.PAGE

        self.signal = w.signal
        self.lock_contended = w.mmap_lock_contended
        self.flags.update(guest_mode=w.guest_mode, smm=w.smm, async_pf=w.async_pf, apicv=w.apicv)
        for i, v in enumerate(w.vmas):
            try:
                b = Backing.create(v, layout.host_address(i))
            except Unrealisable as e:
                self.bad_vma(v.name, str(e))
                continue
            self.backings[v.name] = b
            if b.missing:
                self.need_uffd(b)
        for s in w.memslots:
            if s.internal is not None:
                self.bad_slots[s.id] = f"internal memslot {s.internal} is created by KVM, not by the VMM"
                self.slots[s.id] = Slot(s.id, s.gfn, s.pages, s.vma, s.offset, 0)
                continue
            if s.as_id != 0:
                self.unrealised.append(f"memslot {s.id} in address space {s.as_id}: no KVM_CAP_MULTI_ADDRESS_SPACE")
                continue
            r = self.create_slot(s.id, s.gfn, s.pages, s.vma, s.offset, s.readonly, s.log_dirty)
            if r < 0:
                return f"memslot {s.id}: KVM_SET_USER_MEMORY_REGION2 failed: {k.errno_name(r)}"
        return None

    def bad_vma(self, name: str, why: str) -> None:
        self.unrealised.append(f"vma {name}: {why}")
        self.dead_vmas[name] = why

    def need_uffd(self, b: Backing) -> int:
        if self.uffd_fd < 0:
            self.uffd_fd = uffd.open_uffd()
            self.resolver = uffd.Resolver(self.uffd_fd, self.policy, self.fill)
            self.resolver.start()
        return b.register_missing(self.uffd_fd)

    def backing_at(self, hva: int) -> Backing | None:
        for b in self.backings.values():
            if b.mapped and b.addr <= hva < b.addr + b.length:
                return b
        return None

    def policy(self, hva: int, write: bool) -> str:
        b = self.backing_at(hva)
        page = b.page_of(hva) if b else -1
        if b is not None and page in b.missing:
            if self.in_run and self.signal == "pending" and not self.signal_sent:
                self.signal_sent = True
                return uffd.SIGNAL
            if not self.opts.resolve_io and self.in_run:
                return uffd.HOLD
        return uffd.RESOLVE

    def fill(self, hva: int, write: bool) -> int:
        b = self.backing_at(hva)
        if b is None:
            return -errno.EFAULT
        return b.fill(self.uffd_fd, hva, write)

    def drop_stale_slots(self) -> None:
        """Memslots left by the previous execution stay only if this scenario starts with the
        very same one (id, GPA, size, host address, flags); the others are deleted first."""
        names = [v.name for v in self.sc.world.vmas]
        want = {}
        for s in self.sc.world.memslots:
            if s.internal is None and s.as_id == 0:
                flags = (k.KVM_MEM_READONLY if s.readonly else 0) | (k.KVM_MEM_LOG_DIRTY_PAGES if s.log_dirty else 0)
                hva = layout.host_address(names.index(s.vma)) + s.offset * k.PAGE
                want[s.id] = (s.gfn << 12, s.pages * k.PAGE, hva, flags)
        for sid, r in list(self.vm.slots.items()):
            if sid != self.m.shim_slot and want.get(sid) != (r.guest_phys_addr, r.memory_size,
                                                              r.userspace_addr, r.flags):
                self.vm.delete_slot(sid)

    def create_slot(self, sid: int, gfn: int, pages: int, vma: str, offset: int, ro: bool, log: bool) -> int:
        b = self.backings.get(vma)
        if b is None:
            self.bad_slots[sid] = f"vma {vma} could not be created: {self.dead_vmas.get(vma, '?')}"
            self.slots[sid] = Slot(sid, gfn, pages, vma, offset, 0)
            if sid != self.m.shim_slot:
                self.vm.delete_slot(sid)
            return 0
        flags = (k.KVM_MEM_READONLY if ro else 0) | (k.KVM_MEM_LOG_DIRTY_PAGES if log else 0)
        cur = self.vm.slots.get(sid)
        if cur is not None and (cur.guest_phys_addr, cur.memory_size, cur.userspace_addr, cur.flags) == \
                (gfn << 12, pages * k.PAGE, b.hva(offset), flags):
            self.slots[sid] = Slot(sid, gfn, pages, vma, offset, flags)
            return 0                                 # kept from the previous execution
        r = self.vm.set_slot(sid, gfn << 12, pages * k.PAGE, b.hva(offset), flags)
        if r == 0:
            self.slots[sid] = Slot(sid, gfn, pages, vma, offset, flags)
        return r

    def teardown(self) -> None:
        """Release every mapping and fd of the execution.  Memslots stay (the next execution
        reuses identical ones): unmapping the backings zapped their SPTEs through the mmu
        notifier, and dirty bitmaps are emptied here."""
        if self.resolver is not None:
            self.resolver.stop()
        for b in self.backings.values():
            b.release()
        if self.uffd_fd >= 0:
            os.close(self.uffd_fd)
            self.uffd_fd = -1
        for sid, r in self.vm.slots.items():
            if sid != self.m.shim_slot and r.flags & k.KVM_MEM_LOG_DIRTY_PAGES:
                self.vm.dirty_log(sid, r.memory_size // k.PAGE)

    # --- run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": "native-cpl3" if self.opts.cpl == 3 else "emulated",
                                "memslot_ioctl": "KVM_SET_USER_MEMORY_REGION2" if self.vm.region2
                                else "KVM_SET_USER_MEMORY_REGION"}
        why = self.setup()
        if why is not None:
            meta["not_realisable"] = why
            self.records = [{"index": i, "op": op.kind, "vmm": {"not_realisable": why}}
                            for i, op in enumerate(self.sc.ops)]
            return {"records": self.records, "meta": meta}
        w = self.sc.world
        if w.seq_bits != 64:
            self.unrealised.append("notifier.seq_bits 32: mmu_invalidate_seq is an unsigned long on x86-64")
        if w.seq:
            meta["seq_ignored"] = "the mmu notifier sequence cannot be set from userspace (not VMM-observable)"
        if w.allow_unsafe_mappings != _host_unsafe():
            meta["allow_unsafe_mappings_ignored"] = "module parameter; affects kvm_vcpu_map only (not reached here)"
        ops = self.sc.ops
        i = 0
        while i < len(ops):
            op = ops[i]
            self.current = i
            if op.kind == "access":
                j = i
                batch: list[Pending] = []
                while j < len(ops) and ops[j].kind == "access" and len(batch) < g.MAX_BATCH:
                    why = self.access_unrealisable(ops[j])
                    if why is not None:
                        break
                    batch.append(Pending(j, ops[j].args["gpa"], self.va[ops[j].args["gpa"]],
                                         ops[j].args["write"], ops[j].args["value"]))
                    j += 1
                    if self.signal != "none":
                        break                        # a signal is consumed by the first KVM op
                if not batch:
                    self.records.append({"index": i, "op": "access", "vmm": {"not_realisable": why}})
                    i += 1
                    continue
                self.run_batch(batch)
                i = j
                continue
            self._why.clear()
            self.records.append(self.event(i, op))
            i += 1
        if self.unrealised:
            meta["unrealised"] = self.unrealised
        meta["kvm_run_seconds"] = round(self.run_seconds, 6)
        return {"records": self.records, "meta": meta}

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

    def access_unrealisable(self, op: Op) -> str | None:
        """Why this access cannot be made real now (None: it can).  Cached per page while no
        event runs (the cache is emptied by every non-access op)."""
        gpa = op.args["gpa"]
        key = gpa >> 12
        if key in self._why and gpa in self.va:
            return self._why[key]
        why = self._access_unrealisable(gpa)
        if gpa in self.va:
            self._why[key] = why
        return why

    def _access_unrealisable(self, gpa: int) -> str | None:
        if self.sc.world.seq_bits != 64:
            return "a 32-bit mmu notifier sequence (this kernel's is 64-bit)"
        if gpa not in self.va:
            return "gpa beyond the guest's MAXPHYADDR (48 bits)"
        for flag, why in (("guest_mode", "the vCPU in guest mode needs a nested L2 guest"),
                          ("smm", "SMM (address space 1) needs KVM_CAP_MULTI_ADDRESS_SPACE"),
                          ("async_pf", "async PF needs a guest kernel that enables it (MSR + IDT)")):
            if self.flags[flag]:
                return why
        if self.lock_contended:
            return "the mmap lock cannot be held contended around a KVM fault deterministically"
        if self.open_invalidations:
            return "an open mmu-notifier invalidation cannot be held from userspace"
        gfn = gpa >> 12
        for s in self.slots.values():
            if s.gfn <= gfn < s.gfn + s.pages:
                if s.id in self.bad_slots:
                    return self.bad_slots[s.id]
                b = self.backings.get(s.vma)
                page = s.offset + gfn - s.gfn
                if b is not None and b.mapped and page in b.tainted:
                    return b.tainted[page]
                if b is not None and b.mapped and b.kind == "hugetlb" and page in b.missing:
                    return "needs_io on a hugetlb page"
                return None
        return None

    def run_batch(self, batch: list[Pending]) -> None:
        vm, mem = self.vm, self.m.mem
        g.set_batch(mem, [(p.va, p.write, p.value) for p in batch])
        self.m.status(ST_FATAL if self.signal == "fatal" else ST_RUNNING, self.records, batch)
        self.signal_sent = False
        if self.signal == "fatal":
            os.kill(os.getpid(), signal.SIGKILL)
        run = vm.run_map
        assert run is not None
        guard = 0
        self._status_due = None
        while True:
            if self._status_due is not None:
                self.m.status(ST_RUNNING, self.records, batch)
                self._status_due = None
            struct.pack_into("<I", run, k.RUN_EXIT_REASON, 0)
            self.in_run = True
            t0 = time.perf_counter()
            r = vm.run()
            self.run_seconds += time.perf_counter() - t0
            self.in_run = False
            i = g.progress(mem)
            cur = batch[i] if i < len(batch) else None
            if not (r.ret == 0 and r.exit_reason == k.KVM_EXIT_MMIO and r.mmio_gpa == self.doorbell):
                self.note_exit(batch, i)
            guard += 1
            if guard > 64 + 4 * len(batch):
                if cur is not None:
                    cur.vmm = {"outcome": "stall", "data": None, "exits": cur.exits}
                    g.skip_current(mem)
                    vm.set_regs(self.regs)
                    guard = 0
                    continue
                break
            if r.ret == -errno.EINTR:
                if cur is not None:
                    cur.exits.append("EINTR")
                if self.signal == "pending" and self.signal_sent:
                    self.signal = "none"
                continue
            if r.ret < 0:
                if cur is None:
                    break
                name = k.errno_name(r.ret)
                cur.exits.append(name)
                cur.vmm = {"outcome": "efault" if name == "EFAULT" else "errno", "data": None, "exits": cur.exits}
                reason = struct.unpack_from("<I", run, k.RUN_EXIT_REASON)[0]
                if reason == k.KVM_EXIT_MEMORY_FAULT:
                    fl, gpa, size = struct.unpack_from("<QQQ", run, k.RUN_MMIO_PHYS)
                    cur.vmm["memory_fault"] = {"flags": fl, "gpa": gpa, "size": size}
                g.skip_current(mem)
                vm.set_regs(self.regs)
                continue
            if r.exit_reason == k.KVM_EXIT_MMIO:
                if r.mmio_gpa == self.doorbell and r.mmio_write:
                    break
                if cur is None:
                    break
                cur.exits.append("MMIO")
                cur.vmm = {"outcome": "mmio", "data": None, "exits": cur.exits,
                           "mmio": {"gpa": r.mmio_gpa, "len": r.mmio_len, "is_write": r.mmio_write,
                                    "data": r.mmio_data if r.mmio_write else None}}
                if not r.mmio_write:
                    vm.complete_mmio_read(0)
                continue
            if cur is None:
                break
            cur.exits.append(r.name)
            cur.vmm = {"outcome": "exit", "exit_reason": r.name, "data": None, "exits": cur.exits}
            g.skip_current(mem)
            vm.set_regs(self.regs)
        if self.signal == "pending":                 # not consumed by a wait: delivered as the op ends
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            self.signal = "none"
        results = g.results(self.m.mem, len(batch))
        for n, p in enumerate(batch):
            if p.vmm is None:
                p.vmm = {"outcome": "ok", "data": None if p.write else results[n], "exits": p.exits}
            self.records.append({"index": p.index, "op": "access", "vmm": p.vmm})

    def note_exit(self, batch: list[Pending], i: int) -> None:
        """Refresh the parent's status after the exit is handled (just before re-entering)."""
        self._status_due = (batch, i)

    # --- events ----------------------------------------------------------------------------
    def event(self, i: int, op: Op) -> dict[str, Any]:
        rec: dict[str, Any] = {"index": i, "op": op.kind}
        if op.kind in API_OPS:
            rec["api"] = {"not_observable": NOT_OBSERVABLE[op.kind]}
            if self.signal == "pending":           # as in the model: a KVM op ends, the signal is delivered
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
                self.signal = "none"
            return rec
        handler = getattr(self, "ev_" + op.kind)
        out = handler(op)
        if out is not None:
            rec["vmm"] = out
        return rec

    @staticmethod
    def _ret(r: int) -> int | str:
        return 0 if r >= 0 else "-" + k.errno_name(r)

    def _backing(self, op: Op) -> Backing | dict[str, Any]:
        b = self.backings.get(op.args["vma"])
        if b is None:
            return {"not_realisable": f"vma {op.args['vma']} was not realised"}
        return b

    def ev_get_dirty_log(self, op: Op) -> dict[str, Any]:
        a = op.args
        if a["as_id"] != 0:
            return {"not_realisable": "address space 1 needs KVM_CAP_MULTI_ADDRESS_SPACE"}
        if self.sc.world.seq_bits != 64:
            return {"not_realisable": "a 32-bit mmu notifier sequence (this kernel's is 64-bit)"}
        s = self.slots.get(a["slot"])
        if s is None or s.id in self.bad_slots:
            return {"not_realisable": self.bad_slots.get(a["slot"], "memslot was not realised")}
        r, bits = self.vm.dirty_log(s.id, s.pages)
        return {"ret": self._ret(r), "dirty": bits}

    def ev_madvise(self, op: Op) -> dict[str, Any]:
        b = self._backing(op)
        if isinstance(b, dict):
            return b
        if not b.mapped:
            return {"ret": "-ENOMEM"}
        return {"ret": self._ret(b.madvise(op.args["page"], op.args["count"]))}

    def ev_mprotect(self, op: Op) -> dict[str, Any]:
        b = self._backing(op)
        if isinstance(b, dict):
            return b
        return {"ret": self._ret(b.mprotect(op.args["prot"]))}

    def ev_munmap(self, op: Op) -> dict[str, Any]:
        b = self._backing(op)
        if isinstance(b, dict):
            return b
        return {"ret": self._ret(b.munmap())}

    def ev_page_state(self, op: Op) -> dict[str, Any]:
        b = self._backing(op)
        if isinstance(b, dict):
            return b
        r = b.set_state(op.args["page"], op.args["state"])
        if r == 0 and b.missing and b.kind != "hugetlb":
            r = self.need_uffd(b)
        if op.args["page"] in b.tainted:
            return {"not_realisable": b.tainted[op.args["page"]]}
        return {"ret": self._ret(r)}

    def ev_pte(self, op: Op) -> dict[str, Any]:
        b = self._backing(op)
        why = "perf ring-buffer PTEs cannot be changed one by one from userspace"
        if isinstance(b, Backing):
            b.tainted[op.args["page"]] = why
        return {"not_realisable": why}

    def ev_invalidate_begin(self, op: Op) -> dict[str, Any]:
        self.open_invalidations += 1
        return {"not_realisable": "an mmu-notifier invalidation cannot be opened from userspace without its end"}

    def ev_invalidate_end(self, op: Op) -> dict[str, Any]:
        self.open_invalidations = max(0, self.open_invalidations - 1)
        return {"not_realisable": "an mmu-notifier invalidation cannot be opened from userspace without its end"}

    def ev_signal(self, op: Op) -> None:
        self.signal = op.args["kind"]
        return None

    def ev_mmap_lock(self, op: Op) -> None:
        self.lock_contended = op.args["contended"]
        return None

    def ev_vcpu_state(self, op: Op) -> None:
        for key in ("guest_mode", "smm", "async_pf", "apicv"):
            if op.args[key] is not None:
                self.flags[key] = op.args[key]
        return None

    def ev_memslot_create(self, op: Op) -> dict[str, Any]:
        a = op.args
        if a["as_id"] != 0:
            return {"not_realisable": "address space 1 needs KVM_CAP_MULTI_ADDRESS_SPACE"}
        return {"ret": self._ret(self.create_slot(a["slot"], a["gfn"], a["pages"], a["vma"], a["offset"],
                                                  a["readonly"], a["log_dirty"]))}

    def _slot_op(self, op: Op) -> Slot | dict[str, Any]:
        a = op.args
        if a["as_id"] != 0:
            return {"not_realisable": "address space 1 needs KVM_CAP_MULTI_ADDRESS_SPACE"}
        s = self.slots.get(a["slot"])
        if s is None:
            return {"not_realisable": "memslot was not realised"}
        return s

    def ev_memslot_delete(self, op: Op) -> dict[str, Any]:
        s = self._slot_op(op)
        if isinstance(s, dict):
            return s
        del self.slots[s.id]
        why = self.bad_slots.pop(s.id, None)
        if why is not None and not why.startswith("memslot in flight"):
            return {"not_realisable": why}
        return {"ret": self._ret(self.vm.delete_slot(s.id))}

    def ev_memslot_move(self, op: Op) -> dict[str, Any]:
        s = self._slot_op(op)
        if isinstance(s, dict):
            return s
        if s.id in self.bad_slots and s.id >= KVM_USER_MEM_SLOTS:
            return {"not_realisable": self.bad_slots[s.id]}
        s.gfn = op.args["gfn"]
        if s.id in self.bad_slots:
            if self.bad_slots[s.id].startswith("memslot in flight"):
                del self.bad_slots[s.id]
            else:
                return {"not_realisable": self.bad_slots[s.id]}
        b = self.backings[s.vma]
        return {"ret": self._ret(self.vm.set_slot(s.id, s.gfn << 12, s.pages * k.PAGE, b.hva(s.offset), s.flags))}

    def ev_memslot_flags(self, op: Op) -> dict[str, Any]:
        s = self._slot_op(op)
        if isinstance(s, dict):
            return s
        if s.id in self.bad_slots:
            return {"not_realisable": self.bad_slots[s.id]}
        flags = (s.flags & ~k.KVM_MEM_LOG_DIRTY_PAGES) | (k.KVM_MEM_LOG_DIRTY_PAGES if op.args["log_dirty"] else 0)
        b = self.backings[s.vma]
        r = self.vm.set_slot(s.id, s.gfn << 12, s.pages * k.PAGE, b.hva(s.offset), flags)
        if r == 0:
            s.flags = flags
        return {"ret": self._ret(r)}

    def ev_memslot_invalidate(self, op: Op) -> dict[str, Any]:
        s = self._slot_op(op)
        if isinstance(s, dict):
            return s
        why = "memslot in flight (a delete/move half done) cannot be held from userspace"
        self.bad_slots.setdefault(s.id, why)
        return {"not_realisable": why}


def _host_unsafe() -> bool:
    try:
        with open("/sys/module/kvm/parameters/allow_unsafe_mappings") as fh:
            return fh.read().strip() == "Y"
    except OSError:
        return False

