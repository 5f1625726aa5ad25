"""The fault-path record of a guest access: what each x86 fault it took did, in the fields of the
model's ``x86_fault`` record (docs/traces.md), so a real kernel's traced fault path (tracepoints
and kprobes, ``kernel_shim.faultpath``) compares with the model field by field.

Why a record of its own (``OpRecord.fault``) and not more ``api`` fields: the API-level comparison
of two generations is unchanged by it, and a real kernel fills it only where its tracing can see
(``NOT_OBSERVABLE`` marks a field it cannot show; such a field is never compared).

Per fault: ``write`` (the access that faulted), ``calls`` (one entry per gfn->pfn call of
``__kvm_faultin_pfn``: ``nowait``, ``interruptible``, its ``result`` class — spec §2.7: the first attempt may not wait,
the second, after async #PF declined, is interruptible), ``result`` (class of the last call's
pfn), ``map_writable``, ``async_pf`` (an async #PF started: ``queued``/``halt``), ``spte``
(``{writable, level}`` installed, level in 4 KiB pages), ``mmio_spte``, ``emulated`` (the fault
ended in the instruction emulator, ``RET_PF_EMULATE``).
"""

from __future__ import annotations

from typing import Any

from .constants import RET_PF_EMULATE, pfn_class
from .generation import Fault
from .world import Spte

NOT_OBSERVABLE = "n/o"


def _call(f: Fault, n: int) -> dict[str, Any]:
    """The n-th gfn->pfn call of a fault: the first may not wait, the second is interruptible (§2.7);
    its result class (``x86.faultin_attempts`` records it; not observable where a generation's
    own path does not)."""
    known = len(f.results) == len(f.attempts)
    return {"nowait": n == 0, "interruptible": n > 0,
            "result": pfn_class(f.results[n]) if known else NOT_OBSERVABLE}


def fault_entry(f: Fault, r: int, spte: Spte | None) -> dict[str, Any]:
    """One fault of the model's ``page_fault`` (x86.py) as a fault-path entry."""
    called = bool(f.attempts)          # a gfn without memslot is decided before any call (§2.7)
    return {"write": f.write,
            "calls": [_call(f, n) for n in range(len(f.attempts))],
            "result": pfn_class(f.pfn) if called else None,
            "map_writable": f.map_writable if called and pfn_class(f.pfn) == "pfn" else None,
            "async_pf": f.async_pf,
            "spte": None if spte is None else {"writable": spte.writable, "level": spte.level},
            "mmio_spte": f.mmio_spte,
            "emulated": r == RET_PF_EMULATE}
