"""The shipped JSON schemas are valid, accept everything pfndiff itself writes (engine sidecars,
triage reports, the bundled corpus), and name the field and line of what they refuse."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml
from findings import D10_PAIR, REGRESSIONS, SEEDS, d10_other, find

from fuzz.cli import main
from fuzz.inputs import schema
from fuzz.judging.artifacts import load_corpus_entry, read_sidecar
from kvmsim import ScenarioError


@pytest.mark.parametrize("name", schema.SCHEMAS)
def test_schemas_are_valid_draft_2020_12(name):
    assert schema.validator(name) is not None                # check_schema ran


def test_what_pfndiff_writes_matches_its_schemas(tmp_path, capsys):
    paths = find(tmp_path / "a", [D10_PAIR], [d10_other()])
    for p in paths:
        read_sidecar(p + ".yaml")
    assert main(["triage", str(tmp_path / "a"), "-o", str(tmp_path / "out"), "--no-minimize"]) == 0
    capsys.readouterr()
    schema.check("triage-report", json.loads((tmp_path / "out" / "triage.json").read_text()), "triage.json")
    for f in sorted(glob.glob(os.path.join(SEEDS, "*.yaml")) + glob.glob(os.path.join(REGRESSIONS, "*.yaml"))):
        load_corpus_entry(f)


def test_a_refusal_names_field_and_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("world: {}\nops: []\ntags:\n  left: sim:g2\n  pairs:\n    - 7\n")
    with pytest.raises(ScenarioError) as e:
        load_corpus_entry(str(p))
    assert str(e.value) == f"{p}:6: corpus entry field 'tags.pairs.0' must be a string, got 7"


def test_a_join_report_of_the_wrong_shape_is_one_line(tmp_path, capsys):
    find(tmp_path / "a", [D10_PAIR], [d10_other()])
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"format": "pfndiff-triage/1", "clusters": [{"id": "x", "count": "many"}]}))
    rc = main(["triage", str(tmp_path / "a"), "-o", str(tmp_path / "out"), "--join", str(prev)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(prev) in err and "triage report" in err
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    rc = main(["triage", str(tmp_path / "a"), "-o", str(tmp_path / "out"), "--join", str(deep)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(deep) in err
    assert not (tmp_path / "out").exists()                       # a bad --join fails before -o is touched


def test_yaml_sidecar_of_another_shape(tmp_path):
    p = tmp_path / "crash.yaml"
    p.write_text(yaml.safe_dump({"signature": "s", "host": "here"}))
    with pytest.raises(ScenarioError, match=r"crash.yaml:1: sidecar field 'host' must be a mapping, got 'here'"):
        read_sidecar(str(p))
