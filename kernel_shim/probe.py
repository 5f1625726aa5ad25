"""What this host can realise: kernel, generation, KVM capabilities, backings and fault paths.

Every backing is tried for real (map it, touch it, release it) rather than inferred, and each
missing one carries the reason, so ``pfndiff host probe`` and the tests skip honestly.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from . import kvm_ioctl as k

PARAMS = "/sys/module/kvm/parameters"


@dataclass
class Probe:
    kernel: str
    generation: str | None
    kvm: str | None                                     # None when usable, else the reason
    caps: dict[str, int] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    backings: dict[str, str | None] = field(default_factory=dict)   # name -> None or why not
    paths: dict[str, str | None] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "generation": self.generation, "kvm": self.kvm or "usable",
                "caps": self.caps, "params": self.params, "modules": self.modules,
                "backings": {n: (r or "yes") for n, r in self.backings.items()},
                "paths": {n: (r or "yes") for n, r in self.paths.items()}}


def generation_of(release: str) -> str | None:
    """≤ 6.12: legacy gfn_to_pfn family (g1); ≥ 6.13: merged kvm_follow_pfn (g3)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        return None
    return "g3" if (int(m[1]), int(m[2])) >= (6, 13) else "g1"


def kvm_unusable() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible to this user (needs rw; e.g. the kvm group)"
    try:
        h = k.KvmHandle.open()
    except OSError as e:
        return f"cannot open /dev/kvm: {e.strerror}"
    try:
        if k.ioctl(h.fd, k.KVM_GET_API_VERSION, 0) != 12:
            return "unexpected KVM API version"
    finally:
        h.close()
    return None


def read_params() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir(PARAMS))
    except OSError:
        return out
    for n in names:
        try:
            with open(os.path.join(PARAMS, n)) as fh:
                out[n] = fh.read().strip()
        except OSError:
            continue
    return out


def _try_map(flags: int, fd: int = -1, length: int = k.PAGE) -> str | None:
    try:
        p = k.mmap(0, length, k.PROT_READ | k.PROT_WRITE, flags, fd, 0)
    except OSError as e:
        return e.strerror
    k.munmap(p, length)
    return None


def probe_backings(kvm: k.KvmHandle | None) -> dict[str, str | None]:
    from . import uffd
    from .backings import Unrealisable, perf_event_fd
    b: dict[str, str | None] = {"anon": None}
    try:
        fd = k.memfd_create("pfndiff-probe")
        os.ftruncate(fd, k.PAGE)
        b["memfd_shared"] = _try_map(k.MAP_SHARED, fd)
        os.close(fd)
    except OSError as e:
        b["memfd_shared"] = f"memfd_create: {e.strerror}"
    try:
        p = k.mmap(0, 2 << 20, 3, k.MAP_PRIVATE | k.MAP_ANONYMOUS | k.MAP_HUGETLB)
        ctypes.memset(p, 0, 1)
        k.munmap(p, 2 << 20)
        b["hugetlb_2m"] = None
    except OSError as e:
        b["hugetlb_2m"] = (f"no 2 MiB hugetlb page ({e.strerror}); vm.nr_hugepages="
                           f"{_read('/proc/sys/vm/nr_hugepages')}")
    b["prot_r_none"] = None
    b["hole"] = None
    try:
        fd = perf_event_fd()
        why = _try_map(k.MAP_SHARED, fd)
        os.close(fd)
        b["pfnmap_perf"] = None if why is None else f"perf ring buffer mmap: {why}"
        if why is None and not _perf_is_pfnmap():
            b["pfnmap_perf"] = "perf ring buffer is not VM_PFNMAP on this kernel (needs v6.16+)"
    except Unrealisable as e:
        b["pfnmap_perf"] = str(e)
    b["pfnmap_devmem"] = ("/dev/mem exists but is not wired to scenarios (its frames are live RAM or MMIO)"
                          if os.path.exists("/dev/mem") else "/dev/mem does not exist")
    b["pfnmap_pci_bar"] = _pci_bar()
    try:
        fd = uffd.open_uffd()
        os.close(fd)
        b["userfaultfd"] = None
    except OSError as e:
        b["userfaultfd"] = f"userfaultfd: {e.strerror}"
    b["hwpoison"] = (None if os.path.exists("/proc/sys/vm/memory_failure_early_kill")
                     else "CONFIG_MEMORY_FAILURE is off (no MADV_HWPOISON); not used")
    b["guest_memfd"] = _probe_gmem(kvm)
    return b


def _pci_bar() -> str:
    """Only a BAR of a device no driver owns would be safe to map; live devices are never touched."""
    root = "/sys/bus/pci/devices"
    try:
        devs = sorted(os.listdir(root))
    except OSError:
        return "no PCI bus"
    free = [d for d in devs if not os.path.exists(os.path.join(root, d, "driver"))
            and os.path.exists(os.path.join(root, d, "resource0"))]
    if not any(os.path.exists(os.path.join(root, d, "resource0")) for d in devs):
        return "no sysfs resourceN files (this kernel offers no PCI BAR mmap)"
    if not free:
        return "every PCI device with a BAR is bound to a driver (never mapped: live device registers)"
    return f"unbound device(s) {', '.join(free)} have BARs, but BAR mapping is not wired to scenarios"


def _perf_is_pfnmap() -> bool:
    from .backings import perf_event_fd
    fd = perf_event_fd()
    try:
        p = k.mmap(0, k.PAGE, 3, k.MAP_SHARED, fd, 0)
        try:
            with open("/proc/self/smaps") as fh:
                lines = fh.read().splitlines()
            head = f"{p:x}-"
            for i, line in enumerate(lines):
                if line.startswith(head):
                    for ln in lines[i:i + 40]:
                        if ln.startswith("VmFlags:"):
                            return " pf" in ln
        finally:
            k.munmap(p, k.PAGE)
    finally:
        os.close(fd)
    return False


def _probe_gmem(kvm: k.KvmHandle | None) -> str | None:
    if kvm is None:
        return "no /dev/kvm"
    if not kvm.check(k.CAPS["KVM_CAP_GUEST_MEMFD"]):
        return "KVM_CAP_GUEST_MEMFD is 0"
    vm = k.ioctl(kvm.fd, k.KVM_CREATE_VM, 0)
    if vm < 0:
        return f"KVM_CREATE_VM: {k.errno_name(vm)}"
    try:
        req = k.CreateGuestMemfd(k.PAGE * 16, 3)            # MMAP | INIT_SHARED
        fd = k.ioctl(vm, k.KVM_CREATE_GUEST_MEMFD, req)
        if fd < 0:
            return f"KVM_CREATE_GUEST_MEMFD(MMAP|INIT_SHARED) on a default VM: {k.errno_name(fd)}"
        os.close(fd)
        return None
    finally:
        os.close(vm)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return "?"


@lru_cache(maxsize=1)
def probe() -> Probe:
    release = os.uname().release
    p = Probe(release, generation_of(release), kvm_unusable())
    p.params = read_params()
    p.modules = sorted(m for m in os.listdir("/sys/module") if m.startswith("kvm"))
    h = None
    if p.kvm is None:
        h = k.KvmHandle.open()
        p.caps = {n: h.check(c) for n, c in k.CAPS.items()}
    try:
        p.backings = probe_backings(h)
    finally:
        if h is not None:
            h.close()
    p.paths = {"native-cpl3": p.kvm, "emulated": p.kvm}
    return p
