"""Named host quirks: known, documented reasons why this host's VMM-level traces differ from the
model's (or why a scenario is realised the way it is).  docs/host.md explains each one.

A quirk is a property of the host or of how the shim realises a scenario, never a model bug:
model bugs are reported to the model's maintainers and left visible as unexplained differences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kvmsim.scenario import API_OPS, Scenario, memory_at


@dataclass(frozen=True)
class Quirk:
    name: str
    summary: str


_ALL = [
    Quirk("emulated-path-mmio",
          "path=emulated: CPL0 guest code is run by KVM's instruction emulator, which reaches guest memory "
          "through gfn_to_hva + copy_{from,to}_user; where that fails (hole, PROT_NONE, write to PROT_READ) the "
          "access becomes KVM_EXIT_MMIO instead of the fault path's -EFAULT"),
    Quirk("emulated-uffd-signal-spin",
          "path=emulated: a signal while the emulator waits on a userfaultfd page does not end KVM_RUN "
          "with -EINTR; the vCPU re-faults in the kernel until the page is filled (a hang, ended only by "
          "SIGKILL, if it never is)"),
    Quirk("pvm-shadow-paging",
          "this host's KVM MMU is shadow paging under PVM (tdp_mmu=N), not EPT/NPT: SPTE level and A/D "
          "behaviour differ from the model's TDP assumptions; not visible at VMM level"),
    Quirk("no-mmio-caching",
          "kvm.mmio_caching=N here: no MMIO SPTEs, every access to a gfn without memslot is emulated; "
          "the VMM sees the same KVM_EXIT_MMIO"),
    Quirk("perf-pfnmap",
          "VM_PFNMAP VMAs are perf-event ring buffers: frames are ordinary kernel pages (kind normal; "
          "none/reserved/zone_device are VMM-equivalent on g3), PTEs are always present, a read-only PTE "
          "in a writable VMA is a ring-buffer data page (runs of 2^k after a writable page), and "
          "buffers can only be mprotect-ed or unmapped whole"),
    Quirk("perf-control-page-mkwrite",
          "a writable-PTE pfnmap page is a ring-buffer control page; after mprotect(r) and mprotect(rw) "
          "its PTE is read-only but pfn_mkwrite upgrades it on the next write, so the emulator's write "
          "succeeds where the model's read-only PTE turns it into MMIO"),
    Quirk("shadow-gpte-dirty",
          "shadow paging: a read fault gets a writable SPTE only if the guest PTE is already dirty "
          "(KVM keeps the guest D bit exact), so in a dirty-logged slot a read marks the page dirty "
          "exactly when the guest wrote that gfn earlier (even while it had no memslot); the model is TDP, "
          "where make_spte marks every writable SPTE it creates dirty, read faults included"),
    Quirk("api-ops-not-executed",
          "API-level ops (lookup, gfn_to_page, vcpu_map, x86_fault…) are not observable from /dev/kvm and are "
          "not executed here, so their side effects in the model (a page faulted in or read back from I/O, an "
          "SPTE installed, a dirty bit) are absent on the host for later ops on the same gfn"),
    Quirk("killed-vmm-silent",
          "a VMM killed by a fatal signal sees no KVM_RUN return at all: only the outcome is comparable, "
          "and nothing after it ran"),
    Quirk("uninterruptible-fault-before-6.2",
          "kernels before 6.2 fault guest memory in without FOLL_INTERRUPTIBLE (KVM_PFN_ERR_SIGPENDING came in "
          "6.2): a non-fatal signal does not end KVM_RUN with -EINTR while the vCPU waits for the page, so the "
          "access waits for the I/O (the scenario's deadline ends it); the model's g1 is 6.3/6.4"),
    Quirk("needs-io-is-userfaultfd",
          "needs_io pages are missing pages of a userfaultfd range filled by a resolver thread; a pending "
          "signal is sent by the resolver while the vCPU waits (else delivered when the op ends)"),
]
QUIRKS: dict[str, str] = {q.name: q.summary for q in _ALL}


def _fault_quirks() -> None:
    """The fault-path quirks (kernel_shim/faultpath/quirks.py) are named quirks too."""
    from .faultpath.quirks import FAULT_QUIRKS
    for name, summary in FAULT_QUIRKS.items():
        QUIRKS.setdefault(name, summary)


_fault_quirks()


def applicable(sc: Scenario) -> list[str]:
    """Quirks that shape how this scenario is realised on this host."""
    out = ["pvm-shadow-paging"] if _pvm() else []
    vmas = sc.world.vmas
    if any(v.remap in ("pfnmap", "io") for v in vmas):
        out.append("perf-pfnmap")
    if any(v.state == "needs_io" or any(s == "needs_io" for s, _ in v.page_states.values()) for v in vmas) or \
            any(op.kind == "page_state" and op.args["state"] == "needs_io" for op in sc.ops):
        out.append("needs-io-is-userfaultfd")
    if sc.world.signal == "fatal" or any(op.kind == "signal" and op.args["kind"] == "fatal" for op in sc.ops):
        out.append("killed-vmm-silent")
    return out


def explain(sc: Scenario, d: Any, left: dict[str, Any], right: dict[str, Any], path: str = "native-cpl3",
            meta: dict[str, Any] | None = None, realised: bool = False) -> str | None:
    """The quirk that explains one differing field (left: model, right: host), or None.
    ``meta``: the real trace's meta (its kernel and quirks; default: this host's).  ``realised``:
    the model ran only what the host ran (kvmsim.realised), so API ops explain nothing."""
    lo, ro = left.get("outcome"), right.get("outcome")
    pvm = "pvm-shadow-paging" in meta.get("quirks", []) if meta is not None else _pvm()
    if _api_touched(sc, d) and not realised:
        return "api-ops-not-executed"
    return (_uninterruptible_before_6_2(d, lo, ro, left, meta)
            or _emulated_path_mmio(sc, d, lo, ro, path)
            or _perf_control_page_mkwrite(sc, d, lo, ro, left)
            or (_shadow_gpte_dirty(sc, d, left, right) if pvm else None))


def _uninterruptible_before_6_2(d: Any, lo: Any, ro: Any, left: dict[str, Any],
                                meta: dict[str, Any] | None) -> str | None:
    release = re.match(r"(\d+)\.(\d+)", str((meta or {}).get("kernel", "")))
    if release and (int(release[1]), int(release[2])) < (6, 2) and d.op == "access" and lo == "ok" \
            and ro == "timeout" and "EINTR" in (left.get("exits") or []):
        return "uninterruptible-fault-before-6.2"
    return None


def _emulated_path_mmio(sc: Scenario, d: Any, lo: Any, ro: Any, path: str) -> str | None:
    if path == "emulated" and lo == "efault" and ro == "mmio":
        return "emulated-path-mmio"
    if path == "emulated" and lo == "ok" and ro == "mmio" and d.op == "access":
        v, prot = _vma_at(sc, d.index)
        if v is not None and v.remap in ("pfnmap", "io") and prot == "none":
            return "emulated-path-mmio"              # the fault path maps PROT_NONE PFNMAP; copy_from_user cannot
    return None


def _perf_control_page_mkwrite(sc: Scenario, d: Any, lo: Any, ro: Any, left: dict[str, Any]) -> str | None:
    if d.op == "access" and lo == "mmio" and ro == "ok" and left.get("mmio", {}).get("is_write"):
        if _pfnmap_reprotected(sc, d.index):
            return "perf-control-page-mkwrite"
    if d.op == "access" and d.field == "data" and lo == ro == "ok" and _pfnmap_reprotected(sc, d.index):
        v, _ = _vma_at(sc, d.index)
        if v is not None and v.remap in ("pfnmap", "io"):
            return "perf-control-page-mkwrite"      # a later read sees what that write stored
    return None


def _shadow_gpte_dirty(sc: Scenario, d: Any, left: dict[str, Any], right: dict[str, Any]) -> str | None:
    """Under shadow paging (PVM) the dirty log follows the guest PTE's dirty bit."""
    if d.op != "get_dirty_log" or d.field != "dirty":
        return None
    model, host = set(left.get("dirty") or []), set(right.get("dirty") or [])
    base = _slot_base(sc, d.index)
    written = {op.args["gpa"] >> 12 for op in sc.ops[:d.index] if op.kind == "access" and op.args["write"]}
    if base is not None:
        # host-only bits: read faults on gfns the guest had written (guest PTE already dirty);
        # model-only bits: read faults TDP logs but shadow paging does not (guest PTE clean)
        host_ok = all(base + p in written for p in host - model)
        model_ok = all(base + p not in written for p in model - host)
        if (host ^ model) and host_ok and model_ok:
            return "shadow-gpte-dirty"
    return None


