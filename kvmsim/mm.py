"""The host mm: VMAs, their page-table state, and the GUP primitives KVM calls (spec §1.3, §1.4).

Everything the generations know about host memory goes through the functions at the bottom of
this module (``gup_fast_only``, ``gup_slow``, ``lookup_pte``, ``fixup_user_fault``,
``vma_is_valid``), so that all generations see exactly the same mm.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .constants import (
    EAGAIN,
    EFAULT,
    EHWPOISON,
    EINTR,
    EINVAL,
    FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE,
    FOLL_NOWAIT,
    FOLL_WRITE,
    PAGE_SHIFT,
    PAGE_SIZE,
    VM_READ,
    VM_REMAPPED,
    VM_SHARED,
    VM_WRITE,
)
from .pfndb import Page, PfnDB
from .scenario.vocabulary import (  # noqa: F401 - the mm's words, re-exported for its users
    H_DROPS_LOCK,
    H_FAILS,
    H_POPULATES,
    HANDLERS,
    HWPOISON,
    NEEDS_IO,
    PAGE_STATES,
    PRESENT_RO,
    PRESENT_RW,
    RESIDENT,
    UNPOPULATED,
)

if TYPE_CHECKING:
    from .world import World


@dataclass(slots=True)
class PageEntry:
    """Page-table state of one page of a normal VMA."""
    state: str
    page: Page | None = None
    cow: bool = True                      # PRESENT_RO in a private VMA: a write breaks COW
    saved: dict[int, int] | None = None   # contents while swapped out (NEEDS_IO)


@dataclass(slots=True)
class RemapPte:
    """PTE of one page of a VM_IO/VM_PFNMAP VMA and, when absent, what its fault handler does."""
    present: bool
    page: Page | None = None              # the frame the PTE maps (or the handler installs)
    writable: bool = True
    handler: str = H_POPULATES


@dataclass(slots=True)
class Vma:
    name: str
    start: int
    end: int
    flags: int
    default_state: str = UNPOPULATED
    host_level: int = 1                   # pages per host mapping (512 for a 2 MiB mapping)
    pages: dict[int, PageEntry] = field(default_factory=dict)
    ptes: dict[int, RemapPte] = field(default_factory=dict)
    # remapped VMAs: PTEs the scenario does not spell out are made on first use (a 512-page BAR
    # costs nothing until touched), each mapping a new frame of kind ``frames`` declared in ``db``;
    # they are writable iff the VMA was never write-protected.  Plain data, not a closure over the
    # VMA: a closure would make every remapped VMA a reference cycle (see fuzz.targets.gc_policy).
    frames: str | None = None
    db: PfnDB | None = None
    default_pte_writable: bool = True

    def pte(self, idx: int) -> RemapPte | None:
        p = self.ptes.get(idx)
        if p is None and self.frames is not None and self.db is not None:
            p = self.ptes[idx] = RemapPte(True, self.db.declare(f"{self.name}.frame{idx}", self.frames),
                                          self.default_pte_writable)
        return p

    @property
    def remapped(self) -> bool:
        return bool(self.flags & VM_REMAPPED)

    @property
    def shared(self) -> bool:
        return bool(self.flags & VM_SHARED)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def index(self, hva: int) -> int:
        return (hva - self.start) >> PAGE_SHIFT



class Mm:
    """The VMAs of the VMM process, indexed by address (the kernel's maple tree) and by name, so
    a lookup is O(log n).  VMAs never overlap (the scenario validator checks it); should a caller
    add overlapping ones, ``find`` falls back to the first match in insertion order."""

    def __init__(self, db: PfnDB) -> None:
        self.db = db
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self._sorted: list[Vma] = []
        self._names: dict[str, list[Vma]] = {}
        self._overlaps = False

    def _sync(self) -> None:
        """``vmas`` edited directly (tests remove every VMA): index it again."""
        if len(self.vmas) != len(self._sorted):
            vmas, self.vmas = self.vmas, []
            self._starts, self._sorted, self._names, self._overlaps = [], [], {}, False
            for v in vmas:
                self.add(v)

    def add(self, vma: Vma) -> Vma:
        if len(self.vmas) != len(self._sorted):
            self._sync()
        starts, ordered, start = self._starts, self._sorted, vma.start
        i = bisect_right(starts, start)
        if (i > 0 and ordered[i - 1].end > start) or (i < len(ordered) and ordered[i].start < vma.end):
            self._overlaps = True
        starts.insert(i, start)
        ordered.insert(i, vma)
        self.vmas.append(vma)
        same = self._names.get(vma.name)
        if same is None:
            self._names[vma.name] = [vma]
        else:
            same.append(vma)
        return vma

    def find(self, hva: int) -> Vma | None:
        """``vma_lookup``: the VMA containing hva, or None."""
        if len(self.vmas) != len(self._sorted):
            self._sync()
        if self._overlaps:
            return next((v for v in self.vmas if v.start <= hva < v.end), None)
        i = bisect_right(self._starts, hva) - 1
        if i >= 0:
            v = self._sorted[i]
            if hva < v.end:
                return v
        return None

    def by_name(self, name: str) -> Vma | None:
        self._sync()
        same = self._names.get(name)
        return same[0] if same else None

    def _forget(self, vma: Vma) -> None:
        self._sync()
        self.vmas = [v for v in self.vmas if v is not vma]
        i = bisect_left(self._starts, vma.start)
        while self._sorted[i] is not vma:
            i += 1
        del self._starts[i], self._sorted[i]
        same = self._names[vma.name]
        same[:] = [v for v in same if v is not vma]
        if not same:
            del self._names[vma.name]

    def entry(self, vma: Vma, idx: int) -> PageEntry:
        """The page-table state of one page, created from the VMA's default state on first use."""
        e = vma.pages.get(idx)
        if e is None:
            e = vma.pages[idx] = PageEntry(vma.default_state, None, not vma.flags & VM_SHARED)
            if e.state == HWPOISON:
                e.page = self._new_page(vma, idx)
                e.page.hwpoison = True
            elif e.state in (PRESENT_RW, PRESENT_RO, RESIDENT):
                e.page = self._new_page(vma, idx)
            self.fit(vma, e)
        return e

    @staticmethod
    def fit(vma: Vma, e: PageEntry) -> None:
        """§1.3: PRESENT_RW is "PTE present and writable", which a VMA without VM_WRITE cannot have
        (PTEs are built from vm_page_prot; mprotect write-protects them).  Such a page is really a
        read-only PTE of an exclusive page, so GUP-fast must not hand it out as writable."""
        if e.state == PRESENT_RW and not vma.flags & VM_WRITE:
            e.state, e.cow = PRESENT_RO, False

    # --- the mm's own page management --------------------------------------------------
    def _new_page(self, vma: Vma, idx: int) -> Page:
        return self.db.alloc(f"{vma.name}+{idx}", (vma.start >> PAGE_SHIFT) + idx)

    def handle_fault(self, vma: Vma, idx: int, e: PageEntry, write: bool) -> None:
        """``handle_mm_fault`` for a normal VMA page that is not (suitably) mapped yet.
        Callers have checked VMA permissions, signals, hwpoison and NOWAIT."""
        if e.state == NEEDS_IO:                       # I/O completes: page is resident again
            pg = self._new_page(vma, idx)
            if e.saved:
                pg.data.update(e.saved)
            e.page, e.saved, e.state = pg, None, RESIDENT
        if e.state == UNPOPULATED:
            self._fault_unpopulated(vma, idx, e, write)
        elif e.state == RESIDENT:
            if write or (vma.shared and vma.flags & VM_WRITE):
                e.state = PRESENT_RW
            else:
                e.state, e.cow = PRESENT_RO, False       # exclusive page: a later write reuses it
        elif e.state == PRESENT_RO and write:
            self._write_fault_on_ro(vma, idx, e)

    def _fault_unpopulated(self, vma: Vma, idx: int, e: PageEntry, write: bool) -> None:
        """``do_anonymous_page`` / ``do_fault`` (shared, page cache): a first touch."""
        if not write and not vma.shared:
            e.page, e.state, e.cow = self.db.zero, PRESENT_RO, True   # read: map the zero page
            return
        e.page = self._new_page(vma, idx)       # write, or a shared (page-cache) read fault
        e.state = PRESENT_RW if write or (vma.shared and vma.flags & VM_WRITE) else PRESENT_RO
        e.cow = False

    def _write_fault_on_ro(self, vma: Vma, idx: int, e: PageEntry) -> None:
        """``do_wp_page``: reuse the page (shared, or exclusive) or break COW into a private copy."""
        if vma.shared or not e.cow:
            e.state = PRESENT_RW                      # write-protect fault: same page
            return
        old = e.page                                  # COW break: private copy
        new = self._new_page(vma, idx)
        if old is not None:
            new.data.update(old.data)
            if old is not self.db.zero:
                self.db.mm_put(old)
        e.page, e.state, e.cow = new, PRESENT_RW, False

    def read(self, pg: Page, offset: int) -> int:
        return pg.data.get(offset, 0)

    def write(self, pg: Page, offset: int, value: int) -> None:
        pg.data[offset] = value

    # --- host events (callers run the mmu_notifier around them) --------------------------
    def zap(self, vma: Vma, idx: int, count: int) -> None:
        """``madvise(MADV_DONTNEED)``: private anon pages are freed, shared ones stay resident,
        remapped PTEs are cleared (the driver's handler repopulates them on the next fault)."""
        for i in range(idx, min(idx + count, vma.npages)):
            if vma.remapped:
                pte = vma.pte(i)
                if pte is not None and pte.present:
                    pte.present, pte.handler = False, H_POPULATES
                continue
            e = self.entry(vma, i)
            if e.state in (PRESENT_RW, PRESENT_RO):
                if vma.shared:
                    e.state = RESIDENT
                else:
                    if e.page is not None and e.page is not self.db.zero:
                        self.db.mm_put(e.page)
                    e.page, e.state = None, UNPOPULATED

    def protect(self, vma: Vma, read: bool, write: bool) -> None:
        """``mprotect``: removing write permission write-protects every present PTE."""
        if not write:
            for e in vma.pages.values():
                if e.state == PRESENT_RW:
                    e.state, e.cow = PRESENT_RO, False
            for pte in vma.ptes.values():
                pte.writable = False
            vma.default_pte_writable = False
        vma.flags = (vma.flags & ~(VM_READ | VM_WRITE)) | (VM_READ if read else 0) | (VM_WRITE if write else 0)

    def unmap(self, vma: Vma) -> None:
        for e in vma.pages.values():
            if e.page is not None and e.page is not self.db.zero and e.state in (PRESENT_RW, PRESENT_RO, RESIDENT):
                self.db.mm_put(e.page)
        self._forget(vma)

    def set_state(self, vma: Vma, idx: int, state: str) -> None:
        """Host-side page events: swapped out (needs I/O), poisoned, dropped from the page tables."""
        e = self.entry(vma, idx)
        if state == NEEDS_IO:
            if e.page is not None and e.page is not self.db.zero:
                e.saved = dict(e.page.data)
                if e.state in (PRESENT_RW, PRESENT_RO, RESIDENT):
                    self.db.mm_put(e.page)
            e.page, e.state = None, NEEDS_IO
        elif state == UNPOPULATED:
            if e.page is not None and e.page is not self.db.zero and e.state in (PRESENT_RW, PRESENT_RO, RESIDENT):
                self.db.mm_put(e.page)
            e.page, e.state = None, UNPOPULATED
        else:
            self._set_backed_state(vma, idx, e, state)

    def _set_backed_state(self, vma: Vma, idx: int, e: PageEntry, state: str) -> None:
        """A state with a page of its own behind it (poisoned, resident, or mapped): a page
        is allocated if there is none (or only the zero page)."""
        if e.page is None or e.page is self.db.zero:
            e.page = self._new_page(vma, idx)
        if state == HWPOISON:
            e.page.hwpoison = True
            e.state = HWPOISON
        elif state == RESIDENT:
            e.state = RESIDENT
        else:
            e.state = state
            self.fit(vma, e)


# --- GUP primitives (§1.4) ---------------------------------------------------------------------

def vma_is_valid(vma: Vma, write: bool) -> bool:
    """``vma_is_valid``: VM_READ, and VM_WRITE for writes."""
    return bool(vma.flags & VM_READ) and (not write or bool(vma.flags & VM_WRITE))


def _normal_entry(w: World, hva: int) -> tuple[Vma, int, PageEntry] | None:
    vma = w.mm.find(hva)
    if vma is None or vma.flags & VM_REMAPPED:
        return None
    idx = (hva - vma.start) >> PAGE_SHIFT            # vma.index(hva)
    e = vma.pages.get(idx)                           # Mm.entry, its common case inline
    return vma, idx, e if e is not None else w.mm.entry(vma, idx)


def gup_fast_only(w: World, hva: int, write: bool = True, pin: bool = False) -> Page | None:
    """``get_user_page_fast_only``: lockless, never faults; +1 ref (or pin) on success.
    Fails for remapped/special PTEs, absent or (for writes) read-only PTEs, PROT_NONE."""
    hit = _normal_entry(w, hva)
    if hit is None:
        return None
    vma, _, e = hit
    if not vma.flags & VM_READ:
        return None
    if e.state == PRESENT_RW or (e.state == PRESENT_RO and not write):
        pg = e.page
        if pg is None or not pg.pfn_valid or pg.refcount <= 0 or pg.hwpoison:
            return None
        (w.db.pin if pin else w.db.get)(pg)
        return pg
    return None


def _gup_refuses_vma(vma: Vma, write: bool) -> bool:
    """``check_vma_flags``: GUP refuses VM_IO/VM_PFNMAP and an access the VMA does not allow."""
    if vma.remapped:
        return True
    return bool((write and not vma.flags & VM_WRITE) or (not write and not vma.flags & VM_READ))


def _wait_for_io(w: World, flags: int) -> int | None:
    """A page that needs I/O: not waited for under FOLL_NOWAIT (0), interrupted by a pending
    signal under FOLL_INTERRUPTIBLE (-EINTR), else waited for (None: go on)."""
    if flags & FOLL_NOWAIT:
        return 0                                   # fault not started to completion
    if flags & FOLL_INTERRUPTIBLE and w.task.signal == "pending":
        w.task.signal_consumed = True
        return -EINTR
    w.note_wait()
    return None


def gup_slow(w: World, hva: int, flags: int, pin: bool = False) -> tuple[int, Page | None]:
    """``get_user_pages_unlocked`` / ``pin_user_pages_unlocked`` for one page.
    Returns (1, page) or (0 | -errno, None).  Order follows mm/gup.c ``__get_user_pages``:
    killable mmap lock, VMA checks, then the fatal-signal check before every page, then
    ``follow_page``/``faultin_page``."""
    task = w.task
    if task.mmap_lock_contended and task.signal == "fatal":
        return -EAGAIN, None                       # mmap_read_lock_killable interrupted (D13)
    vma = w.mm.find(hva)
    write = bool(flags & FOLL_WRITE)
    if vma is None or _gup_refuses_vma(vma, write):
        return -EFAULT, None
    if task.signal == "fatal":
        return -EINTR, None
    idx = vma.index(hva)
    e = w.mm.entry(vma, idx)
    if e.state == HWPOISON:
        return (-EHWPOISON if flags & FOLL_HWPOISON else -EFAULT), None
    if e.state == NEEDS_IO:
        r = _wait_for_io(w, flags)
        if r is not None:
            return r, None
    if not (e.state == PRESENT_RW or (e.state == PRESENT_RO and not write)):
        w.mm.handle_fault(vma, idx, e, write)
    pg = e.page
    if pg is None or pg.refcount <= 0:
        return -EFAULT, None
    (w.db.pin if pin else w.db.get)(pg)
    return 1, pg


def lookup_pte(vma: Vma, hva: int) -> RemapPte | None:
    """``follow_pte``/``follow_pfnmap_start`` on a remapped VMA: the present PTE, or None."""
    pte = vma.pte(vma.index(hva))
    if pte is None or not pte.present:
        return None
    return pte


def fixup_user_fault(w: World, vma: Vma, hva: int, write: bool) -> tuple[int, bool]:
    """Run the VMA's fault handler. Returns (0 | -errno, unlocked). Not interruptible and
    ignores FOLL_NOWAIT: the remapped path is always synchronous (§1.4, D25)."""
    if not vma_is_valid(vma, write):
        return -EFAULT, False
    pte = vma.pte(vma.index(hva))
    if pte is None or pte.page is None or pte.handler == H_FAILS:
        return -EFAULT, False
    unlocked = pte.handler == H_DROPS_LOCK
    pte.present, pte.handler = True, H_POPULATES
    return 0, unlocked


def follow_remapped_pte(w: World, vma: Vma, hva: int, write: bool) -> tuple[int, RemapPte | None]:
    """The PTE walk every generation's ``hva_to_pfn_remapped`` starts with: look the PTE up,
    else run the fault handler and look again.  Returns (0, pte), (-EAGAIN, None) when the
    handler dropped the mmap lock (the caller retries its VMA lookup), (-errno, None) when it
    failed, (-EINVAL, None) when the PTE is still absent."""
    pte = lookup_pte(vma, hva)
    if pte is None:
        r, unlocked = fixup_user_fault(w, vma, hva, write)
        if unlocked:
            return -EAGAIN, None
        if r:
            return r, None
        pte = lookup_pte(vma, hva)
        if pte is None:
            return -EINVAL, None
    return 0, pte


def hva_page_offset(hva: int) -> int:
    return hva & (PAGE_SIZE - 1)
