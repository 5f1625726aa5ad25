"""Findings for the triage, minimisation and corpus tests: real findings are made
by the fuzz engine itself (``Checker`` writes ``crash-<sha1>`` + sidecar), never written by hand."""

from __future__ import annotations

import os

from fuzz.inputs.codec import encode
from fuzz.judging.engine import Checker
from kvmsim import load_scenario, loads_scenario
from kvmsim.checkout import ROOT
from kvmsim.scenario import Scenario

SEEDS = os.path.join(ROOT, "corpus", "seeds")
REGRESSIONS = os.path.join(ROOT, "corpus", "regressions")

# The sketch's WARN at mmu_seq == 0 (D10/S2): the seed, and the same bug through another input.
D10 = "d10-sketch-warn-seq0.yaml"
D10_OTHER = """
name: same bug, different world and ops
world:
  pages: [{name: spare, kind: reserved}]
  vmas:
    - {name: big, pages: 4, page_states: {1: present_rw, 2: resident}}
    - {name: other, pages: 2}
  memslots:
    - {id: 3, gfn: 0x400, pages: 4, vma: big}
    - {id: 5, gfn: 0x20, pages: 2, vma: other}
ops:
  - get_dirty_log: {slot: 5}
  - access: {gpa: 0x401000, write: true, value: 9}
  - access: {gpa: 0x402000}
"""
D10_PAIR = ("sim:g2", "sim:g2s-literal")


def seed(name: str) -> Scenario:
    return load_scenario(os.path.join(SEEDS, name))


def seed_bytes(name: str) -> bytes:
    return encode(seed(name))


def find(directory, pairs, scenarios: list[Scenario]) -> list[str]:
    """Run the campaign's engine on each scenario; returns the artifact paths it wrote."""
    c = Checker(list(pairs), str(directory))
    for sc in scenarios:
        c.check(encode(sc))
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.startswith("crash-") and not n.endswith(".yaml"))


def d10_other() -> Scenario:
    return loads_scenario(D10_OTHER)
