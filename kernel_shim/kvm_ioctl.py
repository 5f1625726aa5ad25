"""The /dev/kvm ABI through ctypes: ioctl numbers, the uapi structures, and libc memory calls.

Everything goes through ``libc.ioctl``/``mmap`` via ctypes (not ``fcntl.ioctl``) so that an
interrupted ``KVM_RUN`` comes back as ``-1``/``EINTR`` instead of being retried by Python, and so
that mappings can be placed at fixed addresses.  Values are from include/uapi/linux/kvm.h (x86-64).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mmap.restype = ctypes.c_void_p
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munmap.restype = ctypes.c_int
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.restype = ctypes.c_int
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.restype = ctypes.c_int
libc.syscall.restype = ctypes.c_long

PAGE = 4096
KVMIO = 0xAE


def _ioc(d: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(1, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(2, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(3, nr, size)


# --- structures --------------------------------------------------------------------------------
class MemRegion(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64)]


class MemRegion2(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64),
                ("guest_memfd_offset", ctypes.c_uint64), ("guest_memfd", ctypes.c_uint32),
                ("pad1", ctypes.c_uint32), ("pad2", ctypes.c_uint64 * 14)]


class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15", "rip", "rflags")]


class Segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16),
                ("type", ctypes.c_uint8), ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
                ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8), ("padding", ctypes.c_uint8)]


class DTable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class Sregs(ctypes.Structure):
    _fields_ = [("cs", Segment), ("ds", Segment), ("es", Segment), ("fs", Segment), ("gs", Segment),
                ("ss", Segment), ("tr", Segment), ("ldt", Segment), ("gdt", DTable), ("idt", DTable),
                ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64),
                ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
                ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class CpuidEntry2(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32), ("ecx", ctypes.c_uint32),
                ("edx", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 3)]


MAX_CPUID = 256


class Cpuid2(ctypes.Structure):
    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("entries", CpuidEntry2 * MAX_CPUID)]


class DirtyLog(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("dirty_bitmap", ctypes.c_uint64)]


class CreateGuestMemfd(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 6)]


# --- ioctl numbers -----------------------------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, ctypes.sizeof(DirtyLog))
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(MemRegion))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_SET_USER_MEMORY_REGION2 = _iow(0x49, ctypes.sizeof(MemRegion2))
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, ctypes.sizeof(Regs))
KVM_SET_REGS = _iow(0x82, ctypes.sizeof(Regs))
KVM_GET_SREGS = _ior(0x83, ctypes.sizeof(Sregs))
KVM_SET_SREGS = _iow(0x84, ctypes.sizeof(Sregs))
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_CREATE_GUEST_MEMFD = _iowr(0xD4, ctypes.sizeof(CreateGuestMemfd))

# capabilities (KVM_CHECK_EXTENSION)
CAPS = {
    "KVM_CAP_NR_MEMSLOTS": 10, "KVM_CAP_SYNC_MMU": 16, "KVM_CAP_READONLY_MEM": 81,
    "KVM_CAP_MULTI_ADDRESS_SPACE": 118, "KVM_CAP_NR_VCPUS": 9, "KVM_CAP_ASYNC_PF": 59,
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2": 168, "KVM_CAP_DIRTY_LOG_RING": 192,
    "KVM_CAP_PRE_FAULT_MEMORY": 236, "KVM_CAP_MEMORY_FAULT_INFO": 232,
    "KVM_CAP_USER_MEMORY2": 231, "KVM_CAP_GUEST_MEMFD": 234, "KVM_CAP_VM_TYPES": 235,
}

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# exit reasons
EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
              7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR",
              39: "MEMORY_FAULT"}
KVM_EXIT_IO = 2
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_INTR = 10
KVM_EXIT_MEMORY_FAULT = 39

# kvm_run offsets
RUN_EXIT_REASON = 8
RUN_MMIO_PHYS = 32
RUN_MMIO_DATA = 40
RUN_MMIO_LEN = 48
RUN_MMIO_IS_WRITE = 52

# --- libc memory constants ---------------------------------------------------------------------
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_POPULATE, MAP_HUGETLB, MAP_FIXED_NOREPLACE = 0x4000, 0x8000, 0x40000, 0x100000
MADV_DONTNEED, MADV_REMOVE = 4, 9
MAP_FAILED = ctypes.c_void_p(-1).value
SYS_memfd_create = 319
SYS_userfaultfd = 323
SYS_perf_event_open = 298
MFD_CLOEXEC, MFD_HUGETLB = 1, 4


class KvmError(OSError):
    """An ioctl or memory call failed; ``errno`` says why."""


def err(what: str) -> KvmError:
    e = ctypes.get_errno()
    return KvmError(e, f"{what}: {os.strerror(e)}")


def ioctl(fd: int, req: int, arg: int | ctypes.Structure | ctypes.Array | None = 0) -> int:
    """``ioctl`` returning the result, or ``-errno`` (never raises, never retries EINTR)."""
    if isinstance(arg, (ctypes.Structure, ctypes.Array)):
        r = libc.ioctl(fd, req, ctypes.addressof(arg))
    else:
        r = libc.ioctl(fd, req, arg)
    return -ctypes.get_errno() if r < 0 else r


def ioctl_ok(fd: int, req: int, arg: int | ctypes.Structure | ctypes.Array | None = 0, what: str = "") -> int:
    r = ioctl(fd, req, arg)
    if r < 0:
        raise KvmError(-r, f"{what or hex(req)}: {os.strerror(-r)}")
    return r


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    p = libc.mmap(addr or None, length, prot, flags, fd, offset)
    if p is None or p == MAP_FAILED:
        raise err("mmap")
    return p


def munmap(addr: int, length: int) -> int:
    return 0 if libc.munmap(addr, length) == 0 else -ctypes.get_errno()


def mprotect(addr: int, length: int, prot: int) -> int:
    return 0 if libc.mprotect(addr, length, prot) == 0 else -ctypes.get_errno()


def madvise(addr: int, length: int, advice: int) -> int:
    return 0 if libc.madvise(addr, length, advice) == 0 else -ctypes.get_errno()


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    fd = libc.syscall(SYS_memfd_create, name.encode(), flags)
    if fd < 0:
        raise err("memfd_create")
    return fd


def errno_name(neg: int) -> str:
    return errno.errorcode.get(-neg, str(-neg))


@dataclass
class KvmHandle:
    """An open /dev/kvm system fd."""
    fd: int

    @classmethod
    def open(cls) -> KvmHandle:
        return cls(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))

    def check(self, cap: int) -> int:
        return max(ioctl(self.fd, KVM_CHECK_EXTENSION, cap), 0)

    def close(self) -> None:
        os.close(self.fd)