def _api_touched(sc: Scenario, d: Any) -> bool:
    """Did an API op before this one work on the gfn(s) the difference is about?"""
    api = {op.args["gfn"] for op in sc.ops[:d.index] if "gfn" in op.args and op.kind in
           ("lookup", "gfn_to_page", "vcpu_map", "x86_fault")}
    if not api:
        return False
    op = sc.ops[d.index]
    if op.kind == "access":
        return op.args["gpa"] >> 12 in api
    if op.kind == "get_dirty_log" and isinstance(d.left, list) and isinstance(d.right, list):
        base = _slot_base(sc, d.index)
        return base is not None and all(base + p in api for p in set(d.left) ^ set(d.right))
    return False


def _vma_at(sc: Scenario, index: int) -> tuple[Any, str | None]:
    """The VMA (spec) behind the gpa of access ``index`` at that time, and its prot then."""
    mem = memory_at(sc, index)
    slot = mem.slot_at(0, sc.ops[index].args["gpa"] >> 12)
    if slot is None:
        return None, None
    v = mem.vmas[slot.spec.vma]
    return v.spec, v.prot


def _slot_base(sc: Scenario, index: int) -> int | None:
    """The base gfn of the memslot that op ``index`` (a get_dirty_log) names, at that time."""
    a = sc.ops[index].args
    s = memory_at(sc, index).slots.get((a["as_id"], a["slot"]))
    return None if s is None else s.gfn


