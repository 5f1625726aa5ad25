"""One test per backing: the observations spec §8 and DESIGN "Host backend facts" list."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from shim_helpers import need_backing, run, vmm


def ok(v, data=None):
    assert v["outcome"] == "ok", v
    assert v["exits"] == []
    if data is not None:
        assert v["data"] == data


def efault(v):
    # -EFAULT from KVM_RUN, and no KVM_EXIT_MEMORY_FAULT information for a shared-memory fault
    assert v["outcome"] == "efault" and v["exits"] == ["EFAULT"], v
    assert "memory_fault" not in v


def mmio(v, gpa, is_write):
    assert v["outcome"] == "mmio" and v["exits"] == ["MMIO"], v
    assert v["mmio"]["gpa"] == gpa and v["mmio"]["is_write"] is is_write and v["mmio"]["len"] == 8


def test_anonymous_private_populated_and_not(host):
    t = run(host, """
world:
  vmas: [{name: ram, pages: 4, page_states: {0: present_rw, 1: present_ro}}]
  memslots: [{id: 0, gfn: 0x100, pages: 4, vma: ram}]
ops:
  - access: {gpa: 0x100000}
  - access: {gpa: 0x101000}
  - access: {gpa: 0x102000}
  - access: {gpa: 0x102008, write: true, value: 0x1122334455667788}
  - access: {gpa: 0x102008}
  - access: {gpa: 0x101008, write: true, value: 3}
  - access: {gpa: 0x101008}
""")
    v = vmm(t)
    assert t.meta["path"] == "native-cpl3"
    for i in (0, 1, 2):
        ok(v[i], 0)
    ok(v[3])
    ok(v[4], 0x1122334455667788)
    ok(v[6], 3)


def test_shared_memfd_keeps_contents_across_madvise(host):
    need_backing("memfd_shared")
    t = run(host, """
world:
  vmas: [{name: shm, pages: 2, shared: true, page_states: {1: resident}}]
  memslots: [{id: 0, gfn: 0x200, pages: 2, vma: shm}]
ops:
  - access: {gpa: 0x200000, write: true, value: 5}
  - madvise: {vma: shm, page: 0, count: 2}
  - access: {gpa: 0x200000}
  - access: {gpa: 0x201000}
""")
    v = vmm(t)
    assert v[1] == {"ret": 0}
    ok(v[2], 5)                     # page cache keeps it
    ok(v[3], 0)


def test_hugetlb_2m(host):
    need_backing("hugetlb_2m")
    t = run(host, """
world:
  vmas: [{name: huge, pages: 512, host_level: 2m}]
  memslots: [{id: 0, gfn: 0x200, pages: 512, vma: huge, log_dirty: true}]
ops:
  - access: {gpa: 0x210000, write: true, value: 9}
  - access: {gpa: 0x210000}
  - get_dirty_log: {slot: 0}
  - madvise: {vma: huge, page: 16}
""")
    v = vmm(t)
    ok(v[0])
    ok(v[1], 9)
    assert v[2] == {"ret": 0, "dirty": [16]}
    assert v[3] == {"ret": "-EINVAL"}        # MADV_DONTNEED on hugetlb needs a 2 MiB-aligned start


def test_read_only_mapping_of_writable_slot(host):
    t = run(host, """
world:
  vmas: [{name: ro, pages: 1, prot: r, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ro}]
ops:
  - access: {gpa: 0x100000}
  - access: {gpa: 0x100000, write: true, value: 1}
""")
    v = vmm(t)
    ok(v[0], 0)
    efault(v[1])


def test_prot_none_mapping(host):
    t = run(host, """
world:
  vmas: [{name: pn, pages: 1, prot: none}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: pn}]
ops:
  - access: {gpa: 0x100000}
  - access: {gpa: 0x100000, write: true, value: 1}
""")
    v = vmm(t)
    efault(v[0])
    efault(v[1])


def test_unmapped_hole(host):
    t = run(host, """
world:
  vmas: [{name: ram, pages: 2, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}]
ops:
  - access: {gpa: 0x100000, write: true, value: 1}
  - munmap: {vma: ram}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x101000, write: true, value: 2}
""")
    v = vmm(t)
    ok(v[0])
    assert v[1] == {"ret": 0}
    efault(v[2])
    efault(v[3])


def test_readonly_memslot_and_no_memslot(host):
    t = run(host, """
world:
  vmas: [{name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram, readonly: true}]
ops:
  - access: {gpa: 0x100008}
  - access: {gpa: 0x100008, write: true, value: 7}
  - access: {gpa: 0x100008}
  - access: {gpa: 0x300010}
  - access: {gpa: 0x300010, write: true, value: 9}
""")
    v = vmm(t)
    ok(v[0], 0)
    mmio(v[1], 0x100008, True)
    assert v[1]["mmio"]["data"] == 7
    ok(v[2], 0)                               # the write never reached memory
    mmio(v[3], 0x300010, False)
    assert v[3]["data"] is None
    mmio(v[4], 0x300010, True)


def test_pfnmap_perf_ring_buffer(host):
    need_backing("pfnmap_perf")
    t = run(host, """
