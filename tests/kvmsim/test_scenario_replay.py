"""The scenario format on its own: ``replay`` gives the memslots and VMAs each op runs against
(spec §1.2 memslot ioctls, §1.3 munmap/mprotect), and reading a scenario loads no part of the
simulator (the codec and the real-host backend read scenarios without the model)."""

from __future__ import annotations

import subprocess
import sys

from kvmsim import loads_scenario
from kvmsim.scenario import memory_at, replay

TEXT = """\
world:
  vmas:
    - {name: ram, pages: 8}
    - {name: dev, pages: 2, remap: pfnmap, prot: r}
  memslots:
    - {id: 0, gfn: 0x100, pages: 4, vma: ram}
ops:
  - memslot_create: {slot: 1, gfn: 0x200, pages: 2, vma: dev, readonly: true}
  - memslot_flags: {slot: 0, log_dirty: true}
  - memslot_invalidate: {slot: 0}
  - memslot_move: {slot: 0, gfn: 0x300}
  - mprotect: {vma: ram, prot: r}
  - munmap: {vma: dev}
  - memslot_delete: {slot: 1}
  - access: {gpa: 0x300000}
"""


def _shape(mem) -> dict:
    slots = {key: (s.gfn, s.spec.pages, s.spec.vma, s.spec.readonly, s.log_dirty, s.invalid)
             for key, s in sorted(mem.slots.items())}
    vmas = {name: (v.prot, v.mapped) for name, v in sorted(mem.vmas.items())}
    return {"slots": slots, "vmas": vmas}


def test_replay_gives_the_memory_each_op_runs_against() -> None:
    sc = loads_scenario(TEXT)
    seen = [(op.kind, _shape(mem)) for _, op, mem in replay(sc)]
    ram0 = (0x100, 4, "ram", False, False, False)
    dev1 = (0x200, 2, "dev", True, False, False)
    assert seen[0] == ("memslot_create", {"slots": {(0, 0): ram0}, "vmas": {"dev": ("r", True), "ram": ("rw", True)}})
    assert seen[1][1]["slots"] == {(0, 0): ram0, (0, 1): dev1}
    assert seen[2][1]["slots"][(0, 0)] == (0x100, 4, "ram", False, True, False)
    assert seen[3][1]["slots"][(0, 0)] == (0x100, 4, "ram", False, True, True)
    assert seen[4][1]["slots"][(0, 0)] == (0x300, 4, "ram", False, True, False)    # a move ends the invalid state
    assert seen[5][1]["vmas"]["ram"] == ("r", True)
    assert seen[6][1]["vmas"]["dev"] == ("r", False)
    assert seen[7][1]["slots"] == {(0, 0): (0x300, 4, "ram", False, True, False)}
    last = memory_at(sc, 7)
    assert last.slot_at(0, 0x303) is last.slots[(0, 0)]
    assert last.slot_at(0, 0x100) is None and last.slot_at(1, 0x300) is None


def test_overlapping_names_the_slot_below_first_and_ignores_the_moving_one() -> None:
    sc = loads_scenario(TEXT)
    table = memory_at(sc, 1).slots                     # slot 0 at 0x100+4, slot 1 at 0x200+2
    assert table.overlapping(0, 0x103, 0x100).spec.id == 0
    assert table.overlapping(0, 0x104, 0x100).spec.id == 1
    assert table.overlapping(0, 0x104, 0xFC) is None
    assert table.overlapping(0, 0x101, 2, ignore=table[(0, 0)]) is None
    assert table.overlapping(1, 0x100, 4) is None


def test_the_scenario_format_imports_no_part_of_the_simulator() -> None:
    code = ("import sys, kvmsim.scenario\n"
            "print(' '.join(m for m in sys.modules if m.startswith('kvmsim')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                 .stdout.split())
    assert "kvmsim.scenario.load" in loaded
    simulator = {"kvmsim.mm", "kvmsim.pfndb", "kvmsim.world", "kvmsim.executor", "kvmsim.vmm", "kvmsim.notifier",
                 "kvmsim.memslot", "kvmsim.sim_backend", "kvmsim.generation"}
    assert not loaded & simulator, sorted(loaded & simulator)
