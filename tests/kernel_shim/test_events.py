"""Host and memslot events between guest accesses, and what a VMM sees after each."""

from __future__ import annotations

from shim_helpers import run, vmm


def test_madvise_dontneed_drops_private_pages(host):
    v = vmm(run(host, """
world:
  vmas: [{name: ram, pages: 2, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}]
ops:
  - access: {gpa: 0x100000, write: true, value: 1}
  - access: {gpa: 0x101000, write: true, value: 2}
  - madvise: {vma: ram, page: 0}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x101000}
"""))
    assert v[2] == {"ret": 0}
    assert v[3]["data"] == 0 and v[4]["data"] == 2


def test_mprotect_round_trip(host):
    v = vmm(run(host, """
world:
  vmas: [{name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000, write: true, value: 1}
  - mprotect: {vma: ram, prot: r}
  - access: {gpa: 0x100000, write: true, value: 2}
  - access: {gpa: 0x100000}
  - mprotect: {vma: ram, prot: none}
  - access: {gpa: 0x100000}
  - mprotect: {vma: ram, prot: rw}
  - access: {gpa: 0x100000, write: true, value: 3}
  - access: {gpa: 0x100000}
"""))
    assert v[1] == {"ret": 0}
    assert v[2]["outcome"] == "efault"        # the SPTE was zapped by the mmu notifier
    assert v[3]["data"] == 1
    assert v[5]["outcome"] == "efault"
    assert v[8]["data"] == 3


def test_munmap_event(host):
    v = vmm(run(host, """
world:
  vmas: [{name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000}
  - munmap: {vma: ram}
  - access: {gpa: 0x100000}
"""))
    assert v[0]["outcome"] == "ok" and v[1] == {"ret": 0} and v[2]["outcome"] == "efault"


def test_page_state_event(host):
    v = vmm(run(host, """
world:
  vmas: [{name: ram, pages: 2}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}]
ops:
  - access: {gpa: 0x100000, write: true, value: 5}
  - page_state: {vma: ram, page: 0, state: unpopulated}
  - access: {gpa: 0x100000}
  - page_state: {vma: ram, page: 1, state: present_rw}
  - access: {gpa: 0x101000}
  - page_state: {vma: ram, page: 0, state: hwpoison}
  - access: {gpa: 0x100000}
"""))
    assert v[1] == {"ret": 0} and v[2]["data"] == 0
    assert v[3] == {"ret": 0} and v[4]["data"] == 0
    assert "not_realisable" in v[5] and "not_realisable" in v[6]


def test_memslot_create_move_flags_delete_and_dirty_log(host):
    v = vmm(run(host, """
world:
  vmas: [{name: ram, pages: 8}]
  memslots: [{id: 0, gfn: 0x100, pages: 4, vma: ram, log_dirty: true}]
ops:
  - access: {gpa: 0x100000, write: true, value: 1}
  - access: {gpa: 0x102000, write: true, value: 2}
  - access: {gpa: 0x103000}
  - get_dirty_log: {slot: 0}
  - get_dirty_log: {slot: 0}
  - memslot_create: {slot: 1, gfn: 0x200, pages: 4, vma: ram, offset: 4}
  - access: {gpa: 0x200000, write: true, value: 4}
  - get_dirty_log: {slot: 1}
  - memslot_flags: {slot: 1, log_dirty: true}
  - access: {gpa: 0x201000, write: true, value: 5}
  - access: {gpa: 0x200000, write: true, value: 6}
  - get_dirty_log: {slot: 1}
  - memslot_move: {slot: 1, gfn: 0x300}
  - access: {gpa: 0x200000}
  - access: {gpa: 0x300000}
  - memslot_delete: {slot: 0}
  - access: {gpa: 0x100000}
"""))
    assert v[3] == {"ret": 0, "dirty": [0, 2]}       # exactly the written pages
    assert v[4] == {"ret": 0, "dirty": []}
    assert v[5] == {"ret": 0}
    assert v[7] == {"ret": "-ENOENT", "dirty": []}   # no dirty bitmap without KVM_MEM_LOG_DIRTY_PAGES
    assert v[8] == {"ret": 0}
    assert v[11] == {"ret": 0, "dirty": [0, 1]}
    assert v[12] == {"ret": 0}
    assert v[13]["outcome"] == "mmio"                # the old gfn has no memslot any more
    assert v[14] == {"outcome": "ok", "data": 6, "exits": []}
    assert v[15] == {"ret": 0}
    assert v[16]["outcome"] == "mmio"


def test_api_ops_are_not_observable_and_unrealisable_parts_are_reported(host):
    t = run(host, """
world:
  notifier: {seq: 0, seq_bits: 64}
  vmas:
    - {name: ram, pages: 2, page_states: {1: resident}}
    - {name: dev, pages: 1, remap: pfnmap, frames: refcount0}
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}, {id: 1, gfn: 0x200, pages: 1, vma: dev}]
ops:
  - lookup: {gfn: 0x100}
  - gfn_to_page: {gfn: 0x100}
  - vcpu_map: {gfn: 0x100, handle: m}
  - vcpu_unmap: {handle: m}
  - x86_fault: {gfn: 0x100}
  - access: {gpa: 0x101000}
  - access: {gpa: 0x200000}
  - access: {gpa: 0x100000}
  - invalidate_begin: {vma: ram}
  - access: {gpa: 0x100000}
  - invalidate_end:
""")
    r = t.records
    for i in range(5):
        assert set(r[i].api) == {"not_observable"} and r[i].vmm is None
    assert "swap" in r[5].vmm["not_realisable"]
    assert "refcount-0" in r[6].vmm["not_realisable"]
    assert r[7].vmm["outcome"] == "ok"
    assert "not_realisable" in r[8].vmm and "not_realisable" in r[9].vmm


def test_32bit_seq_is_not_realisable(host):
    t = run(host, """
world:
  notifier: {seq: 0, seq_bits: 32}
  vmas: [{name: ram, pages: 1}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000}
""")
    assert "32-bit" in t.records[0].vmm["not_realisable"]


def test_memslot_ioctl_v1_and_v2_agree(host):
    from shim_helpers import SCENARIOS

    from kernel_shim.host_backend import HostBackend
    from kvmsim.scenario import load_scenario
    v1 = HostBackend(region_v1=True)
    try:
        for name in ("memslots.yaml", "readonly_slot.yaml", "prot.yaml"):
            sc = load_scenario(str(SCENARIOS / name))
            a, b = host.run(sc), v1.run(sc)
            assert a.meta["memslot_ioctl"] == "KVM_SET_USER_MEMORY_REGION2"
            assert b.meta["memslot_ioctl"] == "KVM_SET_USER_MEMORY_REGION"
            assert [r.vmm for r in a.records] == [r.vmm for r in b.records]
    finally:
        v1.close()
