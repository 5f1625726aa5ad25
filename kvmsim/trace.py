"""Traces: what one backend observed for each op of a scenario (DESIGN "trace", spec §9).

Every record has two levels:

* ``api`` — what the KVM API did (sim backends only): the returned pfn class, ``writable``,
  ``hva``, the page returned, per-page reference and pin deltas before and after the caller's
  canonical release, accessed/dirty changes, async/NEEDS_IO, x86 ``RET_PF_*`` results.
* ``fault`` — an access's fault path (``fault_record.py``): the model's, and a real kernel's as far
  as its tracing shows it; compared separately from both levels (``oracles/faultpath.py``).
* ``vmm`` — what a VMM using /dev/kvm sees (every backend, including a real host): data read,
  the exits ``KVM_RUN`` returned (``MMIO``, ``EINTR``, ``EFAULT``…), signals, dirty-log bits.

``events`` lists WARN/BUG hits of the op (an observation, never a crash of the fuzzer).
Values are plain (ints, strs, bools, lists, dicts) so traces serialise to YAML/JSON unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NOT_OBSERVABLE = "not observable on this backend"


@dataclass(slots=True)
class OpRecord:
    index: int
    op: str
    api: dict[str, Any] | None = None
    vmm: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    fault: list[dict[str, Any]] | None = None     # an access's fault path, one entry per fault (fault_record.py)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "op": self.op}
        if self.api is not None:
            d["api"] = self.api
        if self.vmm is not None:
            d["vmm"] = self.vmm
        if self.events:
            d["events"] = list(self.events)
        if self.fault is not None:
            d["fault"] = self.fault
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpRecord:
        return cls(d["index"], d["op"], d.get("api"), d.get("vmm"), list(d.get("events", [])), d.get("fault"))


@dataclass(slots=True)
class Trace:
    backend: str
    records: list[OpRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "meta": dict(self.meta), "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        return cls(d["backend"], [OpRecord.from_dict(r) for r in d.get("records", [])], dict(d.get("meta", {})))
