"""Isolation: a hung access is ended by the hard timeout and reported; nothing leaks."""

from __future__ import annotations

import time
from dataclasses import dataclass

from shim_helpers import fd_count, need_backing, run, vmm, worker_pid

from kernel_shim.host_backend import HostBackend

HANG = """
world:
  vmas: [{name: io, pages: 1, state: needs_io}, {name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x300, pages: 1, vma: io}, {id: 1, gfn: 0x400, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x400000, write: true, value: 1}
  - access: {gpa: 0x400000}
  - access: {gpa: 0x300000}
  - access: {gpa: 0x400000}
"""


def test_hung_access_is_ended_by_the_timeout():
    need_backing("userfaultfd")
    b = HostBackend(timeout=1.0, resolve_io=False)   # the "I/O" never completes
    try:
        t0 = time.monotonic()
        t = run(b, HANG)
        took = time.monotonic() - t0
        v = vmm(t)
        assert v[0]["outcome"] == "ok" and v[1] == {"outcome": "ok", "data": 1, "exits": []}
        assert v[2]["outcome"] == "timeout"
        assert "skipped" in v[3]
        assert t.meta["lost"] == "timeout" and t.meta["lost_at"] == 2
        assert took < 1.0 + 5.0
        assert not b.runner.abandoned
        b2 = HostBackend(timeout=5.0)                 # and the host is usable afterwards
        try:
            assert vmm(run(b2, HANG))[2] == {"outcome": "ok", "data": 0, "exits": []}
        finally:
            b2.close()
    finally:
        b.close()


def test_no_fd_or_mapping_leaks_over_1000_executions(host):
    need_backing("userfaultfd")
    need_backing("pfnmap_perf")
    text = """
world:
  vmas:
    - {name: ram, pages: 4, state: present_rw}
    - {name: shm, pages: 2, shared: true}
    - {name: io, pages: 2, state: needs_io}
    - {name: pf, pages: 2, remap: pfnmap}
  memslots:
    - {id: 0, gfn: 0x100, pages: 4, vma: ram, log_dirty: true}
    - {id: 1, gfn: 0x200, pages: 2, vma: shm}
    - {id: 2, gfn: 0x300, pages: 2, vma: io}
    - {id: 3, gfn: 0x400, pages: 2, vma: pf}
ops:
  - access: {gpa: 0x100000, write: true, value: 1}
  - access: {gpa: 0x200000, write: true, value: 2}
  - access: {gpa: 0x300000}
  - access: {gpa: 0x400000}
  - get_dirty_log: {slot: 0}
  - memslot_create: {slot: 5, gfn: 0x500, pages: 1, vma: ram}
  - madvise: {vma: ram}
  - munmap: {vma: shm}
  - access: {gpa: 0x200000}
"""
    from kvmsim.scenario import loads_scenario
    sc = loads_scenario(text)
    host.run(sc)
    pid = worker_pid(host)
    fds, maps, parent_fds = fd_count(pid), worker_maps(pid), fd_count()
    for _ in range(1000):
        t = host.run(sc)
        assert t.records[2].vmm["outcome"] == "ok" and t.records[8].vmm["outcome"] == "efault"
    assert worker_pid(host) == pid                     # the VM and worker were reused throughout
    assert fd_count(pid) == fds
    assert fd_count() == parent_fds
    after = worker_maps(pid)
    named = [m for m in after if m.path]                           # memfd, perf, kvm, files: exactly as many
    assert len(named) == len([m for m in maps if m.path]), [m for m in named if m not in maps]
    assert len(after) - len(maps) <= THREAD_CACHE_MAPS, [m for m in after if m not in maps]


