"""The simulated host at run time: one instance per scenario execution (spec §1).

It holds the host mm, the pfn database, the memslots, the mmu_notifier counters, the task and
vCPU state, module parameters, the x86 SPTEs and dirty bitmaps, and the WARN/BUG events of the
op being executed.  Generations only read and change it through the model's primitives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .constants import (
    INTERNAL_SLOT_IDS,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    PAGE_SHIFT,
    VM_IO,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_REMAPPED,
    VM_SHARED,
    VM_WRITE,
)
from .memslot import Memslot, Memslots
from .mm import HWPOISON, PRESENT_RO, PRESENT_RW, RESIDENT, Mm, PageEntry, RemapPte, Vma
from .notifier import MmuNotifier
from .pfndb import Page, PfnDB
from .scenario import Scenario, VmaSpec


@dataclass(slots=True)
class Task:
    """The VMM's vCPU thread (spec §1.3 "Task signal state")."""
    signal: str = "none"             # none | pending (non-fatal) | fatal
    signal_consumed: bool = False    # a wait was interrupted by the pending signal
    waited: bool = False             # the current op slept (I/O)
    mmap_lock_contended: bool = False
    signals_sent: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Vcpu:
    guest_mode: bool = False
    smm: bool = False
    async_pf: bool = False
    apicv: bool = True
    apf_queue: set[int] = field(default_factory=set)

    @property
    def as_id(self) -> int:
        return 1 if self.smm else 0


@dataclass(slots=True)
class Spte:
    pfn: int
    writable: bool
    level: int
    page: Page | None
    accessed: bool = False
    dirty: bool = False


PROT_FLAGS = {"none": 0, "r": VM_READ, "rw": VM_READ | VM_WRITE}
REMAP_FLAGS = {"none": 0, "pfnmap": VM_IO | VM_PFNMAP, "io": VM_IO | VM_PFNMAP, "mixedmap": VM_MIXEDMAP}


