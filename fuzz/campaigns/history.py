"""A campaign's history: JSON lines appended to ``<artifacts>/.pfndiff-history.jsonl`` while it
runs (one ``start`` record, a ``tick`` per status line, one ``end``), read back by ``pfndiff report``.

Why JSON lines with one ``write`` per record on an ``O_APPEND`` descriptor: the file only ever
grows, a reader never sees a record half-rewritten, and campaigns that share an artifacts
directory (one after another, or at the same time) interleave whole lines.  A record cut short by
a crash or a full disk is the last line only; the next record starts on a new line, and the reader
skips what it cannot parse, so no other record is lost.  A dot name keeps triage and libFuzzer
from taking it for an input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

FILENAME = ".pfndiff-history.jsonl"
VERSION = 1
MAX_BYTES = 64 << 20          # a reader reads at most the last 64 MiB (about 300,000 ticks)
MAX_LINE = 1 << 16            # a longer line is not a history record


def path_in(artifacts: str) -> str:
    return os.path.join(artifacts, FILENAME)


def append(artifacts: str, record: dict[str, Any]) -> None:
    """Append one record as one line with a single write (never a partial rewrite)."""
    line = (json.dumps({"v": VERSION, **record}, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(path_in(artifacts), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line             # the last record was cut short: never glue onto it
        view = memoryview(line)
        while view:                          # a short write on a regular file is only a full disk
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


@dataclass
class Run:
    """One campaign's records: its start record and its ticks in time order."""
    run: str
    start: dict[str, Any] = field(default_factory=dict)
    ticks: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def t0(self) -> float:
        return float(self.start.get("t0") or (self.ticks[0].get("t0", 0.0) if self.ticks else 0.0))

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(elapsed seconds, value) of every tick that has ``key``."""
        pts = [(float(t["t"]), float(t[key])) for t in self.ticks
               if isinstance(t.get(key), (int, float)) and isinstance(t.get("t"), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]


def read(artifacts: str) -> list[Run]:
    """Every campaign recorded in the directory, oldest first; unreadable lines are skipped."""
    raw = _tail(artifacts)
    runs: dict[str, Run] = {}
    for rec in _records(raw):
        r = runs.setdefault(rec["run"], Run(rec["run"]))
        kind = rec.get("event")
        if kind == "start":
            r.start = rec
        elif kind == "end":
            r.end = rec
            r.ticks.append(rec)
        elif kind == "tick":
            r.ticks.append(rec)
    out = [r for r in runs.values() if r.ticks or r.start]
    for r in out:
        r.ticks.sort(key=lambda t: t.get("t", 0) if isinstance(t.get("t"), (int, float)) else 0)
    return sorted(out, key=lambda r: r.t0)


def _tail(artifacts: str) -> bytes:
    """The last MAX_BYTES of the history file from a line start (nothing if it cannot be read)."""
    try:
        with open(path_in(artifacts), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_BYTES:
                fh.seek(size - MAX_BYTES)
                fh.readline()                 # the first line is cut: drop it
            return fh.read(MAX_BYTES)
    except OSError:
        return b""


def _records(raw: bytes) -> Iterator[dict[str, Any]]:
    """The lines that are JSON objects naming their run."""
    for line in raw.split(b"\n"):
        if not line or len(line) > MAX_LINE:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("run"), str):
            yield rec