# Each execution with needs-I/O pages starts a userfaultfd resolver thread and joins it at the end.
# The join returns before the thread's exit has finished (CPython releases the thread's lock, then
# glibc frees its stack and the kernel clears its tid); when the next execution starts its thread in
# that window -- on a loaded machine -- glibc cannot reuse the cached stack and maps a new one (the
# stack and its guard page: two mappings), and the new thread may take a malloc arena of its own (its
# heap and the reserved rest: two more).  Both stay cached afterwards, so the count can grow by a few
# mappings once, whatever the number of executions; a leak grows it with every execution it happens in.
THREAD_CACHE_MAPS = 8           # two more thread stacks and two more arenas than at the start


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps: the address range, its permissions and what backs it."""
    span: str
    perms: str
    path: str


def worker_maps(pid: int) -> list[Mapping]:
    out = []
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            f = line.split(maxsplit=5)
            path = f[5].strip() if len(f) > 5 else ""
            out.append(Mapping(f[0], f[1], "" if path in ("[heap]", "[stack]") else path))
    return out


def test_emulated_path_spins_on_signal_plus_missing_page_and_is_killed():
    """The DESIGN hazard: on the emulated path a pending signal does not end the wait on an
    unresolved userfaultfd page; only the outside SIGKILL ends it, and the worker is reaped."""
    need_backing("userfaultfd")
    b = HostBackend(path="emulated", timeout=1.0, resolve_io=False)
    try:
        t = run(b, """
world:
  signal: pending
  vmas: [{name: io, pages: 1, state: needs_io}]
  memslots: [{id: 0, gfn: 0x300, pages: 1, vma: io}]
ops:
  - access: {gpa: 0x300000}
""")
        assert t.records[0].vmm == {"outcome": "timeout", "data": None, "exits": []}
        assert t.meta["path"] == "emulated" and not b.runner.abandoned
    finally:
        b.close()


def test_reused_memslots_carry_nothing_over(host):
    """Executions reuse identical memslots; contents, SPTEs and dirty bits must not survive."""
    world = """
world:
  vmas: [{name: ram, pages: 4}]
  memslots: [{id: 0, gfn: 0x100, pages: 4, vma: ram, log_dirty: true}]
ops:
"""
    first = run(host, world + """
  - access: {gpa: 0x100000, write: true, value: 11}
  - access: {gpa: 0x101000, write: true, value: 12}
""")
    assert [r.vmm["outcome"] for r in first.records] == ["ok", "ok"]
    second = run(host, world + """
  - get_dirty_log: {slot: 0}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x101000}
  - get_dirty_log: {slot: 0}
  - access: {gpa: 0x101000, write: true, value: 13}
  - get_dirty_log: {slot: 0}
""")
    v = vmm(second)
    assert v[0] == {"ret": 0, "dirty": []}
    assert v[1]["data"] == 0 and v[2]["data"] == 0        # fresh pages, no stale SPTE
    assert v[3] == {"ret": 0, "dirty": []}                # reads do not dirty (guest PTE D bits reset)
    assert v[5] == {"ret": 0, "dirty": [1]}


def test_a_crashing_worker_is_an_observation():
    """The worker dies (here: SIGSEGV from outside) while an access waits: the op is reported as
    a crash, what completed before is kept, and the next execution gets a fresh worker."""
    import os
    import signal
    import threading
    need_backing("userfaultfd")
    b = HostBackend(timeout=20.0, resolve_io=False)
    try:
        run(b, "world: {vmas: [{name: r, pages: 1}], memslots: [{id: 0, gfn: 0x100, pages: 1, vma: r}]}\n"
               "ops: [{access: {gpa: 0x100000}}]")
        pid = worker_pid(b)
        threading.Timer(0.5, os.kill, (pid, signal.SIGSEGV)).start()
        t0 = time.monotonic()
        t = run(b, HANG)
        assert time.monotonic() - t0 < 10
        v = vmm(t)
        assert v[1] == {"outcome": "ok", "data": 1, "exits": []}
        assert v[2]["outcome"] == "crash" and "skipped" in v[3]
        assert t.meta["lost"] == "crash" and str(-signal.SIGSEGV) in t.meta["reason"]
        assert vmm(run(b, "world: {vmas: [{name: r, pages: 1}], memslots: [{id: 0, gfn: 0x100, pages: 1, vma: r}]}\n"
                          "ops: [{access: {gpa: 0x100000}}]"))[0]["outcome"] == "ok"
        assert worker_pid(b) != pid
    finally:
        b.close()
