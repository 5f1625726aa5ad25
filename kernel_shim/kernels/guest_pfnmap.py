"""VM_IO|VM_PFNMAP backings inside a QEMU guest: pages of an ``ivshmem-plain`` PCI BAR.

Why not the host backend's perf ring buffers: those are VM_PFNMAP only from v6.16, so on 6.1
and 6.12 they would silently be ordinary pages.  A BAR mapped through sysfs
(``/sys/bus/pci/devices/…/resource2``) is ``io_remap_pfn_range`` memory on every kernel: frames
without struct page (the model's ``frames: none``), every PTE present and as writable as the
VMA.  What a BAR cannot be is reported per page, never approximated.

``host_level: 2m`` PFNMAP VMAs come from a second ivshmem-plain device bound to vfio-pci
(``guest_vfio``): the one way a guest gets PMD-mapped VM_PFNMAP memory, from v6.12 on.  A kernel
whose vfio-pci has no ``huge_fault`` (6.1) or a guest without vfio-pci cannot build such a VMA,
and says why.
"""

from __future__ import annotations

import ctypes
import os

from kernel_shim import kvm_ioctl as k
from kernel_shim.backings import FIXED, HUGE, MAX_PFNMAP_PAGES, PROTS, Backing, Unrealisable
from kernel_shim.layout import HOST_STRIDE, HOST_WINDOW

from . import guest_vfio

IVSHMEM_VENDOR, IVSHMEM_DEVICE = "0x1af4", "0x1110"
PCI = guest_vfio.PCI
IVSHMEM_MIB = 16                                    # the sysfs-mapped BAR: 64-page windows
HUGE_IVSHMEM_MIB = 32                               # the vfio-mapped BAR: 2 MiB-aligned windows
HUGE_WINDOW = 2 * HUGE                              # per VMA of the vfio BAR (its index picks one)


def find_bar() -> tuple[str, int] | None:
    """(sysfs resource2 path, size) of the sysfs-mapped ivshmem-plain device, enabled; None without one."""
    size = IVSHMEM_MIB << 20
    addr = guest_vfio.find_device(IVSHMEM_VENDOR, IVSHMEM_DEVICE, size)
    if addr is None:
        return None
    base = os.path.join(PCI, addr)
    try:
        with open(os.path.join(base, "enable"), "w") as fh:
            fh.write("1")
    except OSError:
        pass                                        # already enabled, or firmware did it
    return os.path.join(base, f"resource{guest_vfio.BAR_INDEX}"), size


_BAR: tuple[str, int] | None = None                 # set by install(), inside the guest only
_HUGE: tuple[str, int] | str = "not set up"         # (PCI address, IOMMU group), or why not
_REGION: tuple[int, guest_vfio.Region] | None = None     # (worker pid, its open vfio device)


def _huge_region() -> guest_vfio.Region:
    """The vfio BAR of this process (a worker opens it at its first 2 MiB PFNMAP VMA)."""
    global _REGION
    if isinstance(_HUGE, str):
        raise Unrealisable(f"no 2 MiB VM_PFNMAP source in this guest: {_HUGE}")
    if _REGION is None or _REGION[0] != os.getpid():
        try:
            _REGION = (os.getpid(), guest_vfio.open_region(*_HUGE))
        except OSError as e:
            raise Unrealisable(f"opening the vfio BAR: {e.strerror or e}") from None
    return _REGION[1]


