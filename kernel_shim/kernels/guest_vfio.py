"""A PCI BAR mapped through vfio-pci inside a QEMU guest: the one source of PMD-mapped VM_PFNMAP.

Why vfio: ``io_remap_pfn_range`` (a BAR mapped through sysfs) installs 4 KiB PTEs on every
kernel; since v6.12 vfio-pci maps BARs from its ``huge_fault`` handler
(drivers/vfio/pci/vfio_pci_core.c ``vfio_pci_mmap_huge_fault``: ``vmf_insert_pfn_pmd`` for an
aligned 2 MiB range inside the VMA), which KVM's ``hva_to_pfn_remapped`` reads with
``follow_pfnmap_start`` and ``host_pfn_mapping_level`` sees as a PMD leaf.  Debian builds without
``CONFIG_VFIO_NOIOMMU``, so the guest has an emulated VT-d IOMMU (``qemu.py``) and the device is
used through a type1 container, as a VMM would.

The runner process binds the device (``bind``); each worker opens the group, container and
device itself (``open_region``), because a vfio group has one opener at a time and the worker
closes every inherited descriptor.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from dataclasses import dataclass

VFIO_TYPE, VFIO_BASE = ord(";"), 100
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1
BAR_INDEX = 2                                       # ivshmem-plain's memory BAR
PCI = "/sys/bus/pci/devices"
HUGE_FAULT_SYMBOL = "vfio_pci_mmap_huge_fault"      # v6.12+ (the "huge pfnmap" series)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p]


def _io(nr: int) -> int:
    """``_IO(VFIO_TYPE, VFIO_BASE + nr)`` (include/uapi/linux/vfio.h)."""
    return (VFIO_TYPE << 8) | (VFIO_BASE + nr)


VFIO_SET_IOMMU = _io(2)
VFIO_GROUP_GET_STATUS = _io(3)
VFIO_GROUP_SET_CONTAINER = _io(4)
VFIO_GROUP_GET_DEVICE_FD = _io(6)
VFIO_DEVICE_GET_REGION_INFO = _io(8)


@dataclass
class Region:
    """The BAR as a worker sees it: the device fd and the region's mmap offset and size."""
    fd: int
    offset: int
    size: int


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def find_device(vendor: str, device: str, bar_size: int) -> str | None:
    """The PCI address of the device with these ids whose BAR has ``bar_size`` bytes."""
    try:
        devs = sorted(os.listdir(PCI))
    except OSError:
        return None
    for d in devs:
        base = os.path.join(PCI, d)
        try:
            ids = (_read(os.path.join(base, "vendor")), _read(os.path.join(base, "device")))
            size = os.path.getsize(os.path.join(base, f"resource{BAR_INDEX}"))
        except OSError:
            continue
        if ids == (vendor, device) and size == bar_size:
            return d
    return None


def huge_fault_support() -> bool:
    """Whether the loaded vfio-pci has ``huge_fault`` (read from /proc/kallsyms, not the version)."""
    try:
        with open("/proc/kallsyms") as fh:
            return any(line.split()[2:3] == [HUGE_FAULT_SYMBOL] for line in fh)
    except OSError:
        return False


def bind(addr: str) -> str | int:
    """Bind ``addr`` to vfio-pci; its IOMMU group number, or why it cannot be used."""
    base = os.path.join(PCI, addr)
    if not os.path.isdir("/sys/bus/pci/drivers/vfio-pci"):
        return "vfio-pci is not loaded in this guest"
    group = os.path.join(base, "iommu_group")
    if not os.path.exists(group):
        return "the device has no IOMMU group (no IOMMU in this guest)"
    try:
        _write(os.path.join(base, "driver_override"), "vfio-pci")
        driver = os.path.join(base, "driver")
        if os.path.exists(driver) and os.path.basename(os.path.realpath(driver)) != "vfio-pci":
            _write(os.path.join(driver, "unbind"), addr)
        if not os.path.exists(driver):
            _write("/sys/bus/pci/drivers_probe", addr)
    except OSError as e:
        return f"binding {addr} to vfio-pci: {e.strerror}"
    if os.path.basename(os.path.realpath(os.path.join(base, "driver"))) != "vfio-pci":
        return f"{addr} did not bind to vfio-pci"
    return int(os.path.basename(os.path.realpath(group)))


def open_region(addr: str, group: int) -> Region:
    """Open the device through a type1 container (include/uapi/linux/vfio.h); OSError on failure."""
    container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
    try:
        grp = os.open(f"/dev/vfio/{group}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        os.close(container)
        raise
    status = fcntl.ioctl(grp, VFIO_GROUP_GET_STATUS, struct.pack("II", 8, 0))
    if not struct.unpack("II", status)[1] & VFIO_GROUP_FLAGS_VIABLE:
        raise OSError(0, f"IOMMU group {group} is not viable")
    fcntl.ioctl(grp, VFIO_GROUP_SET_CONTAINER, struct.pack("i", container))
    fcntl.ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
    dev = _libc.ioctl(grp, VFIO_GROUP_GET_DEVICE_FD, addr.encode())
    if dev < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"VFIO_GROUP_GET_DEVICE_FD: {os.strerror(e)}")
    info = fcntl.ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, struct.pack("IIIIQQ", 32, 0, BAR_INDEX, 0, 0, 0))
    _, _, _, _, size, offset = struct.unpack("IIIIQQ", info)
    # the container and group stay open for the worker's life: closing them would detach the device
    return Region(dev, offset, size)
