"""What one execution's pieces share: the VMM task and vCPU as the scenario has set them, a
memslot as the VMM made it, and one access of the batch in flight."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskState:
    """The VMM task and its vCPU: set by the world and by ops, read by the access batches and by
    the userfaultfd resolver's policy."""
    signal: str = "none"                # none | pending | fatal: what the next KVM op meets
    signal_sent: bool = False           # the resolver has sent the pending signal during this batch
    in_run: bool = False                # the vCPU is inside KVM_RUN
    flags: dict[str, bool] = field(default_factory=lambda: {"guest_mode": False, "smm": False, "async_pf": False,
                                                            "apicv": True})
    lock_contended: bool = False
    open_invalidations: int = 0

    def deliver_pending(self) -> None:
        """A pending signal not consumed by a wait is delivered as the op ends (as in the model)."""
        if self.signal == "pending":
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            self.signal = "none"


@dataclass
class Slot:
    id: int
    gfn: int
    pages: int
    vma: str
    offset: int
    flags: int


@dataclass
class Pending:
    """One access of the current batch."""
    index: int
    gpa: int
    va: int
    write: bool
    value: int
    exits: list[str] = field(default_factory=list)
    vmm: dict[str, Any] | None = None
