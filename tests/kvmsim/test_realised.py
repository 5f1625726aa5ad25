"""The model run the way a real backend ran a scenario, and how much a comparison compared.

The "real" traces here are written the way ``kernel_shim.host_exec`` reports what it cannot run
(API-only ops ``not_observable``, ``not_realisable`` accesses, ``skipped`` after a fatal signal);
the host tests in tests/kernel_shim run the same seeds on the real kernel."""

from __future__ import annotations

from pathlib import Path

from kvmsim import get_backend, load_scenario
from kvmsim.realised import as_realised, coverage, realise_pair, realised_scenario, unrun
from kvmsim.scenario import loads_scenario
from kvmsim.trace import OpRecord, Trace
from oracles.catalogue import load_catalogue
from oracles.diff import compare

SEEDS = Path(__file__).resolve().parents[2] / "corpus" / "seeds"
G3 = get_backend("sim:g3")


def _host_like(sc, vmm: dict[int, dict]) -> Trace:
    """What a real backend reports: API ops not observable, the given VMM records elsewhere."""
    recs = [OpRecord(i, op.kind, {"not_observable": "internal to KVM"} if op.kind in
                     ("lookup", "vcpu_map", "vcpu_unmap", "gfn_to_page", "x86_fault") else None, vmm.get(i))
            for i, op in enumerate(sc.ops)]
    return Trace("host", recs, {"generation": "g3"})


def test_the_dirty_bit_of_an_api_only_unmap_is_not_compared_against_a_host_that_never_mapped():
    sc = load_scenario(str(SEEDS / "d09-unmap-dirty-log.yaml"))
    host = _host_like(sc, {2: {"ret": 0, "dirty": []}})
    full = G3.run(sc)
    assert full.records[2].vmm["dirty"] == [0]              # the model's kvm_vcpu_unmap logged it
    m = as_realised(full, host, sc, G3.run)
    assert m.records[2].vmm == {"ret": 0, "dirty": []}
    assert [unrun(r) is not None for r in m.records] == [True, True, False]
    assert not compare(sc, m, host, load_catalogue())
    c = coverage(m, host, api=False)
    assert (c.ops, c.left, c.right, c.compared) == (3, 1, 1, 1)


def test_nothing_runs_after_the_vmm_was_killed():
    sc = loads_scenario("""
world:
  vmas: [{name: ram, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - signal: {kind: fatal}
  - access: {gpa: 0x100000}
  - access: {gpa: 0x100000}
  - munmap: {vma: ram}
""")
    gone = {"skipped": "the execution ended at op 1 (killed)"}
    host = _host_like(sc, {1: {"outcome": "killed", "data": None, "exits": []}, 2: gone, 3: gone})
    m, h = realise_pair(sc, G3.run(sc), host, lambda n, s: get_backend(n).run(s))
    assert h is host and m.records[2].vmm["not_realisable"].startswith("not run on host")
    assert not compare(sc, m, host, load_catalogue())
    assert coverage(m, host, api=False).compared == 1


def test_a_dropped_api_op_still_takes_the_pending_signal_like_the_host_does():
    sc = load_scenario(str(SEEDS / "eq-sigpending.yaml"))
    sub, where = realised_scenario(sc, {1})
    assert [op.kind for op in sub.ops] == ["signal", "signal", "signal", "access"]
    assert sub.ops[1].args == {"kind": "none"} and where == [0, None, 2, 3]
    sub, _ = realised_scenario(sc, {1, 2})           # no signal pending at the access: no EINTR
    assert G3.run(sub).records[-1].vmm["exits"] == []


def test_two_models_or_a_fully_realised_run_are_left_alone():
    sc = load_scenario(str(SEEDS / "eq-normal-present.yaml"))
    a, b = G3.run(sc), get_backend("sim:g1").run(sc)
    assert realise_pair(sc, a, b, lambda n, s: 1 / 0) == (a, b)
    host = Trace("host", [OpRecord(r.index, r.op, None, r.vmm) for r in a.records])
    assert as_realised(a, host, sc, lambda s: 1 / 0) is a


def test_coverage_says_nothing_was_compared():
    sc = load_scenario(str(SEEDS / "d05-remapped-refcount0.yaml"))
    host = _host_like(sc, {1: {"not_realisable": "named frame cannot be placed"}})
    c = coverage(as_realised(G3.run(sc), host, sc, G3.run), host, api=False)
    assert c.compared == 0 and c.summary("sim:g3", "host").startswith("NOTHING compared")


def test_a_memslot_the_host_could_not_build_is_still_deleted_in_the_model():
    """host_exec keeps its record of a memslot it could not build and deletes it when told, so
    an access after the delete finds no memslot on both sides."""
    sc = loads_scenario("""
world:
  vmas: [{name: drv, pages: 1, remap: mixedmap, frames: reserved, prot: none}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: drv}]
ops:
  - access: {gpa: 0x100000}
  - memslot_delete: {slot: 0}
  - access: {gpa: 0x100000}
""")
    nr = {"not_realisable": "vma drv could not be created"}
    mmio = {"outcome": "mmio", "data": None, "exits": ["MMIO"],
            "mmio": {"gpa": 0x100000, "len": 8, "is_write": False, "data": None}}
    host = _host_like(sc, {0: nr, 1: nr, 2: mmio})
    m = as_realised(G3.run(sc), host, sc, G3.run)
    assert m.records[2].vmm == mmio and not compare(sc, m, host, load_catalogue())