class IvshmemBacking(Backing):
    """A scenario VMA; only ``remap: pfnmap|io`` differs from the host backend's Backing."""

    def _create_pfnmap(self) -> None:
        self.kind = "pfnmap"
        if self.spec.host_level == "2m":
            self._create_huge_pfnmap()
            return
        spec = self.spec
        n = spec.pages
        if _BAR is None:
            raise Unrealisable("no ivshmem-plain BAR in this guest (no VM_PFNMAP source)")
        if n > MAX_PFNMAP_PAGES:
            raise Unrealisable(f"pfnmap VMAs are limited to {MAX_PFNMAP_PAGES} pages")
        path, size = _BAR
        slot = (self.addr - HOST_WINDOW) // HOST_STRIDE
        offset = slot * MAX_PFNMAP_PAGES * k.PAGE
        if offset + n * k.PAGE > size:
            raise Unrealisable(f"the ivshmem BAR ({size >> 20} MiB) has no room for VMA #{slot}")
        rw = spec.prot == "rw"
        self._taint_bar_ptes(rw)
        fd = os.open(path, os.O_RDWR | os.O_SYNC | os.O_CLOEXEC)
        self.fds.append(fd)
        try:
            self.addr = k.mmap(self.addr, self.length, PROTS["rw"], FIXED | k.MAP_SHARED, fd, offset)
        except OSError as e:
            raise Unrealisable(f"mmap of the ivshmem BAR: {e.strerror}") from None
        self.mapped = True
        self.map_lo, self.map_hi = 0, n
        ctypes.memset(self.addr, 0, self.length)
        if not rw:
            k.mprotect(self.addr, self.length, PROTS[spec.prot])

    def _create_huge_pfnmap(self) -> None:
        """The VMA's window of the vfio BAR, mapped at its 2 MiB-aligned host address: vfio-pci's
        huge_fault installs a PMD for every aligned 2 MiB range inside the VMA."""
        spec = self.spec
        region = _huge_region()
        self.length = (self.length + HUGE - 1) // HUGE * HUGE
        if self.length > HUGE_WINDOW:
            raise Unrealisable(f"2 MiB pfnmap VMAs are limited to {HUGE_WINDOW // k.PAGE} pages")
        offset = (self.addr - HOST_WINDOW) // HOST_STRIDE * HUGE_WINDOW
        if offset + self.length > region.size:
            raise Unrealisable(f"the vfio BAR ({region.size >> 20} MiB) has no room for this VMA")
        rw = spec.prot == "rw"
        self._taint_bar_ptes(rw)
        try:
            self.addr = k.mmap(self.addr, self.length, PROTS["rw"], FIXED | k.MAP_SHARED, region.fd,
                               region.offset + offset)
        except OSError as e:
            raise Unrealisable(f"mmap of the vfio BAR: {e.strerror}") from None
        self.mapped = True
        self.map_lo, self.map_hi = 0, self.length // k.PAGE
        ctypes.memset(self.addr, 0, self.length)     # every 2 MiB range faulted in: PMDs now
        if not rw:
            k.mprotect(self.addr, self.length, PROTS[spec.prot])

    def _taint_bar_ptes(self, rw: bool) -> None:
        """Taint the pages whose PTE or frame a BAR mapping cannot give."""
        spec = self.spec
        for i in range(spec.pages):
            pte = spec.ptes.get(i)
            if pte is not None and not pte.present:
                self.tainted[i] = "BAR PTEs are always present (no absent PTE with a fault handler)"
            elif pte is not None and pte.page is not None:
                self.tainted[i] = f"named frame {pte.page!r} cannot be placed at a chosen pfn"
            elif pte is not None and rw and not pte.writable:
                self.tainted[i] = "every BAR PTE is as writable as the VMA (no read-only PTE in a writable VMA)"
            elif spec.frames != "none":
                self.tainted[i] = f"BAR frames have no struct page (kind none), not {spec.frames}"


def _install_huge() -> tuple[str, int] | str:
    """Bind the second ivshmem device to vfio-pci where its BAR can be PMD-mapped; or why not."""
    addr = guest_vfio.find_device(IVSHMEM_VENDOR, IVSHMEM_DEVICE, HUGE_IVSHMEM_MIB << 20)
    if addr is None:
        return f"no {HUGE_IVSHMEM_MIB} MiB ivshmem-plain device"
    if not os.path.isdir("/sys/bus/pci/drivers/vfio-pci"):
        return "vfio-pci is not loaded in this guest"
    if not guest_vfio.huge_fault_support():
        return ("vfio-pci maps BARs with 4 KiB PTEs before v6.12 "
                f"(no {guest_vfio.HUGE_FAULT_SYMBOL} in this kernel)")
    group = guest_vfio.bind(addr)
    return group if isinstance(group, str) else (addr, group)


def install() -> str | None:
    """Make the host backend's executor use BAR backings; returns why pfnmap is unavailable."""
    global _BAR, _HUGE
    from kernel_shim.host_exec import HostMemory
    _BAR = find_bar()
    _HUGE = _install_huge()
    HostMemory.backing_type = IvshmemBacking
    return None if _BAR is not None else "no ivshmem-plain device"


def huge_unavailable() -> str | None:
    """Why this guest has no 2 MiB VM_PFNMAP mapping (None: it has one)."""
    return _HUGE if isinstance(_HUGE, str) else None
