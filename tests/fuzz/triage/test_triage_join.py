"""pfndiff triage --join: which clusters are new, which grew, which vanished."""

from __future__ import annotations

import json
import re
from collections import Counter

from findings import D10, D10_PAIR, d10_other, find, seed

from fuzz.cli import main


def _by_sig(out_dir) -> dict[str, dict]:
    doc = json.loads((out_dir / "triage.json").read_text())
    return {c["signature"]: c for c in doc["clusters"]}


def test_join_reports_new_grown_same_and_vanished(tmp_path, capsys):
    none = ["--regressions", str(tmp_path / "no-regressions")]   # a user without promoted reproducers
    find(tmp_path / "old", [D10_PAIR], [seed(D10)])
    find(tmp_path / "s8", [("sim:g2", "sim:g2s-literal:S8")], [seed("d24-sketch-ownership.yaml")])
    assert main(["triage", str(tmp_path / "old"), str(tmp_path / "s8"), "-o", str(tmp_path / "t1"), *none]) == 0
    first = _by_sig(tmp_path / "t1")
    assert all(c["delta"] == "new" for c in first.values())

    find(tmp_path / "more", [D10_PAIR], [d10_other()])                       # the D10 bug again
    find(tmp_path / "s45", [("sim:g2", "sim:g2s-literal:S4,S5")], [seed("d22-sketch-hva-error-as-pfn.yaml")])
    rc = main(["triage", str(tmp_path / "old"), str(tmp_path / "more"), str(tmp_path / "s45"),
               "-o", str(tmp_path / "t2"), "--join", str(tmp_path / "t1"), "--fail-on-new", *none])
    out = capsys.readouterr().out
    assert rc == 1                                           # a new cluster fails the CI job
    second = _by_sig(tmp_path / "t2")
    warn = next(s for s in second if s.startswith("diff:api sim:g2~sim:g2s-literal access events"))
    assert second[warn]["delta"] == "grew" and second[warn]["count"] == 2 and second[warn]["previous_count"] == 1
    s8 = [s for s in first if "S8" in s]
    assert s8 and all(second[s]["delta"] == "vanished" for s in s8)
    s45 = [s for s in second if "S4,S5" in s]
    assert s45 and all(second[s]["delta"] == "new" for s in s45)
    deltas = Counter(c["delta"] for c in json.loads((tmp_path / "t2" / "triage.json").read_text())["clusters"])
    joined = re.search(r"^joined with .*: (\d+) new, (\d+) grew, (\d+) same, (\d+) vanished$", out, re.M)
    assert joined and deltas["grew"] >= 1
    assert [int(n) for n in joined.groups()] == [deltas[k] for k in ("new", "grew", "same", "vanished")]

    rc = main(["triage", str(tmp_path / "old"), "-o", str(tmp_path / "t3"), "--join", str(tmp_path / "t1"),
               "--fail-on-new", *none])
    third = _by_sig(tmp_path / "t3")
    assert rc == 0 and third[warn]["delta"] == "same"


def test_join_with_a_missing_or_foreign_file_is_one_line(tmp_path, capsys):
    find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    (tmp_path / "bogus.json").write_text('{"clusters": 3}')
    for prev in (tmp_path / "nothing", tmp_path / "bogus.json"):
        rc = main(["triage", str(tmp_path / "c"), "-o", str(tmp_path / "o"), "--join", str(prev)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and str(prev) in err


def test_a_cause_already_in_the_regression_corpus_is_known_and_fails_nothing(tmp_path, capsys):
    find(tmp_path / "c", [("sim:g2", "sim:g2s-literal:S8")], [seed("d24-sketch-ownership.yaml")])
    rc = main(["triage", str(tmp_path / "c"), "-o", str(tmp_path / "t"), "--format", "junit", "--fail-on-new"])
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "t" / "triage.json").read_text())
    s8 = [c for c in doc["clusters"] if c["id"] == "S8"]
    assert rc == 0 and s8 and s8[0]["delta"] == "new"
    assert s8[0]["seen_in"].startswith("corpus/regressions/") and s8[0]["seen_in"].endswith(".yaml")
    assert re.search(r"^S8\s+known\s", out, re.M)
    assert "<failure" not in (tmp_path / "t" / "junit.xml").read_text()
