"""Parent side of host execution: a reusable worker child with a hard wall-clock timeout.

A pending signal plus an unresolved userfaultfd page can keep ``KVM_RUN`` in the kernel, deaf to
``SIGALRM``; so the deadline is enforced from outside with ``SIGKILL``, and a child that does not
even die from that is abandoned.  A timeout or crash becomes the observation of the op that was
running (read from the status area the child keeps in the shared shim memfd); the fuzzer goes on
with a fresh child.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from kvmsim.checkout import ROOT
from kvmsim.scenario import Scenario

from . import guest_code as g
from . import kvm_ioctl as k
from .host_exec import ST_FATAL, STATUS_PAGE, STATUS_RECORDS, Options, Pending
from .worker import read_msg, write_msg

KILL_GRACE = 2.0


class WorkerError(Exception):
    """The worker could not be started (the message says why)."""


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    shim_fd: int
    view: memoryview
    hva: int
    executions: int = 0

    @property
    def requests(self) -> IO[bytes]:
        """The child's stdin (``Runner.start`` always opens it as a pipe)."""
        assert self.proc.stdin is not None, "Runner.start opens the worker with stdin=PIPE"
        return self.proc.stdin

    @property
    def replies(self) -> IO[bytes]:
        """The child's stdout (``Runner.start`` always opens it as a pipe)."""
        assert self.proc.stdout is not None, "Runner.start opens the worker with stdout=PIPE"
        return self.proc.stdout

    def close(self, kill: bool = False) -> bool:
        """Stop the child; returns False when it could not be reaped (stuck in the kernel)."""
        reaped = True
        try:
            if kill:
                self.proc.kill()
            else:
                self.requests.close()
            try:
                self.proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    reaped = False
        finally:
            for f in (self.requests, self.replies):
                try:
                    f.close()
                except OSError:
                    pass
            self.view.release()
            k.munmap(self.hva, g.SHIM_PAGES * k.PAGE)
            os.close(self.shim_fd)
        return reaped


@dataclass
class Runner:
    timeout: float = 5.0
    max_reuse: int = 100_000
    worker: Worker | None = None
    abandoned: list[int] = field(default_factory=list)

    def start(self) -> Worker:
        size = g.SHIM_PAGES * k.PAGE
        fd = k.memfd_create("pfndiff-shim")
        os.ftruncate(fd, size)
        proc = subprocess.Popen([sys.executable, "-m", "kernel_shim.worker", str(fd)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, pass_fds=(fd,), close_fds=True,
                                cwd=ROOT)
        hva = k.mmap(0, size, k.PROT_READ, k.MAP_SHARED, fd, 0)
        view = memoryview((ctypes.c_char * size).from_address(hva)).cast("B")
        w = Worker(proc, fd, view, hva)
        hello = self._recv(w, 30.0)
        if not isinstance(hello, dict) or "ready" not in hello:
            w.close(kill=True)
            raise WorkerError(hello.get("error", "worker did not start") if isinstance(hello, dict)
                              else "worker did not start")
        return w

    def _recv(self, w: Worker, timeout: float) -> Any:
        fd = w.replies.fileno()
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return TimeoutError()
        msg = read_msg(fd)
        return EOFError() if msg is None else msg

    def execute(self, sc: Scenario, opts: Options) -> dict[str, Any]:
        """Run one scenario; returns ``{"records", "meta"}`` (timeouts and crashes included)."""
        if self.worker is None or self.worker.executions >= self.max_reuse:
            if self.worker is not None:
                self.worker.close()
            self.worker = self.start()
        w = self.worker
        w.executions += 1
        t0 = time.monotonic()
        try:
            write_msg(w.requests.fileno(), (sc, opts))
        except (BrokenPipeError, OSError):
            return self._lost(sc, "crash", "the worker died before the request")
        reply = self._recv(w, self.timeout)
        if isinstance(reply, dict) and "records" in reply:
            reply["meta"]["host_seconds"] = round(time.monotonic() - t0, 6)
            if reply["meta"].get("lost") == "crash":
                self._drop(kill=True)               # its VM may be in any state now
            return reply
        if isinstance(reply, dict) and "error" in reply:
            self._drop(kill=True)
            return self._lost(sc, "crash", reply["error"].strip().splitlines()[-1], status=None)
        status = self._status(w)
        if isinstance(reply, TimeoutError):
            self._drop(kill=True)
            return self._lost(sc, "timeout", f"no answer within {self.timeout:g} s; worker killed", status)
        rc = w.proc.wait()
        self._drop(kill=False)
        if rc == -signal.SIGKILL and status and status["state"] == ST_FATAL:
            return self._lost(sc, "killed", "the fatal signal killed the VMM", status)
        return self._lost(sc, "crash", f"worker exited with status {rc}", status)

    def _drop(self, kill: bool) -> None:
        w, self.worker = self.worker, None
        if w is not None and not w.close(kill=kill):
            self.abandoned.append(w.proc.pid)

    def _status(self, w: Worker) -> dict[str, Any] | None:
        base = STATUS_PAGE * k.PAGE
        _, state, _, nblob = struct.unpack_from("<QQQQ", w.view, base)
        records: list[dict[str, Any]] = []
        batch: list[Pending] = []
        if nblob:
            try:
                records, index, write, seen = pickle.loads(
                    bytes(w.view[STATUS_RECORDS * k.PAGE:STATUS_RECORDS * k.PAGE + nblob]))
                batch = [Pending(i, 0, 0, bool(wr), 0) for i, wr in zip(struct.unpack(f"<{len(write)}I", index), write)]
                for n, (exits, vmm) in seen.items():
                    batch[n].exits, batch[n].vmm = exits, vmm
            except Exception:                       # noqa: BLE001 - a half-written status is possible
                records, batch = [], []
        return {"state": state, "records": records, "batch": batch, "progress": g.progress(w.view),
                "results": [g.result(w.view, n) for n in range(len(batch))]}

    def _lost(self, sc: Scenario, outcome: str, why: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """Records for an execution that ended early: what completed, the op that was running
        (``outcome``), and the ops that never ran."""
        records = list(status["records"]) if status else []
        cur = None
        if status and status["batch"]:
            batch, prog = status["batch"], status["progress"]
            for n, p in enumerate(batch):
                if n < prog:
                    vmm = p.vmm or {"outcome": "ok", "data": None if p.write else status["results"][n],
                                    "exits": p.exits}
                    records.append({"index": p.index, "op": "access", "vmm": vmm})
            cur = batch[min(prog, len(batch) - 1)]
            cur_exits = cur.exits if prog < len(batch) else []
            cur = cur.index
        done = {r["index"] for r in records}
        if cur is None:
            cur = next((i for i in range(len(sc.ops)) if i not in done), None)
            cur_exits = []
        for i, op in enumerate(sc.ops):
            if i in done:
                continue
            if i == cur:
                vmm = {"outcome": outcome, "data": None, "exits": [] if outcome == "killed" else list(cur_exits)}
            else:
                vmm = {"skipped": f"the execution ended at op {cur} ({outcome})"}
            records.append({"index": i, "op": op.kind, "vmm": vmm})
        records.sort(key=lambda r: r["index"])
        return {"records": records, "meta": {"lost": outcome, "lost_at": cur, "reason": why}}

    def close(self) -> None:
        if self.worker is not None:
            self._drop(kill=False)
