"""Model (sim:g3) vs this host at VMM level: every difference must be a named host quirk, or one
of the model bugs reported to the model's maintainers (listed here until the model is fixed)."""

from __future__ import annotations

import pytest
from shim_helpers import SCENARIOS

from kernel_shim.conformance import compare
from kernel_shim.probe import probe
from kernel_shim.sweep import sweep
from kvmsim.backend import get_backend
from kvmsim.scenario import Scenario, load_scenario


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


def test_the_model_runs_what_the_host_ran_and_says_what_was_compared(host, capsys):
    """API-only ops (d09's kvm_vcpu_map) and ops after a fatal signal never reach the host; the
    model is compared over the ops the host ran, and a comparison that compared nothing says so."""
    from pathlib import Path

    from fuzz.cli import main
    from kernel_shim.conformance import check
    from kvmsim.scenario import loads_scenario
    seeds = Path(__file__).resolve().parents[2] / "corpus" / "seeds"
    assert main(["diff", str(seeds / "d09-unmap-dirty-log.yaml"), "-l", "sim:g3", "-r", "host"]) == 0
    out = capsys.readouterr().out
    assert "0 divergence(s)" in out and "1 of 3 ops compared" in out, out
    assert main(["diff", str(seeds / "d05-remapped-refcount0.yaml"), "-l", "sim:g3", "-r", "host"]) == 0
    out = capsys.readouterr().out
    assert "NOTHING compared" in out and "divergence" not in out, out
    killed = loads_scenario("""
world:
  vmas: [{name: ram, pages: 2, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}]
ops:
  - access: {gpa: 0x100000, write: true, value: 3}
  - signal: {kind: fatal}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x101000}
  - munmap: {vma: ram}
""")
    rep, sim, ht = check(killed, get_backend("sim:g3"), host)
    assert ht.records[3].vmm.get("skipped") and not rep.differences, [str(d) for d in rep.differences]
    assert (rep.coverage.compared, rep.status()) == (2, "ok")
