"""pfndiff corpus minimize (a real libFuzzer -merge=1 through the executable atheris target, then a
semantic cover) and pfndiff corpus stats."""

from __future__ import annotations

import glob
import os
import stat

import pytest
from findings import SEEDS

from fuzz.cli import main
from fuzz.corpus.features import DEFAULT_PAIRS, FeatureExtractor, cell
from fuzz.corpus.merge import CorpusInput, read_corpus, semantic_cover
from fuzz.inputs.codec import encode
from kvmsim import get_backend, load_scenario, loads_scenario


def _seed_corpus(d, names=None) -> list[bytes]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(glob.glob(os.path.join(SEEDS, "*.yaml"))):
        if names and os.path.basename(p) not in names:
            continue
        data = encode(load_scenario(p))
        (d / os.path.basename(p).replace(".yaml", "")).write_bytes(data)
        out.append(data)
    return out


@pytest.mark.slow
def test_minimize_runs_a_real_merge_and_keeps_every_feature(tmp_path, capsys):
    _seed_corpus(tmp_path / "a")
    dup = tmp_path / "b"                                  # a second directory with duplicates
    dup.mkdir()
    for p in sorted((tmp_path / "a").iterdir())[:5]:
        (dup / ("copy-" + p.name)).write_bytes(p.read_bytes())
    rc = main(["corpus", "minimize", str(tmp_path / "a"), str(dup), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "features kept:" in out and "(100.0%)" in out
    log = (tmp_path / "out" / ".merge.log").read_text()
    assert "MERGE-OUTER: successful" in log                     # libFuzzer really merged
    kept = [n for n in os.listdir(tmp_path / "out") if not n.startswith(".")]
    before = read_corpus([str(tmp_path / "a"), str(dup)])
    assert 0 < len(kept) <= len(before)
    ext = FeatureExtractor(list(DEFAULT_PAIRS))                # recheck the 100% claim independently
    all_f = set().union(*(ext.of_bytes(i.data) for i in before))
    kept_f = set().union(*(ext.of_bytes((tmp_path / "out" / n).read_bytes()) for n in kept))
    assert all_f == kept_f
    assert f"before: {len(before)} file(s)" in out


def test_a_target_that_cannot_start_makes_minimize_fail_loudly(tmp_path, capsys):
    _seed_corpus(tmp_path / "a", {"d10-sketch-warn-seq0.yaml", "eq-noslot.yaml"})
    broken = tmp_path / "broken_target.py"
    broken.write_text("#!/usr/bin/env python3\nimport no_such_module_for_pfndiff\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    rc = main(["corpus", "minimize", str(tmp_path / "a"), "-o", str(tmp_path / "out"), "--target", str(broken)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "merge failed with exit status" in err and str(broken) in err
    assert not [n for n in os.listdir(tmp_path / "out") if not n.startswith(".")]     # no fake corpus
    rc = main(["corpus", "minimize", str(tmp_path / "a"), "-o", str(tmp_path / "out2"),
               "--target", str(tmp_path / "missing_target")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot start the merge target" in err and err.count("\n") == 1


def test_a_target_that_exits_0_without_merging_is_refused(tmp_path, capsys):
    _seed_corpus(tmp_path / "a", {"eq-noslot.yaml"})
    noop = tmp_path / "noop_target.sh"
    noop.write_text("#!/bin/sh\nexit 0\n")
    noop.chmod(noop.stat().st_mode | stat.S_IEXEC)
    rc = main(["corpus", "minimize", str(tmp_path / "a"), "-o", str(tmp_path / "out"), "--target", str(noop)])
    err = capsys.readouterr().err
    assert rc == 2 and "no completed merge" in err and err.count("\n") == 1


def test_a_non_empty_output_directory_is_refused(tmp_path, capsys):
    _seed_corpus(tmp_path / "a", {"eq-noslot.yaml"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious").write_bytes(b"keep me")
    assert main(["corpus", "minimize", str(tmp_path / "a"), "-o", str(tmp_path / "out")]) == 2
    assert (tmp_path / "out" / "precious").read_bytes() == b"keep me"
    assert "not empty" in capsys.readouterr().err


def test_semantic_cover_keeps_the_fewest_inputs_for_every_feature():
    ins = [CorpusInput(str(i), bytes([i]) * (i + 1)) for i in range(4)]
    s = [i.sha1 for i in ins]
    feats = {s[0]: {("cell", "g1", "a")}, s[1]: {("cell", "g1", "a"), ("cell", "g1", "b")},
             s[2]: {("cell", "g1", "b")}, s[3]: {("cell", "g3", "c")}}
    assert semantic_cover(ins, feats, []) == [s[1], s[3]]
    assert semantic_cover(ins, feats, [s[0]]) == [s[0], s[1], s[3]]


def test_cells_distinguish_decision_table_rows():
    sc = loads_scenario("""
world:
  pages: [{name: tail, kind: refcount0}]
  vmas:
    - {name: ram, pages: 2, page_states: {0: present_rw}}
    - {name: dev, pages: 1, remap: pfnmap, ptes: {0: {page: tail}}}
  memslots:
    - {id: 0, gfn: 0x100, pages: 2, vma: ram}
    - {id: 1, gfn: 0x200, pages: 1, vma: dev}
ops:
  - lookup: {gfn: 0x100, write: true}
  - lookup: {gfn: 0x200, write: true}
  - lookup: {gfn: 0x900}
  - madvise: {vma: ram}
""")
    cells = {b: [cell(op, r) for op, r in zip(sc.ops, get_backend(b).run(sc).records)] for b in ("sim:g1", "sim:g3")}
    g1, g3 = cells["sim:g1"], cells["sim:g3"]
    assert g1[3] is None                                       # a host event is not a table row
    assert len({g1[0], g1[1], g1[2]}) == 3                     # normal page, refcount-0 PFNMAP, no slot
    assert g1[1].split(" | ")[1] == "ERR_FAULT" and g3[1].split(" | ")[1] == "pfn"   # D5
    assert g1[0].startswith("lookup[ref] | pfn | w=true | ref={+1}")


def test_stats_shows_cells_per_generation(tmp_path, capsys):
    _seed_corpus(tmp_path / "a", {"d05-remapped-refcount0.yaml", "eq-noslot.yaml"})
    assert main(["corpus", "stats", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    for g in ("g1", "g2", "g2s", "g2s-literal", "g2f", "g3"):
        assert f"generation {g}:" in out
    assert "2 input(s)" in out and "oracle sim:g2~sim:g3" in out and "lookup[" in out
