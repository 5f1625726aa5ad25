"""VM_IO|VM_PFNMAP backings inside a QEMU guest: pages of an ``ivshmem-plain`` PCI BAR.

Why not the host backend's perf ring buffers: those are VM_PFNMAP only from v6.16, so on 6.1
and 6.12 they would silently be ordinary pages.  A BAR mapped through sysfs
(``/sys/bus/pci/devices/…/resource2``) is ``io_remap_pfn_range`` memory on every kernel: frames
without struct page (the model's ``frames: none``), every PTE present and as writable as the
VMA.  What a BAR cannot be is reported per page, never approximated.
"""

from __future__ import annotations

import ctypes
import os

from kernel_shim import kvm_ioctl as k
from kernel_shim.backings import FIXED, MAX_PFNMAP_PAGES, PROTS, Backing, Unrealisable
from kernel_shim.layout import HOST_STRIDE, HOST_WINDOW

IVSHMEM_VENDOR, IVSHMEM_DEVICE = "0x1af4", "0x1110"
PCI = "/sys/bus/pci/devices"


def find_bar() -> tuple[str, int] | None:
    """(sysfs resource2 path, size) of the ivshmem-plain device, enabled; None without one."""
    try:
        devs = sorted(os.listdir(PCI))
    except OSError:
        return None
    for d in devs:
        base = os.path.join(PCI, d)
        try:
            with open(os.path.join(base, "vendor")) as fh:
                vendor = fh.read().strip()
            with open(os.path.join(base, "device")) as fh:
                device = fh.read().strip()
        except OSError:
            continue
        if (vendor, device) != (IVSHMEM_VENDOR, IVSHMEM_DEVICE):
            continue
        res = os.path.join(base, "resource2")
        try:
            with open(os.path.join(base, "enable"), "w") as fh:
                fh.write("1")
        except OSError:
            pass                                    # already enabled, or firmware did it
        try:
            return res, os.path.getsize(res)
        except OSError:
            return None
    return None


_BAR: tuple[str, int] | None = None                 # set by install(), inside the guest only


class IvshmemBacking(Backing):
    """A scenario VMA; only ``remap: pfnmap|io`` differs from the host backend's Backing."""

    def _create_pfnmap(self) -> None:
        self.kind = "pfnmap"
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


def install() -> str | None:
    """Make the host backend's executor use BAR backings; returns why pfnmap is unavailable."""
    global _BAR
    from kernel_shim.host_exec import HostMemory
    _BAR = find_bar()
    HostMemory.backing_type = IvshmemBacking
    return None if _BAR is not None else "no ivshmem-plain device"
