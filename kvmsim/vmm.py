"""What a VMM sees: a guest memory access driven through ``KVM_RUN`` (spec §8, DESIGN host facts).

The vCPU loop enters the guest; an access either hits an SPTE, or takes the generation's x86
fault path.  ``RET_PF_RETRY``/``FIXED`` re-enter the guest, ``RET_PF_EMULATE`` runs the
instruction emulator (which reaches guest memory through the hva and exits with
``KVM_EXIT_MMIO`` where it cannot), a negative return is ``KVM_RUN``'s errno.  The VMM re-enters
after ``EINTR`` (it has handled the signal) and stops at anything else.
"""

from __future__ import annotations

from typing import Any

from .constants import (
    APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
    EINTR,
    ERRNO_NAMES,
    PAGE_SHIFT,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_RETRY,
    VM_READ,
    VM_WRITE,
    ret_name,
)
from .fault_record import fault_entry
from .generation import Fault, Generation
from .memslot import gfn_to_hva_many
from .mm import HWPOISON, NEEDS_IO, PRESENT_RO, PRESENT_RW, fixup_user_fault, lookup_pte
from .world import World
from .x86 import page_fault

MAX_ENTRIES = 8          # guest entries per access before the model calls it a stall


def _access_through_spte(w: World, as_id: int, gfn: int, off: int, write: bool, value: int,
                         vmm: dict[str, Any]) -> bool:
    """The access done by the hardware through a present SPTE that allows it (no exit; a read
    puts what it read in ``vmm["data"]``); False: the access faults."""
    spte = w.sptes.get((as_id, gfn))
    if spte is None or not (spte.writable or not write):
        return False
    pg = w.db.lookup(spte.pfn)
    spte.accessed = True
    if write:
        spte.dirty = True
        if pg is not None:
            pg.data[off] = value
    else:
        vmm["data"] = pg.data.get(off, 0) if pg is not None else 0
    return True


def guest_access(gen: Generation, w: World, gpa: int, write: bool, value: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (vmm observation, api diagnostics); the api's ``fault_path`` is the access's
    fault-path record (``OpRecord.fault``), one entry per fault."""
    gfn, off = gpa >> PAGE_SHIFT, gpa & 0xFF8
    as_id = w.vcpu.as_id
    exits: list[str] = []
    faults: list[str] = []
    vmm: dict[str, Any] = {"outcome": "stall", "data": None, "exits": exits}
    path: list[dict[str, Any]] = []
    api: dict[str, Any] = {"faults": faults, "fault_path": path}
    if w.task.signal == "fatal":
        vmm["outcome"] = "killed"                  # SIGKILL ends the VMM: it sees no exit at all
        return vmm, api
    for _ in range(MAX_ENTRIES):
        if _access_through_spte(w, as_id, gfn, off, write, value, vmm):
            vmm["outcome"] = "ok"
            break
        f = Fault(gfn, write, False, w.slot_for(gfn, True))
        w.task.waited = False
        r, spte = page_fault(gen, w, f)
        faults.append(ret_name(r))
        path.append(fault_entry(f, r, spte))
        if w.task.signals_sent:
            exits.append("EINTR")                  # SIGBUS pending: the vCPU loop exits
            vmm["outcome"] = "sigbus"
            vmm["signals"] = list(w.task.signals_sent)
            w.task.signals_sent.clear()
            break
        if r < 0:
            exits.append(ERRNO_NAMES.get(-r, str(-r)))
            if r == -EINTR:
                w.task.signal = "none"             # the VMM handled the signal; re-enter
                continue
            vmm["outcome"] = "efault" if exits[-1] == "EFAULT" else "errno"
            break
        if w.task.waited and w.task.signal == "pending":
            exits.append("EINTR")                  # signal arrived during an uninterruptible wait:
            w.task.signal = "none"                 # delivered once the fault completes
        if r in (RET_PF_FIXED, RET_PF_RETRY):
            continue
        if r == RET_PF_EMULATE:
            api["emulated"] = _emulate(w, gfn, off, write, value, vmm)
            break
    return vmm, api


def _emulate(w: World, gfn: int, off: int, write: bool, value: int, vmm: dict[str, Any]) -> bool:
    """The emulator's memory operand: ``kvm_vcpu_{read,write}_guest_page`` through the hva;
    where that fails (no slot, RO slot write, host refuses) the access becomes MMIO.  Returns
    whether the emulator completed the access itself (not visible to the VMM)."""
    slot = w.slot_for(gfn, True)
    if slot is not None and slot.id == APIC_ACCESS_PAGE_PRIVATE_MEMSLOT and not w.vcpu.guest_mode:
        vmm["outcome"] = "lapic"                   # handled by the in-kernel local APIC, no exit
        return False
    hva = gfn_to_hva_many(slot, gfn, write)
    pg = None if hva >= 1 << 47 else _user_access(w, hva, write)
    if pg is None:
        vmm["outcome"] = "mmio"
        vmm["exits"].append("MMIO")
        vmm["mmio"] = {"gpa": (gfn << PAGE_SHIFT) | off, "len": 8, "is_write": write,
                       "data": value if write else None}
        return False
    if write:
        pg.data[off] = value
        w.mark_page_dirty(slot, gfn)
    else:
        vmm["data"] = pg.data.get(off, 0)
    vmm["outcome"] = "ok"
    return True


def _user_access(w: World, hva: int, write: bool):
    """``copy_{from,to}_user`` on the VMM's mapping: faults pages in, no reference kept."""
    vma = w.mm.find(hva)
    if vma is None or not vma.flags & VM_READ or (write and not vma.flags & VM_WRITE):
        return None
    if vma.remapped:
        pte = lookup_pte(vma, hva)
        if pte is None:
            r, _ = fixup_user_fault(w, vma, hva, write)
            pte = lookup_pte(vma, hva) if r == 0 else None
        if pte is None or (write and not pte.writable):
            return None
        return pte.page
    idx = vma.index(hva)
    e = w.mm.entry(vma, idx)
    if e.state == HWPOISON:
        return None
    if e.state == NEEDS_IO:
        w.note_wait()
    if not (e.state == PRESENT_RW or (e.state == PRESENT_RO and not write)):
        w.mm.handle_fault(vma, idx, e, write)
    return e.page
