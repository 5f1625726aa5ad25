"""``qemu:<kernel>`` backends: a cached Debian kernel booted in QEMU runs the scenario through
the host backend's execution code and returns the same VMM-level trace as ``host``.

Why one boot per kernel and process: the first ``run`` boots the guest and every later one reuses
it, from any ``qemu:`` backend object naming that kernel (a ``pfndiff kernels compare`` batch, a
whole ``pfndiff fuzz`` campaign, the many judges of ``pfndiff triage``); ``run_many`` is the
explicit batch.  A scenario that hangs in the guest is ended by the guest's own deadline and
becomes the observation of the op that was running; a guest lost altogether (host deadline,
crash) gives every op of the scenario that outcome, and the next scenario boots a fresh guest.  Each trace
carries the kernel messages printed while it ran (``meta.serial``), so a finding's sidecar keeps them.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable
from typing import Any

from kvmsim.backend import Backend, BackendError
from kvmsim.scenario import Scenario
from kvmsim.trace import OpRecord, Trace

from ..host_exec import Options
from ..quirks import explain_divergence
from .cache import KernelEntry, cached_kernels, find_kernel
from .qemu import QemuError, QemuSession, qemu_missing
from .reuse import Observed, kernel_part, reaches_kernel, unrun_records

# Per scenario inside the guest (a scenario takes milliseconds there; a hung one costs this much).
GUEST_TIMEOUT = float(os.environ.get("PFNDIFF_QEMU_TIMEOUT", "10"))
HOST_MARGIN = 30.0            # on top of it, for the reply to come back before QEMU is killed
_SESSIONS: dict[str, QemuSession] = {}           # kernel (cache directory) -> its running guest
_LOCKS: dict[str, threading.Lock] = {}           # one request at a time per guest
_POOL_LOCK = threading.Lock()
_OBSERVED: dict[str, Observed] = {}              # kernel -> its executions, by kernel part
# PFNDIFF_QEMU_REUSE=0 runs every scenario in the guest, even one a kernel ran identically before.
REUSE = os.environ.get("PFNDIFF_QEMU_REUSE", "1") != "0"


def _lock_for(release: str) -> threading.Lock:
    with _POOL_LOCK:
        return _LOCKS.setdefault(release, threading.Lock())


class QemuBackend(Backend):
    """``kernel``: a cached kernel's short name (``6.1``) or release (``6.1.0-41-amd64``)."""

    def __init__(self, name: str = "qemu", kernel: str = "", path: str = "native-cpl3",
                 timeout: float | None = None) -> None:
        if not kernel:
            raise ValueError("name a kernel: qemu:<version>, e.g. qemu:6.1 (see `pfndiff kernels list`)")
        if path not in ("native-cpl3", "emulated"):
            raise ValueError(f"path must be native-cpl3 or emulated, not {path!r}")
        self.name = name
        self.kernel_name = kernel
        self.path = path
        self.timeout = GUEST_TIMEOUT if timeout is None else timeout
        self.opts = Options(cpl=3 if path == "native-cpl3" else 0)
        self.boots: list[float] = []
        self._kernel: KernelEntry | None = None

    @property
    def kernel(self) -> KernelEntry | None:
        if self._kernel is None:
            self._kernel = find_kernel(self.kernel_name)
        return self._kernel

    # --- Backend ---------------------------------------------------------------------------------
    def description(self) -> str:
        k = self.kernel
        if k is None:
            return f"Linux {self.kernel_name} in QEMU (not cached)"
        what = "merged kvm_follow_pfn" if k.generation == "g3" else "legacy gfn_to_pfn"
        return f"Linux {k.release} ({k.suite}) in QEMU/TCG, AMD SVM+NPT ({k.generation}: {what}; VMM level only)"

    def version(self) -> str:
        k = self.kernel
        return f"linux-{k.release}" if k else f"linux-{self.kernel_name}"

    def generation(self) -> str | None:
        """The generation the cache recorded for the kernel (``pfndiff kernels add``/``fetch``)."""
        k = self.kernel
        return k.generation if k is not None and k.generation in ("g1", "g3") else None

    def info(self) -> dict[str, Any]:
        k = self.kernel
        d: dict[str, Any] = {"kind": "qemu", "kernel": self.kernel_name, "path": self.path}
        if k is not None:
            d.update(release=k.release, suite=k.suite, generation=k.generation, kvm_api=k.api,
                     packages=k.packages, accel="tcg", cpu="max (AMD SVM, NPT)")
        return d

    def available(self) -> str | None:
        if self.kernel is None:                     # the more specific reason first
            have = ", ".join(e.name for e in cached_kernels()) or "none"
            return (f"kernel {self.kernel_name} is not cached (cached: {have}); "
                    "fetch it with `pfndiff kernels fetch --suite bookworm|trixie|sid`")
        return qemu_missing()

    def explain_divergence(self, sc: Scenario, index: int, fields: list[str], model: Trace,
                           real: Trace) -> dict[str, str]:
        return explain_divergence(sc, index, fields, model, real)

    def run(self, scenario: Scenario) -> Trace:
        return self._run_one(scenario)

    def run_many(self, scenarios: Iterable[Scenario]) -> list[Trace]:
        """A batch in one boot (a lost guest is rebooted for the scenarios after it)."""
        return [self._run_one(sc) for sc in scenarios]

    # --- guest -----------------------------------------------------------------------------------
    def _ensure(self, k: KernelEntry) -> QemuSession:
        s = _SESSIONS.get(k.key)
        if s is not None and s.alive:
            return s
        if s is not None:
            s.kill()
        s = QemuSession(k)
        s.start()
        self.boots.append(s.boot_seconds)
        _SESSIONS[k.key] = s
        return s

    def _run_one(self, sc: Scenario) -> Trace:
        k = self.kernel
        if k is None:
            raise BackendError(f"{self.name}: {self.available()}")
        meta: dict[str, Any] = {"generation": k.generation, "kernel": k.release, "version": self.version(),
                                "path": self.path, "qemu": "tcg -cpu max"}
        if REUSE and not reaches_kernel(sc):
            return Trace(self.name, unrun_records(sc), {**meta, "not_run": "no op reaches the kernel"})
        key = kernel_part(sc, self.opts, self.timeout)
        seen = _OBSERVED.setdefault(k.key, Observed())
        if REUSE and (t := seen.get(key, self.name)) is not None:
            return t
        t = self._in_guest(k, sc, meta)
        seen.put(key, t)
        return t

    def _in_guest(self, k: KernelEntry, sc: Scenario, meta: dict[str, Any]) -> Trace:
        with _lock_for(k.key):
            try:
                s = self._ensure(k)
            except QemuError as e:                  # not the scenario's doing: no trace to give
                raise BackendError(f"{self.name}: {e}") from None
            meta["boot_seconds"] = s.boot_seconds
            s.console_since_last()                  # boot messages stay out of the scenario's serial
            reply = s.request((sc, self.opts, self.timeout), self.timeout + HOST_MARGIN)
            serial = s.console_since_last()
        if isinstance(reply, Exception):
            return self._lost(sc, "timeout" if isinstance(reply, TimeoutError) else "crash",
                              f"the guest was lost ({reply}); QEMU killed", {**meta, "serial": serial})
        if "error" in reply:
            return self._lost(sc, "crash", str(reply["error"]).strip().splitlines()[-1], {**meta, "serial": serial})
        meta.update(reply["meta"])
        meta["serial"] = serial
        recs = [OpRecord(r["index"], r["op"], r.get("api"), r.get("vmm"), fault=r.get("fault"))
                for r in reply["records"]]
        return Trace(self.name, recs, meta)

    def _lost(self, sc: Scenario, outcome: str, why: str, meta: dict[str, Any]) -> Trace:
        """Every op gets the outcome (as the host backend does for a crashed worker): which op
        was running is unknown once the guest itself is gone."""
        recs = [OpRecord(i, op.kind, None, {"outcome": outcome, "data": None, "exits": []})
                for i, op in enumerate(sc.ops)]
        return Trace(self.name, recs, {**meta, "lost": outcome, "reason": why})

    def close(self) -> None:
        """Power off this kernel's guest (shared by every backend object naming the kernel; the
        next ``run`` boots it again)."""
        k = self.kernel
        if k is None:
            return
        with _lock_for(k.key):
            s = _SESSIONS.pop(k.key, None)
            if s is not None:
                s.stop()


@atexit.register
def shutdown() -> None:
    """Power off every guest of this process."""
    for rel in list(_SESSIONS):
        s = _SESSIONS.pop(rel, None)
        if s is not None:
            s.stop()
