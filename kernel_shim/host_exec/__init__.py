"""Executes one scenario on the real kernel (inside the worker child) and records VMM-level
observations in the sim backends' trace schema (docs/traces.md).

Consecutive guest accesses run as one batch of the guest loop (one exit at the end); host and
memslot events run between batches.  Anything the scenario asks for that this host cannot make
real is reported on the op concerned as ``{"not_realisable": reason}``; API-level ops are
``{"not_observable": reason}``.

machine (the worker's VM, its shim and status pages) · execution (one scenario: set-up, ops in
order, teardown) · memory (host mappings, memslots, userfaultfd) · batches (guest accesses) ·
events (host, memslot and API ops) · state (what they share).  Re-exports only.
"""

from .batches import ST_FATAL, ST_IDLE, ST_RUNNING
from .events import NOT_OBSERVABLE
from .execution import Execution, Options
from .machine import STATUS_END, STATUS_PAGE, STATUS_RECORDS, Machine
from .memory import HostMemory
from .state import Pending, Slot, TaskState

__all__ = [
    "ST_FATAL", "ST_IDLE", "ST_RUNNING", "NOT_OBSERVABLE", "Execution", "Options", "STATUS_END", "STATUS_PAGE",
    "STATUS_RECORDS", "Machine", "HostMemory", "Pending", "Slot", "TaskState",
]
