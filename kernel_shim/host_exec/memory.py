"""The scenario's host mappings (one ``Backing`` per VMA) and memslots, as far as this host can
make them real, and the userfaultfd resolver that fills their needs-I/O pages."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from kvmsim.scenario import WorldSpec

from .. import kvm_ioctl as k
from .. import layout, uffd
from ..backings import Backing, Unrealisable
from .state import Slot, TaskState

if TYPE_CHECKING:
    from .machine import Machine


def slot_flags(readonly: bool, log_dirty: bool) -> int:
    return (k.KVM_MEM_READONLY if readonly else 0) | (k.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0)


class HostMemory:
    # The mapping made for each VMA; kernels/guest_pfnmap swaps in BAR mappings inside a guest.
    backing_type: type[Backing] = Backing

    def __init__(self, m: Machine, task: TaskState, resolve_io: bool) -> None:
        self.m, self.vm, self.task, self.resolve_io = m, m.vm, task, resolve_io
        self.backings: dict[str, Backing] = {}
        self.slots: dict[int, Slot] = {}
        self.bad_slots: dict[int, str] = {}          # slot id -> why accesses to it are not real
        self.dead_vmas: dict[str, str] = {}
        self.unrealised: list[str] = []
        self.uffd_fd = -1
        self.resolver: uffd.Resolver | None = None

    # --- set-up --------------------------------------------------------------------------------
    def build(self, w: WorldSpec) -> str | None:
        """The world's VMAs and memslots; why the scenario cannot run at all, or None."""
        for i, v in enumerate(w.vmas):
            try:
                b = self.backing_type.create(v, layout.host_address(i))
            except Unrealisable as e:
                self.bad_vma(v.name, str(e))
                continue
            self.backings[v.name] = b
            if b.missing:
                self.need_uffd(b)
        for s in w.memslots:
            if s.internal is not None:
                self.bad_slots[s.id] = f"internal memslot {s.internal} is created by KVM, not by the VMM"
                self.slots[s.id] = Slot(s.id, s.gfn, s.pages, s.vma, s.offset, 0)
                continue
            if s.as_id != 0:
                self.unrealised.append(f"memslot {s.id} in address space {s.as_id}: no KVM_CAP_MULTI_ADDRESS_SPACE")
                continue
            r = self.create_slot(s.id, s.gfn, s.pages, s.vma, s.offset, s.readonly, s.log_dirty)
            if r < 0:
                return f"memslot {s.id}: KVM_SET_USER_MEMORY_REGION2 failed: {k.errno_name(r)}"
        return None

    def bad_vma(self, name: str, why: str) -> None:
        self.unrealised.append(f"vma {name}: {why}")
        self.dead_vmas[name] = why

    def drop_stale_slots(self, w: WorldSpec) -> None:
        """Memslots left by the previous execution stay only if this scenario starts with the
        very same one (id, GPA, size, host address, flags); the others are deleted first."""
        names = [v.name for v in w.vmas]
        want = {}
        for s in w.memslots:
            if s.internal is None and s.as_id == 0:
                hva = layout.host_address(names.index(s.vma)) + s.offset * k.PAGE
                want[s.id] = (s.gfn << 12, s.pages * k.PAGE, hva, slot_flags(s.readonly, s.log_dirty))
        for sid, r in list(self.vm.slots.items()):
            if sid != self.m.shim_slot and want.get(sid) != (r.guest_phys_addr, r.memory_size,
                                                              r.userspace_addr, r.flags):
                self.vm.delete_slot(sid)

    def create_slot(self, sid: int, gfn: int, pages: int, vma: str, offset: int, ro: bool, log: bool) -> int:
        b = self.backings.get(vma)
        if b is None:
            self.bad_slots[sid] = f"vma {vma} could not be created: {self.dead_vmas.get(vma, '?')}"
            self.slots[sid] = Slot(sid, gfn, pages, vma, offset, 0)
            if sid != self.m.shim_slot:
                self.vm.delete_slot(sid)
            return 0
        flags = slot_flags(ro, log)
        cur = self.vm.slots.get(sid)
        if cur is not None and (cur.guest_phys_addr, cur.memory_size, cur.userspace_addr, cur.flags) == \
                (gfn << 12, pages * k.PAGE, b.hva(offset), flags):
            self.slots[sid] = Slot(sid, gfn, pages, vma, offset, flags)
            return 0                                 # kept from the previous execution
        r = self.vm.set_slot(sid, gfn << 12, pages * k.PAGE, b.hva(offset), flags)
        if r == 0:
            self.slots[sid] = Slot(sid, gfn, pages, vma, offset, flags)
        return r

    # --- needs-I/O pages -------------------------------------------------------------------------
    def need_uffd(self, b: Backing) -> int:
        if self.uffd_fd < 0:
            self.uffd_fd = uffd.open_uffd()
            self.resolver = uffd.Resolver(self.uffd_fd, self.policy, self.fill)
            self.resolver.start()
        return b.register_missing(self.uffd_fd)

    def backing_at(self, hva: int) -> Backing | None:
        for b in self.backings.values():
            if b.mapped and b.addr <= hva < b.addr + b.length:
                return b
        return None

    def policy(self, hva: int, write: bool) -> str:
        b = self.backing_at(hva)
        page = b.page_of(hva) if b else -1
        if b is not None and page in b.missing:
            if self.task.in_run and self.task.signal == "pending" and not self.task.signal_sent:
                self.task.signal_sent = True
                return uffd.SIGNAL
            if not self.resolve_io and self.task.in_run:
                return uffd.HOLD
        return uffd.RESOLVE

    def fill(self, hva: int, write: bool) -> int:
        b = self.backing_at(hva)
        if b is None:
            return -errno.EFAULT
        return b.fill(self.uffd_fd, hva, write)

    # --- accesses --------------------------------------------------------------------------------
    def access_problem(self, gfn: int) -> str | None:
        """Why an access to gfn cannot be made real through the memslot behind it (None: it can)."""
        for s in self.slots.values():
            if s.gfn <= gfn < s.gfn + s.pages:
                if s.id in self.bad_slots:
                    return self.bad_slots[s.id]
                b = self.backings.get(s.vma)
                page = s.offset + gfn - s.gfn
                if b is not None and b.mapped and page in b.tainted:
                    return b.tainted[page]
                if b is not None and b.mapped and b.kind == "hugetlb" and page in b.missing:
                    return "needs_io on a hugetlb page"
                return None
        return None

    # --- teardown --------------------------------------------------------------------------------
    def release(self) -> None:
        """Release every mapping and fd.  Memslots stay (the next execution reuses identical
        ones): unmapping the backings zapped their SPTEs through the mmu notifier, and dirty
        bitmaps are emptied here."""
        if self.resolver is not None:
            self.resolver.stop()
        for b in self.backings.values():
            b.release()
        if self.uffd_fd >= 0:
            os.close(self.uffd_fd)
            self.uffd_fd = -1
        for sid, r in self.vm.slots.items():
            if sid != self.m.shim_slot and r.flags & k.KVM_MEM_LOG_DIRTY_PAGES:
                self.vm.dirty_log(sid, r.memory_size // k.PAGE)
