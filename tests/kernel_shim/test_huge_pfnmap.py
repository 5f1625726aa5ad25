"""Spec §7 D16 on real kernels: a VM_PFNMAP VMA the host maps with a 2 MiB entry (a BAR mapped
through vfio-pci, whose huge_fault installs PMDs from v6.12) gets a 2 MiB SPTE, as the model of
each generation says; 6.1's vfio-pci has no huge_fault, so there the VMA cannot be built and the
access says why.  Boots each cached Debian kernel once."""

from __future__ import annotations

import os

import pytest
from shim_helpers import booted_kernel

from kvmsim.backend import get_backend
from kvmsim.scenario import load_scenario

SEED = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "d16-vmm-huge-pfnmap-access.yaml")
HUGE = {"writable": True, "level": 512}


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_huge_pfnmap_access_gets_the_models_spte_level(suite):
    k = booted_kernel(suite)
    if "vfio_pci" not in k.modules:
        pytest.skip(f"{k.release} was cached without vfio-pci; "
                    f"`pfndiff kernels fetch --suite {suite}` prepares it again")
    sc = load_scenario(SEED)
    model = get_backend(f"sim:{k.generation}").run(sc)
    assert model.records[0].fault[-1]["spte"] == HUGE                  # G1 and G3 allow it (D16)
    b = get_backend(f"qemu:{k.name}")
    try:
        t = b.run(sc)
    finally:
        b.close()
    if suite == "bookworm":                                             # 6.1: 4 KiB PTEs only
        why = t.records[0].vmm["not_realisable"]
        assert "4 KiB PTEs before v6.12" in why and "vfio_pci_mmap_huge_fault" in why, why
        return
    assert t.records[0].vmm["outcome"] == "ok", t.records[0].vmm
    assert t.records[0].fault[-1]["spte"] == HUGE, t.records[0].fault
    assert t.records[0].fault[-1]["result"] == "pfn"
    assert t.records[1].vmm["data"] == 0x5A5A