def _pfnmap_reprotected(sc: Scenario, index: int) -> bool:
    names = {v.name for v in sc.world.vmas if v.remap in ("pfnmap", "io")}
    seen_r = set()
    for op in sc.ops[:index]:
        if op.kind == "mprotect" and op.args["vma"] in names:
            if op.args["prot"] != "rw":
                seen_r.add(op.args["vma"])
            elif op.args["vma"] in seen_r:
                return True
    return False


def _pvm() -> bool:
    import os
    return os.path.isdir("/sys/module/kvm_pvm")


@dataclass
class _Field:
    index: int
    op: str
    field: str
    left: Any
    right: Any


def explain_divergence(sc: Scenario, index: int, fields: list[str], model: Any, real: Any) -> dict[str, str]:
    """``quirk:<name>`` for each ``vmm.*`` field of op ``index`` that a quirk of the real backend
    explains (``model``/``real``: the two traces, the model realised as the real one ran)."""
    lv, rv = model.records[index].vmm or {}, real.records[index].vmm or {}
    path = real.meta.get("path", "native-cpl3")
    out = {}
    for f in fields:
        if f.startswith("fault."):
            from .faultpath.quirks import explain_fault
            q = explain_fault(sc, index, f, model.records[index].fault or [], real.records[index].fault or [],
                              real.meta, lambda: _vma_at(sc, index)[0])
            if q is not None:
                out[f] = f"quirk:{q}"
        if f.startswith("vmm."):
            key = f[4:]
            q = explain(sc, _Field(index, sc.ops[index].kind, key, lv.get(key), rv.get(key)), lv, rv, path, real.meta,
                        realised="realised_as" in model.meta or not any(op.kind in API_OPS for op in sc.ops))
            if q is not None:
                out[f] = f"quirk:{q}"
    return out