class World:
    __slots__ = ("db", "mm", "slots", "notifier", "task", "vcpu", "allow_unsafe_mappings", "enable_mmio_caching",
                 "tdp_enabled", "sptes", "dirty", "events", "warned", "race_hook", "on_zap")

    def __init__(self, vcpu: Vcpu | None = None, notifier: MmuNotifier | None = None) -> None:
        self.db = PfnDB()
        self.mm = Mm(self.db)
        self.slots = Memslots()
        self.notifier = notifier if notifier is not None else MmuNotifier()
        self.task = Task()
        self.vcpu = vcpu if vcpu is not None else Vcpu()
        self.allow_unsafe_mappings = False
        self.enable_mmio_caching = True
        self.tdp_enabled = True
        self.sptes: dict[tuple[int, int], Spte] = {}
        self.dirty: dict[tuple[int, int], set[int]] = {}
        self.events: list[str] = []
        self.warned: set[str] = set()
        self.race_hook: Callable[[], None] | None = None    # called by fault paths right after GUP (race_invalidate)
        self.on_zap: Callable[[World, Spte], None] | None = None    # the generation's SPTE A/D propagation (D17)

    # --- events ----------------------------------------------------------------------
    def warn_once(self, site: str) -> None:
        """WARN_ON_ONCE: the first hit is reported; the caller's error path runs every time."""
        if site not in self.warned:
            self.warned.add(site)
            self.events.append(f"WARN:{site}")

    def warn(self, site: str) -> None:
        self.events.append(f"WARN:{site}")

    def bug(self, site: str) -> None:
        self.events.append(f"BUG:{site}")

    def note_wait(self) -> None:
        self.task.waited = True

    def race_point(self) -> None:
        if self.race_hook is not None:
            hook, self.race_hook = self.race_hook, None
            hook()

    # --- module parameters -------------------------------------------------------------
    def slot_for(self, gfn: int, vcpu: bool) -> Memslot | None:
        """``kvm_vcpu_gfn_to_memslot`` (vCPU address space) or ``gfn_to_memslot`` (AS 0)."""
        return self.slots.find(self.vcpu.as_id if vcpu else 0, gfn)

    # --- SPTEs and dirty log -------------------------------------------------------------
    def zap_gfns(self, as_id: int | None, lo: int, hi: int) -> None:
        for key in [k for k in self.sptes if (as_id is None or k[0] == as_id) and lo <= k[1] < hi]:
            spte = self.sptes.pop(key)
            if self.on_zap is not None:
                self.on_zap(self, spte)

    def zap_hva_range(self, start: int, end: int) -> None:
        for s in self.slots.slots:
            lo, hi = max(start, s.userspace_addr), min(end, s.hva_end)
            if lo < hi:
                g0 = s.base_gfn + ((lo - s.userspace_addr) >> PAGE_SHIFT)
                g1 = s.base_gfn + ((hi - 1 - s.userspace_addr) >> PAGE_SHIFT) + 1
                self.zap_gfns(s.as_id, g0, g1)

    def mark_page_dirty(self, slot: Memslot | None, gfn: int) -> None:
        """``mark_page_dirty_in_slot``: only for dirty-logged slots."""
        if slot is not None and slot.dirty_log:
            self.dirty.setdefault((slot.as_id, slot.id), set()).add(gfn - slot.base_gfn)

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_scenario(cls, sc: Scenario) -> World:
        """The world a scenario describes.  VMAs are placed in the same pass that builds them
        (``Scenario.vma_starts``) and memslots find their VMA by name in a dict of the VMAs just built:
        per-VMA ``Scenario.vma_start`` and ``Mm.by_name`` calls were about a fifth of a build."""
        ws = sc.world
        w = cls(Vcpu(ws.guest_mode, ws.smm, ws.async_pf, ws.apicv), MmuNotifier(ws.seq, 0, ws.seq_bits))
        w.allow_unsafe_mappings = ws.allow_unsafe_mappings
        task = w.task
        task.signal = ws.signal
        task.mmap_lock_contended = ws.mmap_lock_contended
        db, mm, slots = w.db, w.mm, w.slots
        for p in ws.pages:
            db.declare(p.name, p.kind, p.pfn, None, p.memremap_ok)
        named: dict[str, Vma] = {}
        for v, start in zip(ws.vmas, sc.vma_starts()):
            vma = mm.add(w.build_vma(v, start))
            named.setdefault(v.name, vma)          # Mm.by_name: the first VMA of that name
        for s in ws.memslots:
            vma = named[s.vma]
            flags = (KVM_MEM_READONLY if s.readonly else 0) | (KVM_MEM_LOG_DIRTY_PAGES if s.log_dirty else 0)
            sid = INTERNAL_SLOT_IDS[s.internal] if s.internal else s.id
            slots.add(Memslot(sid, s.as_id, s.gfn, s.pages, vma.start + (s.offset << PAGE_SHIFT), flags))
        return w

    def build_vma(self, v: VmaSpec, start: int) -> Vma:
        """The VMA ``v`` describes, mapped at ``start``, with the pages and PTEs it spells out."""
        flags = PROT_FLAGS[v.prot] | (VM_SHARED if v.shared else 0) | REMAP_FLAGS[v.remap]
        vma = Vma(v.name, start, start + (v.pages << PAGE_SHIFT), flags, v.state,
                  512 if v.host_level == "2m" else 1)
        db = self.db
        if flags & VM_REMAPPED:
            vma.default_pte_writable = bool(flags & VM_WRITE)   # PTEs writable only in VM_WRITE vmas (§1.3)
            vma.frames, vma.db = v.frames, db
            for i, spec in v.ptes.items():
                pg = db.by_name[spec.page] if spec.page is not None else db.declare(f"{v.name}.frame{i}", v.frames)
                vma.ptes[i] = RemapPte(spec.present, pg, spec.writable and bool(flags & VM_WRITE), spec.handler)
            return vma
        mm, pages, cow = self.mm, vma.pages, not v.shared
        for i, (state, pname) in v.page_states.items():
            e = pages[i] = PageEntry(state)
            if pname is not None:
                e.page = db.by_name[pname]
                db.mm_get(e.page)
            if state == HWPOISON:
                mm.set_state(vma, i, HWPOISON)
            elif e.page is None and state in _BACKED_AT_BUILD:
                e.page = mm._new_page(vma, i)
            e.cow = cow
            mm.fit(vma, e)                         # no writable PTE without VM_WRITE (§1.3)
        return vma


_BACKED_AT_BUILD = frozenset((PRESENT_RW, PRESENT_RO, RESIDENT))
"""Page states a VMA's page is built with a page of its own for (when the scenario names none)."""
