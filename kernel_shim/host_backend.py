"""The ``host`` backend: scenarios on the real kernel through /dev/kvm, VMM-level traces only."""

from __future__ import annotations

import os
from typing import Any

from kvmsim.backend import Backend
from kvmsim.scenario import Scenario
from kvmsim.trace import OpRecord, Trace

from . import quirks
from .faultpath import session
from .host_exec import Options
from .probe import probe
from .runner import Runner, WorkerError

# PFNDIFF_FAULTPATH=0: no fault-path tracing on this host (records carry no ``fault`` part).
FAULT_PATH = os.environ.get("PFNDIFF_FAULTPATH", "1") != "0"


class HostBackend(Backend):
    """``path``: ``native-cpl3`` (the real fault path) or ``emulated`` (CPL0, instruction emulator).
    ``timeout``: wall-clock seconds per execution.  ``resolve_io=False`` leaves needs_io pages
    missing forever (I/O that never completes), which only the timeout ends.  ``region_v1``
    uses ``KVM_SET_USER_MEMORY_REGION`` instead of ``…REGION2``."""

    def __init__(self, name: str = "host", path: str = "native-cpl3", timeout: float = 5.0,
                 resolve_io: bool = True, region_v1: bool = False) -> None:
        if path not in ("native-cpl3", "emulated"):
            raise ValueError(f"path must be native-cpl3 or emulated, not {path!r}")
        self.name = name
        self.path = path
        self.opts = Options(cpl=3 if path == "native-cpl3" else 0, resolve_io=resolve_io, region_v1=region_v1)
        self.runner = Runner(timeout=timeout)
        self._tracing: Any = None
        self._traced = False

    def description(self) -> str:
        p = probe()
        gen = {"g3": "g3: merged kvm_follow_pfn, ≥ 6.13",
               "g1": "g1: legacy gfn_to_pfn, ≤ 6.12"}.get(p.generation or "", "?")
        caps = " ".join(n.removeprefix("KVM_CAP_") for n, v in p.caps.items() if v) or "-"
        unsafe = p.params.get("allow_unsafe_mappings", "absent")
        return (f"Linux {p.kernel} via /dev/kvm ({gen}), {self.path} fault path, VMM level only; "
                f"allow_unsafe_mappings={unsafe}; caps: {caps}")

    def version(self) -> str:
        return f"linux-{probe().kernel}"

    def info(self) -> dict[str, Any]:
        p = probe()
        return {"kind": "host", "kernel": p.kernel, "generation": p.generation, "path": self.path,
                "caps": p.caps, "allow_unsafe_mappings": p.params.get("allow_unsafe_mappings", "absent"),
                "kvm_modules": p.modules, "backings": {n: (r or "yes") for n, r in p.backings.items()},
                "quirks": sorted(quirks.QUIRKS)}

    def available(self) -> str | None:
        return probe().kvm

    def explain_divergence(self, sc: Scenario, index: int, fields: list[str], model: Trace,
                           real: Trace) -> dict[str, str]:
        return quirks.explain_divergence(sc, index, fields, model, real)

    def _trace(self) -> Any:
        """The fault-path tracing of the native path (tracepoints: this host has no kprobes), set
        up before the first execution starts the worker; None where it cannot be."""
        if not self._traced:
            self._traced = True
            if FAULT_PATH and self.path == "native-cpl3" and self.runner.worker is None:
                self._tracing = session.acquire()
        return self._tracing

    def run(self, scenario: Scenario) -> Trace:
        p = probe()
        tracing = self._trace()
        if tracing is not None:
            from .faultpath import tracefs
            tracefs.clear(tracing)
        try:
            out = self.runner.execute(scenario, self.opts)
        except WorkerError as e:
            out = {"records": [{"index": i, "op": op.kind, "vmm": {"outcome": "crash", "data": None, "exits": []}}
                               for i, op in enumerate(scenario.ops)], "meta": {"lost": "crash", "reason": str(e)}}
        if tracing is not None and "lost" not in out["meta"]:
            session.attach_faults(out, scenario, tracing)
        meta: dict[str, Any] = {"generation": p.generation, "kernel": p.kernel, "version": self.version(),
                                "path": self.path}
        meta.update(out["meta"])
        meta["quirks"] = quirks.applicable(scenario)
        recs = [OpRecord(r["index"], r["op"], r.get("api"), r.get("vmm"), fault=r.get("fault")) for r in out["records"]]
        return Trace(self.name, recs, meta)

    def close(self) -> None:
        self.runner.close()
        self._traced = False
        if self._tracing is not None:
            self._tracing = None
            session.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:                           # noqa: BLE001 - interpreter shutdown
            pass
