"""Helpers for the real-host tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel_shim.kernels.cache import KernelEntry, cached_kernels
from kernel_shim.kernels.qemu import qemu_missing
from kernel_shim.probe import probe
from kvmsim.scenario import loads_scenario
from kvmsim.trace import Trace

SCENARIOS = Path(__file__).parent / "scenarios"


def booted_kernel(suite: str) -> KernelEntry:
    """The newest cached kernel of ``suite``, for a test that boots it; skips, saying why, without
    QEMU or such a kernel."""
    why = qemu_missing()
    if why is not None:
        pytest.skip(f"needs QEMU: {why}")
    hits = [e for e in cached_kernels() if e.suite == suite]
    if not hits:
        pytest.skip(f"no {suite} kernel cached; `pfndiff kernels fetch --suite {suite}` fetches it")
    return hits[-1]


def need_backing(name: str) -> None:
    why = probe().backings.get(name, "unknown backing")
    if why is not None:
        pytest.skip(f"this host has no {name} backing: {why}")


def run(backend, text: str) -> Trace:
    return backend.run(loads_scenario(text))


def vmm(trace: Trace) -> list:
    return [r.vmm for r in trace.records]


def worker_pid(backend) -> int:
    w = backend.runner.worker
    assert w is not None
    return w.proc.pid


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def map_count(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/maps") as fh:
        return sum(1 for _ in fh)
