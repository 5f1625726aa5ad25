#!/usr/bin/env python3
"""Median microseconds per op (lookup, x86 fault, guest access, vcpu map+unmap) for each simulated
generation over a fixed scenario mix, measured against the cost of building the same world with
no ops in the same run.  Target (issue): <= 20 us per op, so that a differential target runs at
>= 25k executions/s per core."""

from __future__ import annotations

import statistics
import sys
import time

from kvmsim import get_backend, loads_scenario

WORLD = """
version: 1
world:
  notifier: {seq: 1}
  pages: [{name: bar, kind: none}, {name: tail, kind: refcount0}]
  vmas:
    - {name: ram, pages: 16, page_states: {0: present_rw, 1: present_ro, 2: needs_io, 3: resident,
       4: present_rw, 5: present_rw, 6: present_rw, 7: present_rw}}
    - {name: dev, pages: 2, remap: pfnmap, ptes: {0: {page: bar}, 1: {page: tail}}}
  memslots:
    - {id: 0, gfn: 0x100, pages: 16, vma: ram}
    - {id: 1, gfn: 0x200, pages: 2, vma: dev}
    - {id: 2, gfn: 0x300, pages: 4, vma: ram, offset: 8, readonly: true}
"""

GFNS = [0x100, 0x101, 0x102, 0x103, 0x104, 0x108, 0x200, 0x201, 0x300, 0x500]
MIXES = {
    "lookup": [f"  - lookup: {{gfn: {g:#x}, write: {str(i % 2 == 0).lower()}, nowait: {str(i % 3 == 0).lower()}}}"
               for i, g in enumerate(GFNS)],
    "x86_fault": [f"  - x86_fault: {{gfn: {g:#x}, write: {str(i % 2 == 0).lower()}}}" for i, g in enumerate(GFNS)],
    "access": [f"  - access: {{gpa: {g << 12:#x}, write: {str(i % 2 == 0).lower()}, value: {i}}}"
               for i, g in enumerate(GFNS)],
    "map+unmap": [line for i, g in enumerate(GFNS)
                  for line in (f"  - vcpu_map: {{gfn: {g:#x}, handle: m{i}}}", f"  - vcpu_unmap: {{handle: m{i}}}")],
}
BACKENDS = ("sim:g1", "sim:g2", "sim:g2s", "sim:g2s-literal", "sim:g2f", "sim:g3")


def per_run_seconds(backend, scenario, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(20):
            backend.run(scenario)
        samples.append((time.perf_counter() - t0) / 20)
    return statistics.median(samples)


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    empty = loads_scenario(WORLD + "ops: []\n")
    scenarios = {k: loads_scenario(WORLD + "ops:\n" + "\n".join(v) + "\n") for k, v in MIXES.items()}
    print(f"median us per op ({repeat} samples of 20 runs; world construction subtracted)")
    print(f"{'backend':<17}" + "".join(f"{k:>12}" for k in MIXES) + f"{'world':>10}")
    worst = 0.0
    for name in BACKENDS:
        b = get_backend(name)
        base = per_run_seconds(b, empty, repeat)
        row = []
        for sc in scenarios.values():
            us = (per_run_seconds(b, sc, repeat) - base) / len(sc.ops) * 1e6
            worst = max(worst, us)
            row.append(us)
        print(f"{name:<17}" + "".join(f"{us:>12.1f}" for us in row) + f"{base * 1e6:>10.1f}")
    print(f"worst op class: {worst:.1f} us (target <= 20 us)")


if __name__ == "__main__":
    main()
