"""guest_memfd on this host: a memslot backed by ``KVM_CREATE_GUEST_MEMFD`` (flags ``MMAP`` |
``INIT_SHARED``, v6.18 non-confidential VMs), checked with the CPL3 access loop.

Scenarios never use it: faults on a guest_memfd memslot are served by ``kvm_gmem_get_pfn``, not by
``hva_to_pfn``, so it is outside the gfn→pfn APIs under test, and the scenario language has no
such VMA.  Run as ``python -m kernel_shim.gmem`` (a child process: it enters KVM_RUN).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

from kvmsim.scenario import loads_scenario

from . import guest_code as g
from . import kvm_ioctl as k
from .host_exec import Machine, Options

GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1
WARMUP = """
world:
  vmas: [{name: ram, pages: 1}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000}
  - access: {gpa: 0x100008}
"""


def check() -> dict:
    fd = k.memfd_create("pfndiff-gmem-shim")
    os.ftruncate(fd, g.SHIM_PAGES * k.PAGE)
    m = Machine(fd)
    m.execute(loads_scenario(WARMUP), Options())        # shim slot and page tables for gpa 0x100000
    vm = m.vm
    gfd = k.ioctl(vm.fd, k.KVM_CREATE_GUEST_MEMFD,
                  k.CreateGuestMemfd(4 * k.PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED))
    if gfd < 0:
        return {"ok": False, "why": f"KVM_CREATE_GUEST_MEMFD: {k.errno_name(gfd)}"}
    hva = k.mmap(0, 4 * k.PAGE, k.PROT_READ | k.PROT_WRITE, k.MAP_SHARED, gfd, 0)
    ctypes.memset(hva, 0x5A, 8)
    vm.delete_slot(0)
    r = vm.set_slot(0, 0x100000, 4 * k.PAGE, hva, k.KVM_MEM_GUEST_MEMFD, gmem_fd=gfd)
    if r < 0:
        return {"ok": False, "why": f"KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD: {k.errno_name(r)}"}
    g.set_batch(m.mem, [(0x100000, False, 0), (0x100008, True, 7)])
    vm.set_regs(g.initial_regs(m.shim_gpa))
    run = vm.run()
    out = {"ok": run.name == "MMIO" and g.progress(m.mem) == 2, "exit": run.name,
           "read": g.result(m.mem, 0), "host_sees_write": ctypes.c_uint64.from_address(hva + 8).value}
    vm.delete_slot(0)
    k.munmap(hva, 4 * k.PAGE)
    os.close(gfd)
    m.close()
    return out


if __name__ == "__main__":
    print(json.dumps(check()))
    sys.exit(0)
