"""Regression replay (Go ``testdata/fuzz`` style): every reproducer promoted into
``corpus/regressions`` by ``pfndiff triage --promote`` still shows the signature its tags name,
on the pairs they name, and still survives the byte codec (so it can seed a libFuzzer corpus).

A failure here means the model or the oracles changed behaviour on a known finding.  If that
change is intended (a bug fixed, a signature format changed): ``pfndiff repro FILE`` shows what
changed; move the file out of corpus/regressions and ``pfndiff triage MOVED.yaml --promote``
writes its successor (or nothing, if the divergence is gone)."""

from __future__ import annotations

import glob
import os

import pytest
import yaml
from findings import D10, D10_PAIR, REGRESSIONS, find, seed

from fuzz.cli import main
from fuzz.inputs.codec import decode, encode
from fuzz.judging.judge import Judge
from kvmsim import load_scenario

PROMOTED = sorted(glob.glob(os.path.join(REGRESSIONS, "*.yaml")))


def _pairs(tags: dict) -> list[tuple[str, str]]:
    return [tuple((p.split("~") + [""])[:2]) for p in tags["pairs"]]


def test_there_are_promoted_reproducers():
    """At least ten, every file of the directory one (nothing the replay would skip), each tagged as
    ``--promote`` tags it, and no finding promoted twice."""
    assert len(PROMOTED) >= 10
    assert sorted(os.listdir(REGRESSIONS)) == [os.path.basename(p) for p in PROMOTED]
    tags = [load_scenario(p).tags for p in PROMOTED]
    assert all({"signature", "id", "left", "right", "pairs", "spec"} <= set(t) for t in tags)
    assert len({t["id"] for t in tags}) == len({(tuple(t["pairs"]), t["signature"]) for t in tags}) == len(tags)


@pytest.mark.parametrize("path", PROMOTED, ids=lambda p: os.path.basename(p)[:-5])
def test_promoted_reproducer_still_shows_its_signature(path):
    sc = load_scenario(path)
    tags = sc.tags
    assert tags["id"] in os.path.basename(path) and tags["left"] in tags["pairs"][0]
    j = Judge(_pairs(tags)).judge(sc)
    assert tags["signature"] in j.signatures, [d.signature for d in j.divs]
    assert decode(encode(sc)) == sc


def test_promote_writes_a_replayable_tagged_yaml(tmp_path, capsys):
    find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    dest = tmp_path / "regressions"
    assert main(["triage", str(tmp_path / "c"), "-o", str(tmp_path / "out"), "--promote",
                 "--promote-dir", str(dest)]) == 0
    out = capsys.readouterr().out
    files = sorted(dest.iterdir())
    assert files and all(f"promoted: {f}" in out for f in files)
    for f in files:
        assert f.name.startswith("g2-vs-g2s-literal-")
        doc = yaml.safe_load(f.read_text())
        assert {"signature", "id", "left", "right", "pairs", "spec"} <= set(doc["tags"])
        test_promoted_reproducer_still_shows_its_signature(str(f))


def test_campaigns_know_the_causes_promoted_reproducers_were_promoted_under():
    """A campaign counts a cause as already known when a promoted reproducer has it; the cause is
    computed as triage computed it (with the input's other divergences), so the id a reproducer
    was promoted under is the one campaigns look up."""
    import re

    from fuzz.triage.known import causes_in_regressions
    ids = [load_scenario(p).tags["id"] for p in PROMOTED]
    cause_ids = {i for i in ids if re.fullmatch(r"[a-z]{3}-[0-9a-f]{8}|S\d", i)}
    assert cause_ids and cause_ids <= set(causes_in_regressions())
