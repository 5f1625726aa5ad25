"""The part of a scenario a real kernel runs, so that an execution already observed is not run again.

Why: a guest kernel under TCG costs tens of milliseconds per scenario, and fuzz inputs often
differ only where no kernel looks.  The host backend's execution code (``host_exec``) never
passes API-only ops (``lookup``, ``vcpu_map``…) to KVM: it records them as ``not_observable``
without reading their arguments (an armed signal is delivered there, which depends on the op
kinds only).  So two scenarios with the same world and the same ops, API-only arguments aside,
run the same on a kernel, and the first one's records are the observation of both.  A scenario
none of whose ops reaches the kernel (API-only ops and vCPU/signal state changes) has nothing to
run at all.  Executions that ended early (timeout, crash) or printed kernel messages are never
reused: they are the ones worth running again.
"""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict
from typing import Any

from kvmsim.scenario import API_OPS, Scenario
from kvmsim.trace import OpRecord, Trace

from ..host_exec import NOT_OBSERVABLE

# Ops the host execution records without any observation (they set state for later ops).
STATE_ONLY = ("signal", "mmap_lock", "vcpu_state")
MAX_ENTRIES = 4096


def reaches_kernel(sc: Scenario) -> bool:
    return any(op.kind not in API_OPS and op.kind not in STATE_ONLY for op in sc.ops)


def kernel_part(sc: Scenario, *run_args: Any) -> bytes:
    """A key equal for two scenarios exactly when a kernel runs them the same way."""
    ops = [(op.kind,) if op.kind in API_OPS else (op.kind, sorted(op.args.items())) for op in sc.ops]
    return pickle.dumps((sc.world, ops, run_args), protocol=pickle.HIGHEST_PROTOCOL)


def unrun_records(sc: Scenario) -> list[OpRecord]:
    """The records ``host_exec`` gives a scenario none of whose ops reaches the kernel."""
    return [OpRecord(i, op.kind, {"not_observable": NOT_OBSERVABLE[op.kind]} if op.kind in API_OPS else None)
            for i, op in enumerate(sc.ops)]


class Observed:
    """The last ``MAX_ENTRIES`` executions of one kernel, by kernel part."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, Trace] = OrderedDict()
        self.hits = 0

    def get(self, key: bytes, backend: str) -> Trace | None:
        t = self._seen.get(key)
        if t is None:
            return None
        self._seen.move_to_end(key)
        self.hits += 1
        return Trace(backend, copy.deepcopy(t.records), {**t.meta, "reused": "an identical execution ran earlier"})

    def put(self, key: bytes, t: Trace) -> None:
        if "lost" in t.meta or t.meta.get("serial"):
            return
        self._seen[key] = Trace(t.backend, copy.deepcopy(t.records), dict(t.meta))
        if len(self._seen) > MAX_ENTRIES:
            self._seen.popitem(last=False)
