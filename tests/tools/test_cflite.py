"""The ClusterFuzzLite integration, the parts that take seconds: workflow and script lint, what
the workflows ask of the engine, target discovery, and crash states of planted findings as
ClusterFuzz's own parser reads them from the un-bundled target.  `make cflite-check` builds and
runs the bundled targets (tools/cflite_check.py)."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

_path = Path(__file__).resolve().parents[2] / "tools" / "cflite_check.py"
_spec = importlib.util.spec_from_file_location("cflite_check", _path)
cflite_check = importlib.util.module_from_spec(_spec)
sys.modules["cflite_check"] = cflite_check
_spec.loader.exec_module(cflite_check)

REPO = cflite_check.REPO
WORKFLOWS = REPO / ".github" / "workflows"
CFL = "google/clusterfuzzlite/actions/"


def _workflow(name: str) -> dict:
    with open(WORKFLOWS / name, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    doc["on"] = doc.pop(True, doc.get("on"))          # YAML 1.1 reads the key `on` as true
    return doc


def _steps(doc: dict) -> list[dict]:
    return [s for job in doc["jobs"].values() for s in job["steps"]]


def test_workflows_and_scripts_pass_actionlint_and_shellcheck(tmp_path):
    linted = cflite_check.lint(tmp_path)
    assert ".clusterfuzzlite/build.sh" in linted and ".github/workflows/pfndiff_fuzz.yml" in linted


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in glob.glob(str(WORKFLOWS / "*.yml"))))
def test_actions_are_pinned_and_permissions_least(name):
    doc = _workflow(name)
    assert doc["permissions"] == {}, "no permission at workflow level; jobs ask for what they use"
    for job in doc["jobs"].values():
        for perm, level in job["permissions"].items():
            assert level == "read" or (perm, level) == ("security-events", "write"), (name, perm, level)
        for step in job["steps"]:
            if "uses" in step:
                assert re.search(r"@[0-9a-f]{40}$", step["uses"]), f"{name}: {step['uses']} is not pinned to a commit"


@pytest.mark.parametrize("name,modes", [("cflite_pr.yml", ["code-change"]), ("cflite_batch.yml", ["batch"]),
                                        ("cflite_cron.yml", ["prune", "coverage"]), ("cflite_build.yml", [])])
def test_clusterfuzzlite_workflows(name, modes):
    steps = [s for s in _steps(_workflow(name)) if s.get("uses", "").startswith(CFL)]
    builds = [s for s in steps if "/build_fuzzers@" in s["uses"]]
    runs = [s for s in steps if "/run_fuzzers@" in s["uses"]]
    assert builds and all(s["with"]["language"] == "python" for s in steps)      # to both actions
    assert [s["with"]["mode"] for s in runs] == modes
    if "coverage" in modes:
        assert any(s["with"].get("sanitizer") == "coverage" for s in builds)


def test_the_plain_workflow_fuzzes_joins_uploads_sarif_and_fails_on_new_clusters():
    doc = _workflow("pfndiff_fuzz.yml")
    assert "schedule" in doc["on"]
    job = next(iter(doc["jobs"].values()))
    assert job["permissions"]["security-events"] == "write"
    steps = job["steps"]
    text = "\n".join(s.get("run", "") for s in steps)
    assert "make fuzz" in text and "pfndiff triage artifacts" in text
    assert "--join triage-previous" in text and "--fail-on-new" in text and "sarif" in text
    sarif = next(s for s in steps if "codeql-action/upload-sarif@" in s.get("uses", ""))
    assert sarif["with"]["sarif_file"] == "triage-out/triage.sarif"
    assert "exit 1" in steps[-1]["run"]
    assert any("actions/cache/restore@" in s.get("uses", "") for s in steps)
    assert any("actions/cache/save@" in s.get("uses", "") for s in steps)


def test_project_files():
    with open(REPO / ".clusterfuzzlite" / "project.yaml", encoding="utf-8") as fh:
        assert yaml.safe_load(fh)["language"] == "python"
    docker = (REPO / ".clusterfuzzlite" / "Dockerfile").read_text()
    assert "FROM gcr.io/oss-fuzz-base/base-builder-python:v1" in docker
    assert "COPY .clusterfuzzlite/build.sh $SRC/" in docker


def test_every_target_is_either_fuzzed_continuously_or_a_baseline():
    from fuzz.targets import BASELINES, CONTINUOUS
    stems = sorted(Path(p).stem for p in glob.glob(str(REPO / "fuzz" / "targets" / "*_target.py")))
    assert sorted([*CONTINUOUS, *BASELINES]) == stems
    out = subprocess.run([sys.executable, "-m", "fuzz.targets"], cwd=REPO, capture_output=True, text=True, check=True)
    assert [line.split() for line in out.stdout.splitlines()] == [[t, c] for t, c in CONTINUOUS.items()]


@pytest.mark.parametrize("stem", ["diff_target"])
def test_entry_files_take_the_coverage_stub(stem):
    """Coverage builds put code before the entry file's first line: no `from __future__` there."""
    text = (REPO / "fuzz" / "targets" / f"{stem}.py").read_text()
    compile("import atexit\n" + text, f"{stem}.py", "exec")


def test_planted_findings_give_one_crash_state_per_root_cause(tmp_path):
    planted = cflite_check.planted_inputs()
    assert planted[0].cause == planted[1].cause != planted[2].cause
    cmd, env = cflite_check.unbundled()
    crashes = cflite_check.check_planted(cmd, "diff_target", env, planted, tmp_path)
    assert [c["crash_type"] for c in crashes] == ["Uncaught exception"] * 3
    assert crashes[0]["crash_state"] == crashes[1]["crash_state"] == planted[0].state
    assert crashes[2]["crash_state"] == planted[2].state != planted[0].state
