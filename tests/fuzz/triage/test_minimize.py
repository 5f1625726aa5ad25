"""Minimisation keeps the signature and makes the input smaller, at the scenario level and the
byte level; ``pfndiff minimize`` on one file."""

from __future__ import annotations

import copy
import os

import pytest
import yaml
from findings import D10, D10_PAIR, d10_other, find, seed

from fuzz.cli import main
from fuzz.inputs.codec import decode, encode
from fuzz.judging.judge import Judge
from fuzz.triage.minimize import minimize, shows_signature, shrink_bytes
from kvmsim import loads_scenario

WARN_ACCESS = "diff:api sim:g2~sim:g2s-literal access events []>[WARN:__kvm_follow_pfn:!FOLL_GET && !mmu_seq]"

PADDED = """
name: a refcount underflow (S8) hidden among unrelated ops and world
world:
  signal: none
  notifier: {seq: 5}
  pages: [{name: rsv, kind: reserved}, {name: bar, kind: none}]
  vmas:
    - {name: ram, pages: 4, page_states: {0: present_rw, 1: present_ro, 3: resident}}
    - {name: dev, pages: 2, remap: pfnmap, ptes: {0: {page: bar}}}
    - {name: rom, pages: 2, prot: r}
  memslots:
    - {id: 0, gfn: 0x100, pages: 4, vma: ram, log_dirty: true}
    - {id: 1, gfn: 0x200, pages: 2, vma: dev}
    - {id: 2, gfn: 0x300, pages: 2, vma: rom, readonly: true}
ops:
  - lookup: {gfn: 0x300}
  - get_dirty_log: {slot: 0}
  - access: {gpa: 0x200000}
  - gfn_to_page: {gfn: 0x101}
  - access: {gpa: 0x100000, write: true, value: 77}
  - madvise: {vma: rom}
  - access: {gpa: 0x101000}
  - lookup: {gfn: 0x102, write: true, nowait: true}
"""


def test_minimised_scenario_keeps_the_signature_and_is_smaller():
    judge = Judge([D10_PAIR])
    sc = d10_other()
    before = encode(sc)
    res = minimize(sc, judge, WARN_ACCESS, data=before)
    assert shows_signature(judge, WARN_ACCESS)(res.scenario)
    assert judge.judge(decode(res.data)).signatures.get(WARN_ACCESS) is False   # the bytes too, unknown
    assert res.ops_after < len(sc.ops) and len(res.data) < len(before)
    assert len(res.scenario.world.memslots) <= 1 and len(res.scenario.world.pages) == 0
    assert res.ops_after == 1


def test_minimisation_of_a_padded_bug_drops_world_and_ops():
    judge = Judge([("sim:g2", "sim:g2s-literal:S8")])
    sc = loads_scenario(PADDED)
    sig = judge.judge(sc).first_unknown().signature
    assert "BUG:refcount_underflow" in sig
    res = minimize(sc, judge, sig, data=encode(sc))
    assert judge.judge(res.scenario).signatures.get(sig) is False
    assert res.ops_after <= 2 < len(sc.ops)
    assert len(res.data) * 4 < len(encode(sc))


def test_a_step_that_would_lose_the_signature_is_refused():
    """Removing the one access the WARN needs is never accepted: the predicate is consulted."""
    judge = Judge([D10_PAIR])
    sc = seed(D10)
    pred = shows_signature(judge, WARN_ACCESS)
    empty = copy.copy(sc)
    empty.ops = []
    assert pred(sc) and not pred(empty)
    with pytest.raises(ValueError):
        minimize(empty, judge, WARN_ACCESS)


def test_byte_shrinking_keeps_the_predicate():
    data = bytes(range(1, 40))
    out = shrink_bytes(data, lambda b: b.count(7) == 1 and len(b) >= 2)
    assert out.count(7) == 1 and len(out) == 2 and out[0] == 1


def test_pfndiff_minimize_on_an_artifact_and_on_a_yaml(tmp_path, capsys):
    path = find(tmp_path / "c", [D10_PAIR], [d10_other()])[0]
    assert main(["minimize", path]) == 0
    out = capsys.readouterr().out
    assert "->" in out and os.path.exists(path + ".min") and os.path.exists(path + ".min.yaml")
    doc = yaml.safe_load(open(path + ".min.yaml"))
    assert doc["tags"]["left"] == "sim:g2" and doc["tags"]["right"] == "sim:g2s-literal"
    assert len(decode(open(path + ".min", "rb").read()).ops) <= len(d10_other().ops)
    # the minimised YAML is itself an input (tags name the pair) and minimising it again is stable
    assert main(["minimize", path + ".min.yaml", "-o", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    assert decode((tmp_path / "again").read_bytes()) == decode(open(path + ".min", "rb").read())


def test_pfndiff_minimize_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "x").write_bytes(b"\x01\x40\x00")
    assert main(["minimize", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x" in err and "--left/--right" in err
    assert main(["minimize", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
