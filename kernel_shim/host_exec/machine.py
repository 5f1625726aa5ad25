"""The worker's long-lived VM (one vCPU, the shim memfd shared with the parent) and the status it
leaves for the parent in the shim's status pages."""

from __future__ import annotations

import ctypes
import pickle
import signal
import struct
import time
from collections.abc import Sequence
from typing import Any

from kvmsim.scenario import Scenario

from .. import guest_code as g
from .. import kvm_ioctl as k
from ..layout import Layout
from ..vm import Vm
from .execution import Execution, Options
from .state import Pending

STATUS_PAGE = 10                    # shim pages [10, 64): status for the parent (never guest-mapped)
STATUS_RECORDS = STATUS_PAGE + 2
STATUS_END = g.PT_FIRST


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

    def status(self, state: int, records: list[dict[str, Any]], batch: Sequence[Pending] = ()) -> None:
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

    def prepare_shim(self, lay: Layout, gpas: list[int], cpl: int) -> str | None:
        """The shim region at the layout's GPA and memslot, identity page tables covering it and the
        accessed pages, and the vCPU in long mode at ``cpl``; kept from the previous execution where
        it fits.  Why it cannot be made, or None."""
        fresh = self.ptmap is None or (self.shim_slot, self.shim_gpa) != (lay.shim_slot, lay.shim_gpa)
        if not fresh:
            fresh = not self._reuse_ptmap(gpas)
        if fresh:
            why = self._new_shim(lay, gpas)
            if why is not None:
                return why
        assert self.ptmap is not None
        if self.cpl != cpl:
            g.long_mode_sregs(self.sregs, self.ptmap.cr3, cpl)
            self.cpl = cpl
            self.vm.set_sregs(self.sregs)
        return None

    def _reuse_ptmap(self, gpas: list[int]) -> bool:
        """Extend the current page tables to the accessed pages (A/D bits cleared); False if full."""
        assert self.ptmap is not None
        try:
            for gpa in gpas:
                if g.va_of(gpa) is not None:
                    self.ptmap.ensure(gpa)
                    self.ptmap.clear_ad(gpa)
        except OverflowError:
            return False
        return True

    def _new_shim(self, lay: Layout, gpas: list[int]) -> str | None:
        if self.shim_slot is not None:              # deleting a slot zaps every shadow page
            self.vm.delete_slot(self.shim_slot)
            self.shim_slot = None
        g.write_code(self.mem)
        self.ptmap = g.IdentityMap(lay.shim_gpa, self.mem)
        shim = [lay.shim_gpa + p * k.PAGE for p in list(range(g.STACK_PAGE + 1)) + [g.DOORBELL_PAGE]]
        for gpa in shim + gpas:
            if g.va_of(gpa) is not None:
                self.ptmap.ensure(gpa)
        r = self.vm.set_slot(lay.shim_slot, lay.shim_gpa, g.SHIM_PAGES * k.PAGE, self.shim_hva)
        if r < 0:
            return f"shim memslot: {k.errno_name(r)}"
        self.shim_slot, self.shim_gpa = lay.shim_slot, lay.shim_gpa
        self.sregs = self.vm.get_sregs()
        self.cpl = -1
        return None

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
