"""Spec §8 (what a VMM observes through KVM_RUN), for the rows the simulation can express, on
every generation the row's "Versions" column covers (G1/G2/G2f ≈ ≤ v6.12, G3 = v6.13)."""

from __future__ import annotations

import pytest
from helpers import GENERATIONS, GFN, host_scenario, run

OLD = ("sim:g1", "sim:g2", "sim:g2s", "sim:g2f")
GPA = GFN << 12


def access(backend: str, state: str, write: bool, ro_slot: bool = False, gpa: int = GPA, **world) -> dict:
    sc = host_scenario(state, [{"access": {"gpa": gpa, "write": write, "value": 0x42}}], ro_slot, **world)
    t = run(backend, sc)
    rec = t.records[-1]
    assert t.meta["refs_held_at_end"] == {} and t.meta["pins_held_at_end"] == {}
    return rec.vmm


@pytest.mark.parametrize("backend", GENERATIONS)
@pytest.mark.parametrize("row,state,write,ro_slot,gpa,outcome,exits", [
    pytest.param("ro-slot-write", "present_rw", True, True, GPA, "mmio", ["MMIO"], id="8:ro-slot-write:mmio"),
    pytest.param("no-memslot", "present_rw", False, False, 0x9000 << 12, "mmio", ["MMIO"], id="8:no-memslot:mmio"),
    pytest.param("hva-unmapped", "no_vma", False, False, GPA, "efault", ["EFAULT"], id="8:no-vma:efault"),
    pytest.param("write-prot-read", "ro_vma", True, False, GPA, "efault", ["EFAULT"],
                 id="8:write-to-PROT_READ:efault"),
    pytest.param("pfnmap-handler-fails", "remap:none:absent-fails", False, False, GPA, "efault", ["EFAULT"],
                 id="8:pfnmap-handler-fails:efault"),
    pytest.param("signal-during-io", "needs_io_signal", False, False, GPA, "ok", ["EINTR"],
                 id="8:signal-during-io:EINTR-then-retry"),
    # §8: KVM_RUN's -EINTR goes to a task that SIGKILL ends: the VMM itself observes no exit
    pytest.param("fatal-signal", "needs_io_fatal", False, False, GPA, "killed", [], id="8:fatal-signal"),
    pytest.param("pfnmap-ro-pte-write", "remap:none:ro", True, False, GPA, "mmio", ["MMIO"],
                 id="8:write-RO-PFNMAP-PTE:mmio"),
])
def test_vmm_rows_all_versions(backend, row, state, write, ro_slot, gpa, outcome, exits) -> None:
    vmm = access(backend, state, write, ro_slot, gpa)
    assert vmm["outcome"] == outcome, vmm
    assert vmm["exits"] == exits, vmm
    if outcome == "mmio":
        assert vmm["mmio"]["is_write"] is write and vmm["mmio"]["gpa"] == gpa


@pytest.mark.parametrize("backend", GENERATIONS)
def test_vmm_hwpoison_sigbus(backend) -> None:
    sc = host_scenario("hwpoison", [])
    hva = sc.vma_start(sc.world.vmas[0])
    vmm = access(backend, "hwpoison", False)
    assert vmm["outcome"] == "sigbus" and vmm["signals"] == [f"SIGBUS:BUS_MCEERR_AR:{hva:#x}"]


@pytest.mark.parametrize("backend,outcome", [(b, "efault") for b in ("sim:g1",)] + [("sim:g3", "ok")])
def test_vmm_pfnmap_refcount0(backend, outcome) -> None:
    """§8: VM_IO/VM_PFNMAP memory with refcount-0 struct pages: -EFAULT v5.13–v6.12, works in v6.13."""
    assert access(backend, "remap:refcount0", False)["outcome"] == outcome


@pytest.mark.parametrize("backend", GENERATIONS)
def test_vmm_async_pf_no_exit(backend) -> None:
    """§8: host page needs I/O and the guest has async PF: no exit, the vCPU does not block."""
    vmm = access(backend, "needs_io", False, vcpu={"async_pf": True})
    assert vmm["outcome"] == "ok" and vmm["exits"] == []


@pytest.mark.parametrize("backend", GENERATIONS)
def test_vmm_memslot_in_flight_retries(backend) -> None:
    """§8: a memslot being deleted/moved is retried transparently (RET_PF_RETRY), never an exit."""
    sc = host_scenario("present_rw", [{"memslot_invalidate": {"slot": 0}}, {"access": {"gpa": GPA}}])
    vmm = run(backend, sc).records[-1].vmm
    assert vmm["exits"] == [] and vmm["outcome"] == "stall"


@pytest.mark.parametrize("backend", GENERATIONS)
def test_vmm_write_then_read_back(backend) -> None:
    sc = host_scenario("present_ro", [{"access": {"gpa": GPA | 0x18, "write": True, "value": 0x1234}},
                                      {"access": {"gpa": GPA | 0x18}}])
    t = run(backend, sc)
    assert t.records[-1].vmm == {"outcome": "ok", "data": 0x1234, "exits": []}
