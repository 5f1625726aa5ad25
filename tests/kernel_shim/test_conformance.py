"""Model (sim:g3) vs this host at VMM level: every difference must be a named host quirk, or one
of the model bugs reported to the model's maintainers (listed here until the model is fixed)."""

from __future__ import annotations

import pytest

from kernel_shim.conformance import compare
from kernel_shim.probe import probe
from kernel_shim.sweep import sweep
from kvmsim.backend import get_backend
from kvmsim.scenario import Scenario, load_scenario
from shim_helpers import SCENARIOS


def reported_model_bug(sc: Scenario, d) -> bool:
    """madvise(MADV_DONTNEED) on a VM_PFNMAP or hugetlb VMA: the kernel refuses VM_PFNMAP with
    -EINVAL and only frees whole, aligned 2 MiB pages of a hugetlb VMA; the model zaps 4 KiB PTEs."""
    op = sc.ops[d.index]
    if op.kind != "madvise":
        return False
    v = next(v for v in sc.world.vmas if v.name == op.args["vma"])
    return v.remap in ("pfnmap", "io") or v.host_level == "2m"


@pytest.mark.parametrize("name", sorted(p.name for p in SCENARIOS.glob("*.yaml")))
def test_scenario_set_conforms(host, name):
    sc = load_scenario(str(SCENARIOS / name))
    if name.startswith("hugetlb") and probe().backings["hugetlb_2m"] is not None:
        pytest.skip(f"no hugetlb: {probe().backings['hugetlb_2m']}")
    rep = compare(get_backend("sim:g3").run(sc), host.run(sc), sc)
    left = [str(d) for d in rep.unexplained if not reported_model_bug(sc, d)]
    assert not left, "\n".join(left)
    assert rep.compared > 0 or name == "unrealisable.yaml"


def test_random_sweep_conforms(host):
    r = sweep(150, seed=7, host=host, all_diffs=True, madvise_all=False)
    assert r.runs == 150 and r.compared > 1000
    assert not r.groups, dict(r.groups)
