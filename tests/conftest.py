"""Session-wide real parts: a small hugetlb pool for the 2 MiB backing tests.

The pool is reserved before the first test and given back after the last.  Several test sessions
on one machine share it: each registers its pid under a lock, the first records the machine's
own ``vm.nr_hugepages`` and the last one alive restores it (a session that died without
restoring leaves the recorded value for the next one).  Not root: nothing is changed, and the
hugetlb tests skip naming the sysctl.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
POOL_PAGES = 8                                      # 16 MiB: a few tests at a time, one page each
STATE = Path("/run/pfndiff-hugetlb")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _locked() -> Iterator[None]:
    STATE.mkdir(mode=0o700, exist_ok=True)
    with open(STATE / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _others() -> list[Path]:
    me = STATE / f"{os.getpid()}.pid"
    return [p for p in STATE.glob("*.pid") if p != me and p.stem.isdigit() and _alive(int(p.stem))]


@contextmanager
def hugetlb_pool(pages: int) -> Iterator[None]:
    if os.geteuid() != 0 or not os.access(NR_HUGEPAGES, os.W_OK):
        yield
        return
    mine = STATE / f"{os.getpid()}.pid"
    original = STATE / "original"
    with _locked():
        if not _others() and not original.exists():
            original.write_text(NR_HUGEPAGES.read_text())
        mine.touch()
        want = int(original.read_text()) + pages
        if int(NR_HUGEPAGES.read_text()) < want:
            NR_HUGEPAGES.write_text(str(want))
    try:
        yield
    finally:
        with _locked():
            mine.unlink(missing_ok=True)
            if not _others() and original.exists():
                NR_HUGEPAGES.write_text(original.read_text())
                original.unlink()


@pytest.fixture(scope="session", autouse=True)
def _hugetlb_pool():
    with hugetlb_pool(POOL_PAGES):
        yield


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    """Progress lines (fuzz.campaigns.progress) stay out of the stderr that tests read; the tests of the
    progress display set PFNDIFF_PROGRESS themselves."""
    monkeypatch.setenv("PFNDIFF_PROGRESS", "0")
