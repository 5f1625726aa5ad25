"""One KVM VM with one vCPU: creation, memslots, registers, ``KVM_RUN``, dirty log, teardown.

Kept free of scenario logic so the probe, the executor and the tests share it.  Every resource
it opens is released by ``close``.
"""

from __future__ import annotations

import ctypes
import mmap as pymmap
import os
import struct
from dataclasses import dataclass, field

from . import kvm_ioctl as k


@dataclass
class RunResult:
    """One ``KVM_RUN`` return: ``ret`` (0 or -errno) and the exit reason (when ret == 0)."""
    ret: int
    exit_reason: int = -1
    mmio_gpa: int = 0
    mmio_len: int = 0
    mmio_write: bool = False
    mmio_data: int = 0

    @property
    def name(self) -> str:
        if self.ret < 0:
            return k.errno_name(self.ret)
        return k.EXIT_NAMES.get(self.exit_reason, f"EXIT_{self.exit_reason}")


@dataclass
class Vm:
    kvm: k.KvmHandle
    fd: int
    vcpu: int = -1
    run_map: pymmap.mmap | None = None
    cpuid: k.Cpuid2 | None = None
    slots: dict[int, k.MemRegion2] = field(default_factory=dict)
    region2: bool = False

    @classmethod
    def create(cls, kvm: k.KvmHandle) -> Vm:
        fd = k.ioctl_ok(kvm.fd, k.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        vm = cls(kvm, fd)
        try:
            vm.region2 = kvm.check(k.CAPS["KVM_CAP_USER_MEMORY2"]) > 0
            vm.vcpu = k.ioctl_ok(fd, k.KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
            size = k.ioctl_ok(kvm.fd, k.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
            vm.run_map = pymmap.mmap(vm.vcpu, size, pymmap.MAP_SHARED, pymmap.PROT_READ | pymmap.PROT_WRITE)
            vm.cpuid = supported_cpuid(kvm)
            k.ioctl_ok(vm.vcpu, k.KVM_SET_CPUID2, vm.cpuid, "KVM_SET_CPUID2")
        except BaseException:
            vm.close()
            raise
        return vm

    # --- memslots --------------------------------------------------------------------------
    def set_slot(self, slot: int, gpa: int, size: int, hva: int, flags: int = 0,
                 gmem_fd: int = -1, gmem_offset: int = 0) -> int:
        """Create, move, change flags of (size > 0) or delete (size == 0) a memslot; -errno on failure."""
        if self.region2:
            r2 = k.MemRegion2(slot, flags, gpa, size, hva)
            if gmem_fd >= 0:
                r2.guest_memfd, r2.guest_memfd_offset = gmem_fd, gmem_offset
            ret = k.ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION2, r2)
        else:
            if gmem_fd >= 0:
                return -22
            ret = k.ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, k.MemRegion(slot, flags, gpa, size, hva))
        if ret == 0:
            if size:
                self.slots[slot] = k.MemRegion2(slot, flags, gpa, size, hva)
            else:
                self.slots.pop(slot, None)
        return ret

    def delete_slot(self, slot: int) -> int:
        cur = self.slots.get(slot)
        if cur is None:
            return 0
        return self.set_slot(slot, cur.guest_phys_addr, 0, cur.userspace_addr, 0)

    def dirty_log(self, slot: int, npages: int) -> tuple[int, list[int]]:
        buf = (ctypes.c_uint64 * ((npages + 63) // 64))()
        dl = k.DirtyLog(slot, 0, ctypes.addressof(buf))
        ret = k.ioctl(self.fd, k.KVM_GET_DIRTY_LOG, dl)
        if ret < 0:
            return ret, []
        bits = [w * 64 + b for w, word in enumerate(buf) if word for b in range(64) if word >> b & 1]
        return 0, [b for b in bits if b < npages]

    # --- vCPU ------------------------------------------------------------------------------
    def set_regs(self, regs: k.Regs) -> None:
        k.ioctl_ok(self.vcpu, k.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_regs(self) -> k.Regs:
        r = k.Regs()
        k.ioctl_ok(self.vcpu, k.KVM_GET_REGS, r, "KVM_GET_REGS")
        return r

    def get_sregs(self) -> k.Sregs:
        s = k.Sregs()
        k.ioctl_ok(self.vcpu, k.KVM_GET_SREGS, s, "KVM_GET_SREGS")
        return s

    def set_sregs(self, s: k.Sregs) -> None:
        k.ioctl_ok(self.vcpu, k.KVM_SET_SREGS, s, "KVM_SET_SREGS")

    def run(self) -> RunResult:
        ret = k.ioctl(self.vcpu, k.KVM_RUN, 0)
        if ret < 0:
            return RunResult(ret)
        m = self.run_map
        assert m is not None
        reason = struct.unpack_from("<I", m, k.RUN_EXIT_REASON)[0]
        if reason == k.KVM_EXIT_MMIO:
            gpa, data, ln, w = struct.unpack_from("<Q8sIB", m, k.RUN_MMIO_PHYS)
            return RunResult(0, reason, gpa, ln, bool(w), int.from_bytes(data[:ln], "little"))
        return RunResult(0, reason)

    def complete_mmio_read(self, value: int = 0) -> None:
        """Data the VMM's (absent) device returns for an MMIO read: zeros."""
        assert self.run_map is not None
        self.run_map[k.RUN_MMIO_DATA:k.RUN_MMIO_DATA + 8] = value.to_bytes(8, "little")

    def close(self) -> None:
        if self.run_map is not None:
            self.run_map.close()
            self.run_map = None
        if self.vcpu >= 0:
            os.close(self.vcpu)
            self.vcpu = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def supported_cpuid(kvm: k.KvmHandle) -> k.Cpuid2:
    c = k.Cpuid2()
    c.nent = k.MAX_CPUID
    k.ioctl_ok(kvm.fd, k.KVM_GET_SUPPORTED_CPUID, c, "KVM_GET_SUPPORTED_CPUID")
    return c


def guest_maxphyaddr(c: k.Cpuid2) -> int:
    for i in range(c.nent):
        e = c.entries[i]
        if e.function == 0x80000008:
            return e.eax & 0xFF
    return 36
