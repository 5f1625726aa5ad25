"""The fault-path comparison of a model with a real kernel: each access's ``OpRecord.fault``.

Why its own comparison: the VMM-level one sees only what ``KVM_RUN`` returns; the fault-path
record shows which gfn->pfn calls ran and how (nowait, interruptible), their result class,
``map_writable``, async #PF, the SPTE installed (writable, level) or the emulation taken — most
rows of spec §7 live there.  A field one side marks not observable is never compared; the number
of fields compared is counted, so "nothing differs" is never confused with "nothing was seen".

The faults of one access are aligned from the last: the last fault is the one that completed the
access (installed the SPTE, or ended in the emulator or an error); a real kernel may take more
(a retry), which is reported as ``fault.count``.  A kernel whose faults have no boundaries (PVM)
gives one summary entry marked ``count: NOT_OBSERVABLE``: only its last fault is compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmsim.fault_record import NOT_OBSERVABLE
from kvmsim.trace import Trace

FIELDS = ("write", "calls", "result", "map_writable", "async_pf", "spte", "mmio_spte", "emulated")


@dataclass
class FaultDifference:
    index: int                      # op index of the access
    field: str                      # fault.count | fault.<field> (of the access's last fault)
    model: Any
    real: Any


@dataclass
class FaultComparison:
    accesses: int = 0
    fields: int = 0
    differences: list[FaultDifference] = field(default_factory=list)


def _observable(v: Any) -> bool:
    return v != NOT_OBSERVABLE


def compare_faults(model: Trace, real: Trace) -> FaultComparison:
    """Every fault-path difference between a model's trace and a real kernel's (records with a
    ``fault`` on both sides only)."""
    out = FaultComparison()
    for m, r in zip(model.records, real.records):
        if m.fault is None or r.fault is None:
            continue
        out.accesses += 1
        counted = all(_observable(f.get("count")) for f in m.fault + r.fault)
        out.fields += counted
        if counted and len(m.fault) != len(r.fault):
            out.differences.append(FaultDifference(m.index, "fault.count", len(m.fault), len(r.fault)))
        if not m.fault or not r.fault:
            continue
        mf, rf = m.fault[-1], r.fault[-1]
        for name in FIELDS:
            a, b = mf.get(name, NOT_OBSERVABLE), rf.get(name, NOT_OBSERVABLE)
            if not (_observable(a) and _observable(b)):
                continue
            out.fields += 1
            if a != b:
                out.differences.append(FaultDifference(m.index, f"fault.{name}", a, b))
    return out
