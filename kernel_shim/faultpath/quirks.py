"""Named reasons why a real kernel's fault-path record differs from the model's (docs/kernels.md,
"Fault-path records").  Each is a documented property of a kernel version or of how the shim
realises a scenario, never a model bug; each is recognised from what both records show, not from
the scenario's name.  ``kernel_shim.quirks.explain_divergence`` asks here for ``fault.*`` fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kvmsim.scenario import Scenario

FAULT_QUIRKS: dict[str, str] = {
    "own-invalidation-retry":
        "a write fault whose GUP breaks COW (or otherwise changes the PTE it maps) invalidates that range "
        "through the mmu notifier itself; the fault is then stale (mmu_invalidate_retry) and KVM returns "
        "RET_PF_RETRY, and the guest's re-executed access faults again and maps the new page.  The model "
        "does not count the fault's own invalidation, so it maps at the first fault (one fault, not two)",
    "noslot-before-faultin":
        "on 6.12 and 7.2 (not on 6.1) kvm_faultin_pfn decides a fault on a gfn without memslot before any "
        "gfn->pfn call (kvm_handle_noslot_fault); the model's g1, like 6.1, calls __gfn_to_pfn_memslot, "
        "which returns KVM_PFN_NOSLOT.  Same MMIO SPTE and emulation either way",
    "uninterruptible-fault-before-6.2":
        "before 6.2 __gfn_to_pfn_memslot has no 'interruptible' argument: the second, waiting attempt is "
        "not interruptible (the model's g1 is 6.3/6.4)",
    "shadow-gpte-dirty":
        "shadow paging (this host, PVM): a read fault gets a writable SPTE only if the guest PTE is already "
        "dirty, so a read maps the page read-only where the model's TDP read fault maps it writable",
    "needs-io-is-userfaultfd":
        "a needs_io page is a missing userfaultfd page filled with UFFDIO_COPY, which installs a writable "
        "PTE in a writable VMA even for a read fault, so the read's retry maps it writable (map_writable, "
        "writable SPTE); the model reads a swapped-out page back read-only on a read fault",
}


def _version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m[1]), int(m[2])) if m else (0, 0)


def _needs_io(sc: Scenario, index: int, vma: Any) -> bool:
    if vma is None:
        return False
    if vma.state == "needs_io" or any(s == "needs_io" for s, _ in vma.page_states.values()):
        return True
    return any(op.kind == "page_state" and op.args["vma"] == vma.name and op.args["state"] == "needs_io"
               for op in sc.ops[:index])


def explain_fault(sc: Scenario, index: int, field: str, model: list[dict[str, Any]], real: list[dict[str, Any]],
                  meta: dict[str, Any], vma: Callable[[], Any]) -> str | None:
    """The quirk that explains one differing ``fault.*`` field of access ``index`` (``meta``: the
    real trace's; ``vma()``: the VMA spec behind the access, computed only when a rule needs it:
    it replays the scenario), or None."""
    if not model or not real:
        return None
    release = str(meta.get("kernel", ""))
    m, r = model[-1], real[-1]
    write = bool(sc.ops[index].args.get("write"))
    if field == "fault.count":
        extra = real[:len(real) - len(model)]
        if write and len(real) > len(model) and all(
                f.get("result") == "pfn" and f.get("spte") is None and not f.get("emulated") for f in extra):
            return "own-invalidation-retry"
        return None
    if field in ("fault.calls", "fault.result") and r.get("calls") == [] and r.get("result") is None \
            and m.get("result") == "NOSLOT" and _version(release) > (6, 1):
        return "noslot-before-faultin"
    if field == "fault.calls" and _version(release) < (6, 2) and isinstance(r.get("calls"), list) \
            and len(r["calls"]) == len(m.get("calls") or []) \
            and [c["nowait"] for c in r["calls"]] == [c["nowait"] for c in m["calls"]] \
            and not any(c["interruptible"] for c in r["calls"]):
        return "uninterruptible-fault-before-6.2"
    if field in ("fault.map_writable", "fault.spte") and not write and _needs_io(sc, index, vma()):
        rw = r.get("map_writable") if field == "fault.map_writable" else (r.get("spte") or {}).get("writable")
        mw = m.get("map_writable") if field == "fault.map_writable" else (m.get("spte") or {}).get("writable")
        if rw is True and mw is False:
            return "needs-io-is-userfaultfd"
    if field == "fault.spte" and not write and "pvm-shadow-paging" in (meta.get("quirks") or []) \
            and (r.get("spte") or {}).get("writable") is False and (m.get("spte") or {}).get("writable") is True:
        return "shadow-gpte-dirty"
    return None