world:
  vmas:
    - {name: pf, pages: 2, remap: pfnmap, ptes: {1: {writable: false}}}
    - {name: pr, pages: 1, remap: pfnmap, prot: r}
  memslots:
    - {id: 0, gfn: 0x100, pages: 2, vma: pf}
    - {id: 1, gfn: 0x200, pages: 1, vma: pr}
ops:
  - access: {gpa: 0x100000, write: true, value: 7}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x101000}
  - access: {gpa: 0x101000, write: true, value: 8}
  - access: {gpa: 0x200000}
  - access: {gpa: 0x200000, write: true, value: 9}
  - madvise: {vma: pf}
  - munmap: {vma: pf}
  - access: {gpa: 0x100000}
""")
    v = vmm(t)
    ok(v[0])
    ok(v[1], 7)                               # VM_PFNMAP memory is mapped into the guest (v6.13+)
    ok(v[2], 0)
    mmio(v[3], 0x101000, True)                # RO PTE in a writable VMA: RO_FAULT → emulator → MMIO
    ok(v[4], 0)
    mmio(v[5], 0x200000, True)                # write to a read-only PFNMAP VMA: RO_FAULT → MMIO, not -EFAULT
    assert v[6] == {"ret": "-EINVAL"}         # MADV_DONTNEED refuses VM_PFNMAP
    efault(v[8])


@pytest.mark.parametrize("source", ["pfnmap_devmem", "pfnmap_pci_bar"])
def test_pfnmap_other_sources(source):
    need_backing(source)          # neither is wired: the probe always gives the reason


def test_userfaultfd_needs_io_resolved(host):
    need_backing("userfaultfd")
    t = run(host, """
world:
  vmas: [{name: io, pages: 2, state: needs_io}, {name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x300, pages: 2, vma: io}, {id: 1, gfn: 0x400, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x300000}
  - access: {gpa: 0x301000, write: true, value: 3}
  - access: {gpa: 0x301000}
  - access: {gpa: 0x400000, write: true, value: 0x77}
  - page_state: {vma: ram, page: 0, state: needs_io}
  - access: {gpa: 0x400000}
""")
    v = vmm(t)
    ok(v[0], 0)
    ok(v[1])
    ok(v[2], 3)
    assert v[4] == {"ret": 0}
    ok(v[5], 0x77)                            # contents come back from "I/O"
    assert "needs-io-is-userfaultfd" in t.meta["quirks"]


def test_userfaultfd_signal_during_wait_is_eintr(host):
    need_backing("userfaultfd")
    t = run(host, """
world:
  signal: pending
  vmas: [{name: io, pages: 2, state: needs_io}, {name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x300, pages: 2, vma: io}, {id: 1, gfn: 0x400, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x300000}
  - signal: {kind: pending}
  - access: {gpa: 0x400000}
  - access: {gpa: 0x301000}
""")
    v = vmm(t)
    # KVM_RUN returns -EINTR (exit KVM_EXIT_INTR); re-entering retries the fault (spec §8, v6.1+)
    assert v[0] == {"outcome": "ok", "data": 0, "exits": ["EINTR"]}
    ok(v[2], 0)                               # no wait: the signal is delivered as the op ends
    ok(v[3], 0)


def test_fatal_signal_kills_the_vmm(host):
    t = run(host, """
world:
  vmas: [{name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000}
  - signal: {kind: fatal}
  - access: {gpa: 0x100000}
  - madvise: {vma: ram}
""")
    v = vmm(t)
    ok(v[0], 0)
    assert v[2]["outcome"] == "killed"
    assert "skipped" in v[3]
    assert t.meta["lost"] == "killed"
    t2 = run(host, """
world:
  vmas: [{name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000}
""")
    ok(vmm(t2)[0], 0)                         # a fresh worker took over


def test_guest_memfd():
    """guest_memfd (MMAP|INIT_SHARED) backs a memslot the CPL3 guest reads and writes; checked in a
    child process with a timeout, as it enters KVM_RUN."""
    need_backing("guest_memfd")
    out = subprocess.run([sys.executable, "-m", "kernel_shim.gmem"], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["ok"], res
    assert res["read"] == 0x5A5A5A5A5A5A5A5A and res["host_sees_write"] == 7


def test_emulated_path_turns_faults_into_mmio(emulated):
    t = run(emulated, """
world:
  vmas: [{name: ram, pages: 1, state: present_rw}, {name: pn, pages: 1, prot: none}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}, {id: 1, gfn: 0x200, pages: 1, vma: pn}]
ops:
  - access: {gpa: 0x100000, write: true, value: 4}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x200000}
""")
    v = vmm(t)
    assert t.meta["path"] == "emulated"
    ok(v[0])
    ok(v[1], 4)
    mmio(v[2], 0x200000, False)               # the fault path would return -EFAULT here
