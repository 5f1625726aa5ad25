#!/usr/bin/env python3
"""Host backend throughput: executions per second for a typical scenario (3 memslots, 16 guest
accesses, VM and worker reused) and the marginal cost of one guest access (slope between a
16-access and a 512-access scenario, both in one batch).  Needs a usable /dev/kvm."""

from __future__ import annotations

import argparse
import os
import sys
import time

from kernel_shim.host_backend import HostBackend
from kernel_shim.probe import kvm_unusable
from kvmsim.scenario import loads_scenario

WORLD = """
world:
  vmas:
    - {name: ram, pages: 16, page_states: {0: present_rw, 1: present_rw}}
    - {name: ro, pages: 4, prot: r}
    - {name: shm, pages: 4, shared: true}
  memslots:
    - {id: 0, gfn: 0x100, pages: 16, vma: ram, log_dirty: true}
    - {id: 1, gfn: 0x200, pages: 4, vma: ro}
    - {id: 2, gfn: 0x300, pages: 4, vma: shm}
ops:
"""


def scenario(n: int, dirty_log: bool = True) -> str:
    ops = []
    for i in range(n):
        slot = (0x100000, 0x200000, 0x300000)[i % 3]
        page = (i // 3) % 4
        write = i % 3 != 1 and i % 2 == 0
        gpa = slot + page * 4096 + 8 * (i % 8)
        ops.append(f"  - access: {{gpa: {gpa:#x}, write: {str(write).lower()}, value: {i}}}")
    if dirty_log:
        ops.append("  - get_dirty_log: {slot: 0}")
    return WORLD + "\n".join(ops) + "\n"


def rate(b: HostBackend, text: str, seconds: float) -> tuple[float, int, float, float]:
    """(executions/s, executions, mean seconds inside KVM_RUN, median seconds inside the worker)."""
    sc = loads_scenario(text)
    b.run(sc)
    n, in_run, worker, t0 = 0, 0.0, [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = b.run(sc)
        in_run += t.meta["kvm_run_seconds"]
        worker.append(t.meta["worker_seconds"])
        n += 1
    assert "lost" not in t.meta, t.meta
    return n / (time.perf_counter() - t0), n, in_run / n, sorted(worker)[len(worker) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per configuration")
    args = ap.parse_args()
    why = kvm_unusable()
    if why is not None:
        print(f"host_speed: skipped: {why}", file=sys.stderr)
        return 2
    b = HostBackend()
    try:
        load = os.getloadavg()[0]
        typical, n, _, in_worker = rate(b, scenario(16), args.seconds)
        print(f"typical scenario (3 memslots, 16 accesses + dirty log): {typical:,.0f} exec/s "
              f"({1e6 / typical:,.0f} µs/exec end to end, {n} runs, VM and worker reused; "
              f"median {in_worker * 1e6:,.0f} µs of it inside the worker; load average {load:.1f} "
              f"on {os.cpu_count()} CPUs)")
        small, _, run_small, _ = rate(b, scenario(16, dirty_log=False), args.seconds)
        large, _, run_large, _ = rate(b, scenario(496, dirty_log=False), args.seconds)
        per_access = (1 / large - 1 / small) / 480
        in_guest = (run_large - run_small) / 480
        print(f"per access, end to end (slope 16 → 496 accesses): {per_access * 1e6:.2f} µs "
              f"(of which inside KVM_RUN: {in_guest * 1e6:.2f} µs; the rest is Python bookkeeping)")
        print(f"target ≥ 1,000 exec/s: {'met' if typical >= 1000 else 'NOT met'}")
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
