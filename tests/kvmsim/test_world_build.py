"""A world is built where the scenario says: ``World.from_scenario`` places its VMAs in one pass
(``Scenario.vma_starts``) at exactly the addresses ``Scenario.vma_start`` gives them."""

from __future__ import annotations

from kvmsim.scenario import Scenario, VmaSpec, WorldSpec
from kvmsim.world import World


def _scenario(vmas: list[VmaSpec]) -> Scenario:
    return Scenario(WorldSpec(vmas=vmas), [])


def test_vma_starts_match_vma_start_for_every_vma():
    shared = VmaSpec("s", 1)
    vmas = [VmaSpec("a", 2), VmaSpec("b", 1, start=0x5000_0000_0000), shared, VmaSpec("c", 4), shared]
    sc = _scenario(vmas)
    assert sc.vma_starts() == [sc.vma_start(v) for v in vmas]
    assert sc.vma_starts()[4] == sc.vma_starts()[2]          # one VmaSpec object: one place


def test_world_places_its_vmas_as_the_scenario_does():
    vmas = [VmaSpec("a", 2), VmaSpec("b", 1, start=0x5000_0000_0000), VmaSpec("c", 3, prot="r")]
    sc = _scenario(vmas)
    w = World.from_scenario(sc)
    for v in vmas:
        vma = w.mm.by_name(v.name)
        assert vma is not None
        assert (vma.start, vma.npages) == (sc.vma_start(v), v.pages)
