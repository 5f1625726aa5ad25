"""One fault-path tracing session per process, shared by every backend of the process that traces
(set up by the first, taken down with the last), and the step that turns a scenario's trace
buffer into its records' ``fault`` parts."""

from __future__ import annotations

import atexit
import threading
from typing import Any

from kvmsim.scenario import Scenario

from . import marker, parse, tracefs

_LOCK = threading.Lock()
_session: tracefs.Tracing | None = None
_users = 0


def acquire(release: str | None = None, kprobes: bool = True) -> tracefs.Tracing | None:
    """The process's tracing (set up now if it is the first user); None where there is no tracefs.
    Call before the VMM worker starts: it learns from ``marker`` that it must write markers."""
    global _session, _users
    with _LOCK:
        if _session is None:
            _session = tracefs.open_tracing(release, kprobes=kprobes)
            if _session is None:
                return None
            marker.enable(_session.root)
        _users += 1
        return _session


def release() -> None:
    global _session, _users
    with _LOCK:
        _users = max(0, _users - 1)
        if _users == 0 and _session is not None:
            marker.disable()
            tracefs.close(_session)
            _session = None


def attach_faults(out: dict[str, Any], sc: Scenario, t: tracefs.Tracing) -> None:
    """Each traced access's fault-path record (``fault``) from the buffer (which is emptied), and
    what this kernel's tracing could not show (``meta.fault_path``).  An access that ended early
    (timeout, crash, killed VMM) gets none: its fault path did not finish."""
    info = t.info()
    faults = parse.fault_records(tracefs.read(t), sc, info)
    for r in out["records"]:
        vmm = r.get("vmm") or {}
        if r["op"] == "access" and r["index"] in faults and vmm.get("outcome") not in (None, "timeout", "crash", "killed"):
            r["fault"] = faults[r["index"]]
    out["meta"]["fault_path"] = {"entry_point": t.entry_point, "not_observable": sorted(t.missing)}


@atexit.register
def _at_exit() -> None:
    """Nothing is left in tracefs by a process that forgot to release its tracing."""
    global _users
    _users = 1
    release()
