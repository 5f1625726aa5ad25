"""Progress of long commands on stderr: a bar with counts and ETA on a terminal, one line per
stage otherwise (CI logs stay short and greppable).

Why one module: triage re-runs, minimisation, corpus minimize and the kernel commands all report
the same way, and stdout stays the command's result (tables, JSON) whatever is shown here.
``PFNDIFF_PROGRESS=0`` silences it, ``=1`` forces the terminal form.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

WIDTH = 24                  # bar characters
REFRESH = 0.1               # seconds between terminal redraws


def _mode(stream: TextIO) -> str:
    env = os.environ.get("PFNDIFF_PROGRESS", "")
    if env == "0":
        return "off"
    if env == "1":
        return "tty"
    try:
        return "tty" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class Stage:
    """One stage of a command: ``total`` items (None: unknown, e.g. minimisation checks)."""
    label: str
    total: int | None = None
    unit: str = ""
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    note: str = ""
    _t0: float = field(default_factory=time.monotonic)
    _drawn: float = 0.0
    _closed: bool = False

    def __post_init__(self) -> None:
        self.mode = _mode(self.stream)
        self._lock = threading.Lock()           # workers of one stage may report from threads
        self._draw(force=True)

    def advance(self, n: int = 1, note: str = "") -> None:
        with self._lock:
            self.done += n
            if note:
                self.note = note
            self._draw()

    def log(self, message: str, stream: TextIO | None = None) -> None:
        """A step worth a line of its own (e.g. each download): on a terminal it becomes the bar's
        note; otherwise (and when progress is off) it is printed to ``stream`` as before."""
        if self.mode == "tty":
            self.advance(0, message)
        else:
            out = stream or self.stream
            out.write(message + "\n")
            out.flush()

    def set(self, done: int, note: str = "") -> None:
        self.done = done
        if note:
            self.note = note
        self._draw()

    def line(self) -> str:
        """The current state as text (without terminal control characters)."""
        elapsed = time.monotonic() - self._t0
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * WIDTH) + "." * (WIDTH - int(frac * WIDTH))
            eta = _clock(elapsed / self.done * (self.total - self.done)) if 0 < self.done < self.total else "-"
            text = (f"{self.label} [{bar}] {self.done}/{self.total}{unit} {100 * frac:3.0f}%  "
                    f"{_clock(elapsed)} ETA {eta}")
        else:
            text = f"{self.label} {self.done}{unit}  {_clock(elapsed)}"
        return text + (f"  {self.note}" if self.note else "")

    def _draw(self, force: bool = False) -> None:
        if self.mode != "tty" or self._closed:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REFRESH:
            return
        self._drawn = now
        cols = _columns()
        self.stream.write("\r\033[K" + self.line()[: cols - 1])
        self.stream.flush()

    def close(self, note: str = "") -> None:
        """End the stage: the terminal line is finished; otherwise the stage's one line is printed."""
        if self._closed:
            return
        if note:
            self.note = note
        elapsed = time.monotonic() - self._t0
        if self.mode == "tty":
            self._drawn = 0.0
            self._draw(force=True)
            self.stream.write("\n")
        elif self.mode == "lines":
            unit = f" {self.unit}" if self.unit else ""
            count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
            note = f"; {self.note}" if self.note else ""
            self.stream.write(f"{self.label}: {count}{unit} in {elapsed:.1f}s{note}\n")
        self._closed = True
        self.stream.flush()

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 100


def stage(label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None) -> Stage:
    return Stage(label, total, unit, stream or sys.stderr)
