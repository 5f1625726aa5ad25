"""Compare a model with a real kernel over what the kernel actually ran, and count what was compared.

Why: a real backend cannot run every op of a scenario — API-only ops (``kvm_vcpu_map``,
lookups) are not reachable from a VMM, some worlds and accesses cannot be built, and nothing runs
after a fatal signal killed the VMM.  The model runs them all, so its later observations carry
their effects (a dirty bit set at ``kvm_vcpu_unmap``, a page written by an access the host could
not make) and would differ from the kernel's for no reason of behaviour.  So the model is run
again on the ops the real backend ran, in the same order, and the two traces are compared there
only.  ``Coverage`` says how many ops each side observed and how many were compared, so a clean
comparison that compared nothing is never mistaken for agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .constants import KVM_USER_MEM_SLOTS
from .scenario import API_OPS, Op, Scenario
from .trace import OpRecord, Trace

UNOBSERVED = ("not_realisable", "not_observable", "skipped")
# Ops that deliver an armed (pending) signal when they end, on the model and on a real host alike.
DELIVERS_SIGNAL = (*API_OPS, "access")


def is_model(backend: str) -> bool:
    return backend.startswith("sim:")


def unrun(rec: OpRecord) -> str | None:
    """Why the backend did not perform this op (None: it did).  API-only ops on a real backend
    are ``not_observable`` and never reach the kernel; ``not_realisable`` and ``skipped`` records
    were not executed."""
    for part in (rec.vmm, rec.api):
        if isinstance(part, dict):
            for key in ("not_realisable", "skipped"):
                if key in part:
                    return str(part[key])
    if isinstance(rec.api, dict) and "not_observable" in rec.api and rec.vmm is None:
        return str(rec.api["not_observable"])
    return None


def _bookkept(op: Op) -> bool:
    """A memslot delete or move the host could not make (its memslot was never built) still moves
    the host's record of that memslot (``host_exec``), so later accesses see the gfns as the
    scenario says: the model makes it too."""
    return op.kind in ("memslot_delete", "memslot_move") and op.args["as_id"] == 0 \
        and op.args["slot"] < KVM_USER_MEM_SLOTS


def realised_scenario(sc: Scenario, skip: set[int]) -> tuple[Scenario, list[int | None]]:
    """``sc`` without the ops in ``skip``; returns it and, per op of it, the original index (None
    for an inserted op).  A skipped API op on a real host still delivers an armed signal when it
    ends (``host_exec``: as in the model), so one that met a pending signal becomes
    ``signal: none``: the model's signal state then follows the host's."""
    pending = sc.world.signal == "pending"
    ops: list[Op] = []
    where: list[int | None] = []
    for i, op in enumerate(sc.ops):
        if i in skip and _bookkept(op):
            ops.append(op)
            where.append(None)                      # its record stays the host's not_realisable
            continue
        if i in skip:
            if op.kind in API_OPS and pending:
                ops.append(Op("signal", {"kind": "none"}))
                where.append(None)
                pending = False
            continue
        ops.append(op)
        where.append(i)
        if op.kind == "signal":
            pending = op.args["kind"] == "pending"
        elif op.kind in DELIVERS_SIGNAL:
            pending = False
    return replace(sc, ops=ops), where


def as_realised(model: Trace, real: Trace, sc: Scenario, run: Callable[[Scenario], Trace]) -> Trace:
    """The model's trace of ``sc`` as if it had run only the ops ``real`` ran (``run`` executes a
    scenario on the model).  Ops the real backend did not run are ``not_realisable`` here too."""
    skip = {r.index: why for r in real.records if (why := unrun(r)) is not None}
    if not skip:
        return model
    sub, where = realised_scenario(sc, set(skip))
    t = run(sub) if sub.ops else Trace(model.backend, [], dict(model.meta))
    recs = [OpRecord(i, op.kind, None, {"not_realisable": f"not run on {real.backend}: {skip[i]}"})
            if i in skip else None for i, op in enumerate(sc.ops)]
    for new, orig in enumerate(where):
        if orig is not None and new < len(t.records):
            r = t.records[new]
            recs[orig] = OpRecord(orig, r.op, r.api, r.vmm, r.events, r.fault)
    out = [r if r is not None else OpRecord(i, sc.ops[i].kind) for i, r in enumerate(recs)]
    return Trace(t.backend, out, {**t.meta, "realised_as": real.backend, "not_run": len(skip)})


def realise_pair(sc: Scenario, left: Trace, right: Trace,
                 run: Callable[[str, Scenario], Trace]) -> tuple[Trace, Trace]:
    """A model paired with a real backend is re-run over the ops the real one ran
    (``run(backend_name, scenario)``); any other pair is returned as it is."""
    if is_model(left.backend) and not is_model(right.backend):
        return as_realised(left, right, sc, lambda s: run(left.backend, s)), right
    if is_model(right.backend) and not is_model(left.backend):
        return left, as_realised(right, left, sc, lambda s: run(right.backend, s))
    return left, right


def observed(rec: OpRecord, api: bool) -> bool:
    """Whether this record carries anything comparable: at VMM level, or also at API level."""
    vmm = rec.vmm
    if isinstance(vmm, dict) and vmm.keys().isdisjoint(UNOBSERVED):
        return True
    if not api:
        return False
    return bool(rec.events) or (isinstance(rec.api, dict) and rec.api.keys().isdisjoint(UNOBSERVED))


@dataclass
class Coverage:
    """How much of a scenario a comparison looked at: ops observed per side, and ops observed on
    both (compared)."""
    ops: int = 0
    left: int = 0
    right: int = 0
    compared: int = 0
    fault_accesses: int = 0         # accesses whose fault-path records were compared (oracles/faultpath.py)
    fault_fields: int = 0           # fault-path fields compared (both sides observed them)

    def add(self, other: Coverage) -> None:
        self.ops += other.ops
        self.left += other.left
        self.right += other.right
        self.compared += other.compared
        self.fault_accesses += other.fault_accesses
        self.fault_fields += other.fault_fields

    def text(self, left: str, right: str) -> str:
        fault = (f"; fault path: {self.fault_fields} fields of {self.fault_accesses} accesses compared"
                 if self.fault_accesses else "")
        return (f"{self.compared} of {self.ops} ops compared ({left} observed {self.left}, "
                f"{right} observed {self.right}){fault}")

    def summary(self, left: str, right: str) -> str:
        """``text``, led by NOTHING compared when no op was observed on both sides."""
        return self.text(left, right) if self.compared else f"NOTHING compared: {self.text(left, right)}"

    def to_dict(self) -> dict[str, Any]:
        d = {"ops": self.ops, "left": self.left, "right": self.right, "compared": self.compared}
        if self.fault_accesses:
            d.update(fault_accesses=self.fault_accesses, fault_fields=self.fault_fields)
        return d


def coverage(left: Trace, right: Trace, api: bool) -> Coverage:
    """``api``: the comparison includes API records (two simulated backends)."""
    nleft = nright = both = 0
    for a, b in zip(left.records, right.records):
        # ``observed`` of each side, its first question inline: a VMM record without the keys of an
        # unrun op (every access and host event of a model's trace) is observed
        va, vb = a.vmm, b.vmm
        la = True if type(va) is dict and va.keys().isdisjoint(UNOBSERVED) else observed(a, api)
        rb = True if type(vb) is dict and vb.keys().isdisjoint(UNOBSERVED) else observed(b, api)
        nleft += la
        nright += rb
        both += la and rb
    return Coverage(max(len(left.records), len(right.records)), nleft, nright, both)
