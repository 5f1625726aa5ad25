"""The real atheris/libFuzzer targets and a short campaign (slow: they start libFuzzer)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from fuzz.campaigns.campaign import TARGETS
from fuzz.cli import main
from fuzz.inputs.codec import encode
from kvmsim import load_scenario
from kvmsim.checkout import ROOT

SEEDS = os.path.join(ROOT, "corpus", "seeds")


def env_for(artifacts: str, pairs: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PFNDIFF_ARTIFACTS"] = artifacts
    env["PFNDIFF_PAIRS"] = pairs
    return env


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_targets_are_executable_scripts_with_a_shebang(name):
    path = TARGETS[name]
    assert os.access(path, os.X_OK)
    with open(path, encoding="utf-8") as fh:
        assert fh.readline().rstrip() == "#!/usr/bin/env python3"


@pytest.mark.slow
def test_diff_target_under_libfuzzer_writes_artifacts_and_keeps_going(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "s8").write_bytes(encode(load_scenario(os.path.join(SEEDS, "d24-sketch-ownership.yaml"))))
    art = tmp_path / "art"
    r = subprocess.run([TARGETS["diff"], "-runs=3000", f"-artifact_prefix={art}/", str(corpus)],
                       env=env_for(str(art), "sim:g2~sim:g2s-literal:S8"), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"Done 3000 runs" in r.stderr                 # it did not stop at the first finding
    sidecars = [n for n in os.listdir(art) if n.startswith("crash-") and n.endswith(".yaml")]
    assert sidecars
    assert any("S8" in yaml.safe_load((art / n).read_text())["spec_ids"] for n in sidecars)


@pytest.mark.slow
def test_diff_target_merge_mode(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    for i, n in enumerate(("d04-remapped-refcounted.yaml", "d05-remapped-refcount0.yaml")):
        (new / str(i)).write_bytes(encode(load_scenario(os.path.join(SEEDS, n))))
    r = subprocess.run([TARGETS["diff"], "-merge=1", str(old), str(new)],
                       env=env_for(str(tmp_path / "a"), "sim:g1~sim:g3"), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(os.listdir(old)) >= 1


@pytest.mark.slow
def test_campaign_ends_with_a_findings_table(tmp_path, capsys):
    rc = main(["fuzz", "--pair", "sim:g2~sim:g2s-literal:S8", "--time", "8", "--corpus", str(tmp_path / "c"),
               "--artifacts", str(tmp_path / "a"), "--status-every", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "exec/s" in out and "findings after" in out
    # one line for the cause; S8 has a promoted reproducer, so the user knows it already
    rows = [ln for ln in out.splitlines() if " S8 " in ln]
    assert len(rows) == 1 and rows[0].startswith("known") and "corpus/regressions" in rows[0], out
    assert re.search(r"sim:g2 vs sim:g2s-literal:S8: [1-9]\d* of \d+ ops compared", out), out
    assert os.listdir(tmp_path / "c")                  # the working corpus grew


def _inited_cov(tmp_path, seeds: list[str], feedback: str) -> int:
    """libFuzzer's coverage count after reading a corpus of these seeds (no mutation)."""
    corpus = tmp_path / f"corpus-{len(seeds)}-{feedback}"
    corpus.mkdir()
    for i, n in enumerate(seeds):
        (corpus / str(i)).write_bytes(encode(load_scenario(os.path.join(SEEDS, n))))
    env = env_for(str(tmp_path / "art"), "sim:g2~sim:g3")
    env["PFNDIFF_FEEDBACK"] = feedback
    r = subprocess.run([TARGETS["diff"], "-runs=0", str(corpus)], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(rb"INITED cov: (\d+)", r.stderr)
    assert m, r.stderr[-2000:]
    return int(m.group(1))


@pytest.mark.slow
def test_semantic_feedback_counts_a_new_feature_as_coverage(tmp_path):
    one = ["d04-remapped-refcounted.yaml"]
    two = one + ["d24-sketch-ownership.yaml"]          # an x86_fault cell the first seed never reaches
    assert _inited_cov(tmp_path, two, "semantic") > _inited_cov(tmp_path, one, "semantic")


def test_an_unknown_feedback_mode_is_a_one_line_error(tmp_path):
    env = env_for(str(tmp_path / "art"), "sim:g2~sim:g3")
    env["PFNDIFF_FEEDBACK"] = "edges"
    r = subprocess.run([TARGETS["diff"], "-runs=0"], env=env, capture_output=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.decode().strip().splitlines() == [
        "error: PFNDIFF_FEEDBACK='edges': expected one of semantic, bytecode, both"]


def test_semantic_observer_bumps_the_same_counters_with_remembered_slots(monkeypatch):
    """The observer keeps each judgement's counter indices (``FeatureCounters.slots``); libFuzzer
    must see exactly the counters that hitting every feature one by one bumps, in that order."""
    import atheris

    from fuzz.judging.engine import Checker, parse_pairs
    from fuzz.targets.atheris_compat import FeatureCounters
    from fuzz.targets.diff_target import semantic_observer

    reserved = iter(range(1000, 10 ** 6))
    monkeypatch.setattr(atheris, "_reserve_counter", lambda: next(reserved))
    bumped: list[int] = []
    monkeypatch.setattr(atheris, "_trace_branch", bumped.append)

    class OneByOne:
        """Only ``hit``: the observer must fall back to hitting each feature."""
        def __init__(self, counters: FeatureCounters) -> None:
            self.hit = counters.hit

    def run(counters, base: int) -> list[int]:
        bumped.clear()
        checker = Checker(parse_pairs("sim:g2~sim:g3"), None)
        checker.observe = semantic_observer(counters)
        for gfn in (0, 1, 2, 0, 17, 1, 3, 0, 9, 13, 2):
            checker.check(bytes([2, 0x40, gfn & 3, gfn, 0, 0x50, gfn & 1, gfn, 0x60, gfn, 8, 1]))
        return [b - base for b in bumped]

    by_slot, one_by_one = FeatureCounters(8), FeatureCounters(8)
    assert run(by_slot, by_slot.base) == run(OneByOne(one_by_one), one_by_one.base) != []
    assert len(by_slot) > 8                                 # past the reserved counters too
