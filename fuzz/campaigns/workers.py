"""The libFuzzer processes of a campaign: N long-lived workers on one corpus directory.

Why not libFuzzer's ``-fork=N``: fork mode restarts a child per short job, and every child of a
Python target re-imports Python and the models (about a second), which costs more than a second
core gains.  Here each worker is one libFuzzer process for the whole budget, started with the
working corpus first (new units go there) and ``-reload=1`` (each picks up the others' finds).
All of them write one artifacts directory: per-pid counters, findings claimed per signature.

Each worker runs in its own process group (Ctrl-C in a terminal reaches the campaign only, which
stops every group: nothing is left behind), logs to its own file, and its stderr is read into
its own ``Progress``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO

_STAT = re.compile(r"(cov|ft|corp|exec/s):?\s*(\d+)")
_UNIT = re.compile(r"Test unit written to (\S+)")
_FINAL = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
STOP_STEPS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))


@dataclass
class Progress:
    """The latest numbers one libFuzzer process printed."""
    cov: int = 0
    ft: int = 0
    corp: int = 0
    execs_per_s: int = 0
    lines: int = 0
    inited: bool = False            # it read its corpus and started mutating
    unit: str = ""                  # the input libFuzzer wrote when it stopped (crash-, timeout-, oom-)
    final_execs: int = 0            # its own count of executions, printed as it exits (-print_final_stats=1)


def combined(progs: list[Progress]) -> Progress:
    """The campaign's numbers: exec/s summed over the workers; corpus, coverage and features the
    largest any worker reports (they share one corpus directory, so each converges to it)."""
    return Progress(cov=max((p.cov for p in progs), default=0), ft=max((p.ft for p in progs), default=0),
                    corp=max((p.corp for p in progs), default=0),
                    execs_per_s=sum(p.execs_per_s for p in progs), lines=sum(p.lines for p in progs),
                    inited=any(p.inited for p in progs))


def log_path(first: str, index: int) -> str:
    """Worker 0 logs to ``first`` (``libfuzzer.log``), worker k to ``libfuzzer.<k>.log``."""
    if index == 0:
        return first
    root, ext = os.path.splitext(first)
    return f"{root}.{index}{ext or '.log'}"


@dataclass
class Worker:
    """One libFuzzer process slot; a restart runs a new process in the same slot (same log)."""
    index: int
    log_path: str
    prog: Progress = field(default_factory=Progress)
    proc: subprocess.Popen | None = None
    pids: list[int] = field(default_factory=list)        # every process this slot ran, in order
    deaths: list[int] = field(default_factory=list)      # exit status of each process that died early
    stopping: bool = False                                # the campaign is stopping it: its exit is no death
    done: bool = False                                    # the slot has ended for good
    _log: IO[bytes] | None = None
    _reader: threading.Thread | None = None

    def start(self, cmd: list[str], env: dict[str, str]) -> int:
        """Start a process in this slot with fresh numbers; its pid."""
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self.prog = Progress()
        self.stopping = False
        proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.proc = proc
        self.pids.append(proc.pid)
        self._reader = threading.Thread(target=_pump, args=(proc, self._log, self.prog), daemon=True)
        self._reader.start()
        return proc.pid

    def note(self, text: str) -> None:
        """A line of the campaign's own in this worker's log (a restart, say)."""
        if self._log is not None:
            self._log.write(f"pfndiff: {text}\n".encode())
            self._log.flush()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.stopping = True
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """After the process ended: the rest of its stderr is in the log, and the log is closed."""
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(workers: list[Worker]) -> None:
    """SIGINT to every worker's process group at once (libFuzzer exits cleanly and keeps what it
    wrote), then SIGTERM, then SIGKILL to the groups still there; returns when all have exited."""
    for sig, wait in STOP_STEPS:
        left = [w for w in workers if w.running]
        if not left:
            return
        for w in left:
            w.signal(sig)
        deadline = time.monotonic() + wait
        for w in left:
            assert w.proc is not None
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue


def _pump(proc: subprocess.Popen, log: IO[bytes], prog: Progress) -> None:
    """Copy libFuzzer's stderr to the log and keep its latest numbers."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        log.write(raw)
        prog.lines += 1
        line = raw.decode("utf-8", errors="replace")
        if "INITED" in line:
            prog.inited = True
        elif "Test unit written to" in line:
            m = _UNIT.search(line)
            prog.unit = m.group(1) if m else prog.unit
        elif line.startswith("stat::number_of_executed_units"):
            m = _FINAL.search(line)
            prog.final_execs = int(m.group(1)) if m else prog.final_execs
        if "cov:" in line or "corp:" in line:
            for k, v in _STAT.findall(line):
                if k == "cov":
                    prog.cov = int(v)
                elif k == "ft":
                    prog.ft = int(v)
                elif k == "corp":
                    prog.corp = int(v)
                else:
                    prog.execs_per_s = int(v)
    log.flush()


def exit_status(rc: int) -> int:
    """A process's return code as a shell shows it (killed by signal N: 128 + N)."""
    return 128 - rc if rc < 0 else rc
