"""Host mappings for the scenario's VMAs, realised on the real kernel.

| scenario VMA | host mapping |
|---|---|
| private (default) | ``MAP_PRIVATE|MAP_ANONYMOUS`` |
| ``shared: true`` | ``MAP_SHARED`` of a memfd |
| ``host_level: 2m`` | ``MAP_HUGETLB`` (2 MiB hugetlb pages; needs a reserved pool) |
| ``prot: r|none`` | the same, ``mprotect``-ed after the initial page states are realised |
| ``remap: pfnmap|io`` | perf-event ring buffers (``VM_IO|VM_PFNMAP``, 4 KiB PTEs: not ``host_level: 2m``) |

Page states are made real by touching pages (``present_rw``: write, ``present_ro``: read), by
leaving them alone (``unpopulated``), through the page cache (``resident``, shared only) or as
missing pages of a userfaultfd range (``needs_io``).  What cannot be made real is returned as a
reason per page, never approximated.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field

from kvmsim.scenario import VmaSpec

from . import kvm_ioctl as k
from . import uffd

HUGE = 2 << 20
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY = 1, 9
PERF_FLAG_FD_CLOEXEC = 8
MAX_PFNMAP_PAGES = 64
FIXED = k.MAP_FIXED_NOREPLACE
PROTS = {"none": k.PROT_NONE, "r": k.PROT_READ, "rw": k.PROT_READ | k.PROT_WRITE}

libc = k.libc
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.pwrite.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]


class Unrealisable(Exception):
    """This host cannot build the mapping at all (the message says why)."""


def perf_event_fd() -> int:
    """A disabled software dummy event: its ring buffer is a VM_IO|VM_PFNMAP mapping (v6.16+)."""
    attr = bytearray(64)
    struct.pack_into("<IIQ", attr, 0, PERF_TYPE_SOFTWARE, 64, PERF_COUNT_SW_DUMMY)
    struct.pack_into("<Q", attr, 40, 1)                      # disabled
    buf = ctypes.create_string_buffer(bytes(attr), 64)
    fd = libc.syscall(k.SYS_perf_event_open, buf, 0, -1, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise Unrealisable(f"perf_event_open: {os.strerror(e)}")
    return fd


@dataclass
class Backing:
    """One scenario VMA on the host."""
    spec: VmaSpec
    addr: int = 0
    length: int = 0
    kind: str = "anon"                      # anon | memfd | hugetlb | pfnmap
    fds: list[int] = field(default_factory=list)
    memfd: int = -1
    mapped: bool = False
    prot: str = "rw"
    uffd_registered: bool = False
    map_lo: int = 0                         # pfnmap: host pages mapped around the VMA
    map_hi: int = 0
    missing: dict[int, bytes] = field(default_factory=dict)      # needs_io pages → contents
    tainted: dict[int, str] = field(default_factory=dict)        # page → why it is not real

    @property
    def name(self) -> str:
        return self.spec.name

    def hva(self, idx: int) -> int:
        return self.addr + idx * k.PAGE

    def page_of(self, hva: int) -> int:
        return (hva - self.addr) // k.PAGE

    # --- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: VmaSpec, at: int) -> Backing:
        """Map the VMA at host address ``at`` (a free, 2 MiB-aligned window)."""
        b = cls(spec, prot=spec.prot, addr=at)
        b.length = spec.pages * k.PAGE
        try:
            if spec.remap in ("pfnmap", "io"):
                b._create_pfnmap()
            elif spec.remap == "mixedmap":
                raise Unrealisable("no VM_MIXEDMAP source on this host (needs a driver such as a framebuffer)")
            elif spec.host_level == "2m":
                b._create_hugetlb()
            elif spec.shared:
                b._create_memfd()
            else:
                b.addr = k.mmap(at, b.length, PROTS["rw"], FIXED | k.MAP_PRIVATE | k.MAP_ANONYMOUS | k.MAP_NORESERVE)
            b.mapped = True
            if b.kind != "pfnmap":
                b._realise_states()
                if spec.prot != "rw":
                    k.mprotect(b.addr, b.length, PROTS[spec.prot])
        except BaseException:
            b.release()
            raise
        return b

    def _create_memfd(self) -> None:
        self.kind = "memfd"
        self.memfd = k.memfd_create(f"pfndiff-{self.spec.name}")
        self.fds.append(self.memfd)
        os.ftruncate(self.memfd, self.length)
        self.addr = k.mmap(self.addr, self.length, PROTS["rw"], FIXED | k.MAP_SHARED, self.memfd, 0)

    def _create_hugetlb(self) -> None:
        self.kind = "hugetlb"
        self.length = (self.length + HUGE - 1) // HUGE * HUGE
        flags = (k.MAP_SHARED if self.spec.shared else k.MAP_PRIVATE) | k.MAP_ANONYMOUS | k.MAP_HUGETLB
        try:
            self.addr = k.mmap(self.addr, self.length, PROTS["rw"], FIXED | flags)
        except OSError as e:
            raise Unrealisable(f"no 2 MiB hugetlb page available ({e.strerror}; "
                               "reserve with vm.nr_hugepages)") from None

    def _create_pfnmap(self) -> None:
        """Perf ring buffers laid side by side.  A buffer is one control page followed by 2^k data
        pages; the control page's PTE is read-only until the first write, which ``pfn_mkwrite``
        allows (so it is written once here: a writable PTE, zeroed), while data pages stay
        read-only and a write fault on them fails (SIGBUS).  So a writable-PTE page is a control
        page, and a run of read-only-PTE pages is the data area of the buffer whose control page
        precedes it (before the VMA start for a leading run; a trailing run may overrun the VMA
        end).  The buffers cannot be split (munmap/mprotect of part fails), which is why the
        layout is fixed at creation."""
        self.kind = "pfnmap"
        spec = self.spec
        n = spec.pages
        if spec.host_level == "2m":
            raise Unrealisable("no 2 MiB VM_PFNMAP source on this host (perf ring buffers have 4 KiB PTEs)")
        if n > MAX_PFNMAP_PAGES:
            raise Unrealisable(f"pfnmap VMAs are limited to {MAX_PFNMAP_PAGES} pages (one perf event per run)")
        rw = spec.prot == "rw"
        writable = self._pfnmap_writable_ptes(rw)
        if spec.frames == "refcount0":
            for i in range(n):
                self.tainted.setdefault(i, "no refcount-0 struct page source (TTM/amdgpu-like driver) on this host")
        plan = self._ring_buffer_plan(writable)
        self.map_lo = min(c for c, _ in plan)
        self.map_hi = max(c + 1 + d for c, d in plan)
        lo, hi = self.addr + self.map_lo * k.PAGE, self.addr + self.map_hi * k.PAGE
        self.addr = k.mmap(lo, hi - lo, k.PROT_NONE, FIXED | k.MAP_PRIVATE | k.MAP_ANONYMOUS | k.MAP_NORESERVE) \
            - self.map_lo * k.PAGE
        self.mapped = True
        try:
            for ctl, data in plan:
                fd = perf_event_fd()
                self.fds.append(fd)
                k.mmap(self.hva(ctl), (1 + data) * k.PAGE, PROTS["rw"], k.MAP_SHARED | k.MAP_FIXED, fd, 0)
                ctypes.memset(self.hva(ctl), 0, k.PAGE)
        except OSError as e:
            raise Unrealisable(f"perf ring buffer mmap: {e.strerror}") from None
        if not rw:
            k.mprotect(lo, hi - lo, PROTS[spec.prot])

    def _pfnmap_writable_ptes(self, rw: bool) -> list[bool]:
        """Whether each page's PTE is writable; pages whose PTE a perf buffer cannot give are tainted."""
        writable = []
        for i in range(self.spec.pages):
            pte = self.spec.ptes.get(i)
            w = pte.writable if pte is not None else rw
            writable.append(w and rw)
            if pte is not None and not pte.present:
                self.tainted[i] = "perf ring-buffer PTEs are always present (no absent PTE with a fault handler)"
            elif pte is not None and pte.page is not None:
                self.tainted[i] = f"named frame {pte.page!r} cannot be placed at a chosen pfn"
            elif not rw and w:
                self.tainted[i] = "a writable PTE in a VMA without PROT_WRITE"
        return writable

    def _ring_buffer_plan(self, writable: list[bool]) -> list[tuple[int, int]]:
        """The perf buffers to map: (first page incl. control page, data pages).  A read-only run
        that is not 2^k pages long (and not the trailing one) becomes control-page-only buffers,
        its pages tainted."""
        n = len(writable)
        plan: list[tuple[int, int]] = []
        i = 0
        while i < n:
            ctl = i if writable[i] else i - 1      # a leading read-only run gets a control page before it
            j = i + 1 if writable[i] else i
            while j < n and not writable[j]:
                j += 1
            run = j - (ctl + 1)
            size = 1 << max(run - 1, 0).bit_length() if run else 0
            if run and size != run and j < n:
                for p in range(ctl + 1, j):
                    self.tainted.setdefault(p, "read-only PFNMAP PTEs come in runs of 2^k pages after a writable one")
                plan.append((ctl, 0))
                plan.extend((p, 0) for p in range(ctl + 1, j))
            else:
                plan.append((ctl, size))
            i = j
        return plan

    def _realise_states(self) -> None:
        spec = self.spec
        for i in range(spec.pages):
            state, page = spec.page_states.get(i, (spec.state, None))
            self.set_state(i, state, initial=True)
            if page is not None:
                pass                                     # a named normal page is just a page here

    # --- page states -----------------------------------------------------------------------
    def set_state(self, i: int, state: str, initial: bool = False, uffd_fd: int = -1) -> int:
        """Make page i be in ``state``; returns 0, or -errno.  Needs-I/O pages are recorded in
        ``missing`` (the executor registers the range with userfaultfd)."""
        self.tainted.pop(i, None)
        self.missing.pop(i, None)
        hva = self.hva(i)
        if state == "hwpoison":
            self.tainted[i] = "no MADV_HWPOISON on this host (CONFIG_MEMORY_FAILURE is off)"
            return 0
        if self.kind == "hugetlb" and state not in ("present_rw", "present_ro", "unpopulated"):
            self.tainted[i] = f"page state {state} of a hugetlb page (2 MiB granularity)"
            return 0
        if state in ("unpopulated", "needs_io"):
            content = self.read(i) if state == "needs_io" and not initial else b""
            r = self.drop(i, 1) if not initial else 0
            if state == "needs_io":
                self.missing[i] = content
            return r
        if state == "resident":
            if self.kind != "memfd":
                self.tainted[i] = "a resident but unmapped private anonymous page needs swap (none here)"
                return 0
            self._touch(hva, write=False)          # in the page cache (a hole gets a zeroed page) ...
            return k.madvise(hva, k.PAGE, k.MADV_DONTNEED)   # ... and no longer mapped here
        if state == "present_rw":
            self._touch(hva, write=True)
        elif state == "present_ro":
            self._touch(hva, write=False)
        return 0

    def _touch(self, hva: int, write: bool) -> None:
        if self.prot != "rw":
            k.mprotect(self.addr, self.length, PROTS["rw"])
        # ctypes.memmove releases the GIL: the page may be a missing userfaultfd page that the
        # resolver thread (which needs the GIL) has to fill before this access can complete.
        buf = ctypes.create_string_buffer(1)
        ctypes.memmove(buf, hva, 1)
        if write:
            ctypes.memmove(hva, buf, 1)
        if self.prot != "rw":
            k.mprotect(self.addr, self.length, PROTS[self.prot])

    def read(self, i: int) -> bytes:
        if i in self.missing or not self.mapped:
            return self.missing.get(i, bytes(k.PAGE))
        if self.prot == "none":
            k.mprotect(self.addr, self.length, k.PROT_READ)
        buf = ctypes.create_string_buffer(k.PAGE)
        ctypes.memmove(buf, self.hva(i), k.PAGE)           # releases the GIL (see _touch)
        data = buf.raw
        if self.prot == "none":
            k.mprotect(self.addr, self.length, k.PROT_NONE)
        return data

    def drop(self, i: int, count: int) -> int:
        """Free pages: MADV_DONTNEED (private), hole punch (memfd)."""
        if self.kind == "memfd":
            r = libc.fallocate(self.memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * k.PAGE, count * k.PAGE)
            return 0 if r == 0 else -ctypes.get_errno()
        return k.madvise(self.hva(i), count * k.PAGE, k.MADV_DONTNEED)

    # --- host events -------------------------------------------------------------------------
    def madvise(self, i: int, count: int) -> int:
        count = max(0, min(count, self.spec.pages - i))
        r = k.madvise(self.hva(i), count * k.PAGE, k.MADV_DONTNEED)
        if r == 0:
            for j in range(i, i + count):
                if j in self.missing and self.kind != "memfd":
                    self.missing[j] = bytes(k.PAGE)      # the swapped-out contents are discarded too
        return r

    def span(self) -> tuple[int, int]:
        """The host range to unmap or protect: perf buffers can only be handled whole."""
        if self.kind == "pfnmap":
            return self.addr + self.map_lo * k.PAGE, (self.map_hi - self.map_lo) * k.PAGE
        return self.addr, self.length

    def mprotect(self, prot: str) -> int:
        r = k.mprotect(*self.span(), PROTS[prot])
        if r == 0:
            self.prot = prot
        return r

    def register_missing(self, fd: int) -> int:
        if self.uffd_registered:
            return 0
        r = uffd.register(fd, self.addr, self.length)
        if r == 0:
            self.uffd_registered = True
        return r

    def fill(self, fd: int, hva: int, write: bool) -> int:
        """Resolve a userfaultfd fault on one page of this backing."""
        i = self.page_of(hva)
        if i in self.missing:
            data = self.missing.pop(i)
            return uffd.copy(fd, hva, data)
        if not write and self.kind == "anon":
            return uffd.zeropage(fd, hva)          # an anonymous read fault maps the zero page
        return uffd.copy(fd, hva, b"")

    def munmap(self) -> int:
        r = k.munmap(*self.span())
        if r == 0:
            self.mapped = False
            self.uffd_registered = False
        return r

    def release(self) -> None:
        if self.mapped:
            k.munmap(*self.span())
        self.mapped = False
        for fd in self.fds:
            os.close(fd)
        self.fds = []
