"""Helpers for the real-host tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel_shim.probe import probe
from kvmsim.scenario import loads_scenario
from kvmsim.trace import Trace

SCENARIOS = Path(__file__).parent / "scenarios"


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
