"""Host and memslot events, and the API-level ops a VMM cannot observe, applied between access
batches; each returns the op's record (``vmm``: what the VMM saw, or why it is not real here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmsim.constants import KVM_USER_MEM_SLOTS
from kvmsim.scenario import API_OPS, Op, WorldSpec

from .. import kvm_ioctl as k
from ..backings import Backing
from ..vm import Vm
from .memory import HostMemory
from .state import Slot, TaskState

NOT_OBSERVABLE = {
    "lookup": "the gfn→pfn lookup is internal to KVM; a VMM sees only KVM_RUN results",
    "gfn_to_page": "gfn_to_page is internal to KVM (nested/APIC consumers); not reachable from /dev/kvm",
    "vcpu_map": "kvm_vcpu_map is used by nested virtualisation; this host runs no L2 guest",
    "vcpu_unmap": "kvm_vcpu_unmap is used by nested virtualisation; this host runs no L2 guest",
    "x86_fault": "kvm_mmu_page_fault's return value is internal; see the access op for its VMM effect",
}
NO_AS1 = {"not_realisable": "address space 1 needs KVM_CAP_MULTI_ADDRESS_SPACE"}
SEQ32 = {"not_realisable": "a 32-bit mmu notifier sequence (this kernel's is 64-bit)"}
NO_INVALIDATION = {"not_realisable": "an mmu-notifier invalidation cannot be opened from userspace without its end"}
IN_FLIGHT = "memslot in flight (a delete/move half done) cannot be held from userspace"

Outcome = dict[str, Any] | None


def _ret(r: int) -> int | str:
    return 0 if r >= 0 else "-" + k.errno_name(r)


class Events:
    def __init__(self, vm: Vm, memory: HostMemory, task: TaskState, world: WorldSpec) -> None:
        self.vm, self.memory, self.task, self.world = vm, memory, task, world

    def record(self, i: int, op: Op) -> dict[str, Any]:
        rec: dict[str, Any] = {"index": i, "op": op.kind}
        if op.kind in API_OPS:
            rec["api"] = {"not_observable": NOT_OBSERVABLE[op.kind]}
            self.task.deliver_pending()            # as in the model: a KVM op ends, the signal is delivered
            return rec
        out = _HANDLERS[op.kind](self, op)
        if out is not None:
            rec["vmm"] = out
        return rec

    # --- host events -----------------------------------------------------------------------------
    def _backing(self, op: Op) -> Backing | dict[str, Any]:
        b = self.memory.backings.get(op.args["vma"])
        if b is None:
            return {"not_realisable": f"vma {op.args['vma']} was not realised"}
        return b

    def madvise(self, op: Op) -> Outcome:
        b = self._backing(op)
        if isinstance(b, dict):
            return b
        if not b.mapped:
            return {"ret": "-ENOMEM"}
        return {"ret": _ret(b.madvise(op.args["page"], op.args["count"]))}

    def mprotect(self, op: Op) -> Outcome:
        b = self._backing(op)
        return b if isinstance(b, dict) else {"ret": _ret(b.mprotect(op.args["prot"]))}

    def munmap(self, op: Op) -> Outcome:
        b = self._backing(op)
        return b if isinstance(b, dict) else {"ret": _ret(b.munmap())}

    def page_state(self, op: Op) -> Outcome:
        b = self._backing(op)
        if isinstance(b, dict):
            return b
        r = b.set_state(op.args["page"], op.args["state"])
        if r == 0 and b.missing and b.kind != "hugetlb":
            r = self.memory.need_uffd(b)
        if op.args["page"] in b.tainted:
            return {"not_realisable": b.tainted[op.args["page"]]}
        return {"ret": _ret(r)}

    def pte(self, op: Op) -> Outcome:
        b = self._backing(op)
        why = "perf ring-buffer PTEs cannot be changed one by one from userspace"
        if isinstance(b, Backing):
            b.tainted[op.args["page"]] = why
        return {"not_realisable": why}

    def invalidate_begin(self, op: Op) -> Outcome:
        self.task.open_invalidations += 1
        return dict(NO_INVALIDATION)

    def invalidate_end(self, op: Op) -> Outcome:
        self.task.open_invalidations = max(0, self.task.open_invalidations - 1)
        return dict(NO_INVALIDATION)

    # --- the task and the vCPU -------------------------------------------------------------------
    def signal(self, op: Op) -> Outcome:
        self.task.signal = op.args["kind"]
        return None

    def mmap_lock(self, op: Op) -> Outcome:
        self.task.lock_contended = op.args["contended"]
        return None

    def vcpu_state(self, op: Op) -> Outcome:
        for key in ("guest_mode", "smm", "async_pf", "apicv"):
            if op.args[key] is not None:
                self.task.flags[key] = op.args[key]
        return None

    # --- memslots --------------------------------------------------------------------------------
    def get_dirty_log(self, op: Op) -> Outcome:
        a = op.args
        if a["as_id"] != 0:
            return dict(NO_AS1)
        if self.world.seq_bits != 64:
            return dict(SEQ32)
        s = self.memory.slots.get(a["slot"])
        if s is None or s.id in self.memory.bad_slots:
            return {"not_realisable": self.memory.bad_slots.get(a["slot"], "memslot was not realised")}
        r, bits = self.vm.dirty_log(s.id, s.pages)
        return {"ret": _ret(r), "dirty": bits}

    def memslot_create(self, op: Op) -> Outcome:
        a = op.args
        if a["as_id"] != 0:
            return dict(NO_AS1)
        return {"ret": _ret(self.memory.create_slot(a["slot"], a["gfn"], a["pages"], a["vma"], a["offset"],
                                                    a["readonly"], a["log_dirty"]))}

    def _slot(self, op: Op) -> Slot | dict[str, Any]:
        if op.args["as_id"] != 0:
            return dict(NO_AS1)
        s = self.memory.slots.get(op.args["slot"])
        if s is None:
            return {"not_realisable": "memslot was not realised"}
        return s

    def memslot_delete(self, op: Op) -> Outcome:
        s = self._slot(op)
        if isinstance(s, dict):
            return s
        del self.memory.slots[s.id]
        why = self.memory.bad_slots.pop(s.id, None)
        if why is not None and not why.startswith("memslot in flight"):
            return {"not_realisable": why}
        return {"ret": _ret(self.vm.delete_slot(s.id))}

    def memslot_move(self, op: Op) -> Outcome:
        s = self._slot(op)
        if isinstance(s, dict):
            return s
        bad = self.memory.bad_slots
        if s.id in bad and s.id >= KVM_USER_MEM_SLOTS:
            return {"not_realisable": bad[s.id]}
        s.gfn = op.args["gfn"]
        if s.id in bad:
            if not bad[s.id].startswith("memslot in flight"):
                return {"not_realisable": bad[s.id]}
            del bad[s.id]
        return {"ret": _ret(self._set_slot(s, s.flags))}

    def memslot_flags(self, op: Op) -> Outcome:
        s = self._slot(op)
        if isinstance(s, dict):
            return s
        if s.id in self.memory.bad_slots:
            return {"not_realisable": self.memory.bad_slots[s.id]}
        flags = (s.flags & ~k.KVM_MEM_LOG_DIRTY_PAGES) | (k.KVM_MEM_LOG_DIRTY_PAGES if op.args["log_dirty"] else 0)
        r = self._set_slot(s, flags)
        if r == 0:
            s.flags = flags
        return {"ret": _ret(r)}

    def _set_slot(self, s: Slot, flags: int) -> int:
        b = self.memory.backings[s.vma]
        return self.vm.set_slot(s.id, s.gfn << 12, s.pages * k.PAGE, b.hva(s.offset), flags)

    def memslot_invalidate(self, op: Op) -> Outcome:
        s = self._slot(op)
        if isinstance(s, dict):
            return s
        self.memory.bad_slots.setdefault(s.id, IN_FLIGHT)
        return {"not_realisable": IN_FLIGHT}


_HANDLERS: dict[str, Callable[[Events, Op], Outcome]] = {
    kind: getattr(Events, kind) for kind in (
        "madvise", "mprotect", "munmap", "page_state", "pte", "invalidate_begin", "invalidate_end", "signal",
        "mmap_lock", "vcpu_state", "get_dirty_log", "memslot_create", "memslot_delete", "memslot_move",
        "memslot_flags", "memslot_invalidate",
    )
}
