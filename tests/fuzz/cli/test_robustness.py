"""Property: whatever bytes or YAML a file holds, every reading command (check, run, diff, triage,
repro, corpus decode) ends with exit status 0, 1 or 2, never with an exception; a refusal is one
line on stderr; and each run stays within a memory budget (tracemalloc peak) and a CPU budget
(an ITIMER_PROF timer, so a slow shared machine cannot make it fail; only real work counts).

Inputs: random byte strings, mutated seed scenarios (random values of random types in every
field, deleted and duplicated entries), random YAML-ish text, alias bombs of random shape, and
mutated sidecars, triage reports (--join) and catalogues.  Examples are derandomised so that ``make test`` is
repeatable; set ``PFNDIFF_ROBUSTNESS_EXAMPLES`` for a longer exploration.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import json
import os
import shutil
import signal
import tempfile
import tracemalloc
from typing import Any

import yaml
from findings import D10_PAIR, SEEDS, d10_other, find
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_input import bomb_text

from fuzz.cli import main

MEMORY_BUDGET = 200 << 20            # bytes, tracemalloc peak per command
CPU_BUDGET = 30.0                    # seconds of this process's CPU per command
EXAMPLES = int(os.environ.get("PFNDIFF_ROBUSTNESS_EXAMPLES", "4"))
PAIR = ["--left", "sim:g2", "--right", "sim:g2s-literal"]
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class OverBudget(Exception):
    pass


def _cpu_alarm(signum, frame):
    raise OverBudget(f"a command used more than {CPU_BUDGET:g} s of CPU")


def call(argv: list[str]) -> tuple[int, str]:
    """Run one command in-process; fail on any exception, on exit statuses other than 0/1/2,
    on more than one stderr line for a refusal, and over the memory or CPU budget."""
    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGPROF, _cpu_alarm)
    signal.setitimer(signal.ITIMER_PROF, CPU_BUDGET)
    tracemalloc.start()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
    text = err.getvalue()
    assert rc in (0, 1, 2), (argv, rc, text)
    assert "Traceback" not in text, text
    if rc == 2:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert len(lines) == 1, (argv, text)
    assert peak < MEMORY_BUDGET, (argv, peak)
    return rc, text


def every_command(path: str, work: str) -> None:
    """The six readers on one file (in a directory of its own, for triage)."""
    call(["check", path])
    call(["run", path, "-b", "sim:g3"])
    call(["diff", path, "-l", "sim:g2", "-r", "sim:g2s-literal", "--exit-zero"])
    call(["triage", os.path.dirname(path), "-o", os.path.join(work, "out"), "--no-minimize", "--runs", "1", *PAIR])
    call(["repro", path, *PAIR, "--exit-zero", "--no-color"])
    call(["corpus", "decode", path])


def with_file(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="pfndiff-robust-") as work:
        d = os.path.join(work, "in")
        os.makedirs(d)
        path = os.path.join(d, name)
        with open(path, "wb") as fh:
            fh.write(data)
        every_command(path, work)


# --- strategies ---------------------------------------------------------------------------------------

SEED_DOCS = [yaml.safe_load(open(f, encoding="utf-8")) for f in sorted(glob.glob(os.path.join(SEEDS, "*.yaml")))]

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["ram", "rw", "pfnmap", "present_rw", "sim:g3", "0x100", "lookup", "world", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def _slots(doc: Any, out: list) -> list:
    """Every (container, key) in a plain document."""
    if isinstance(doc, dict):
        for k in list(doc):
            out.append((doc, k))
            _slots(doc[k], out)
    elif isinstance(doc, list):
        for i in range(len(doc)):
            out.append((doc, i))
            _slots(doc[i], out)
    return out


@st.composite
def mutated(draw, docs: list[Any]) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc, [])
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["value", "delete", "duplicate", "retype"]))
        if action == "value":
            container[key] = draw(values)
        elif action == "delete":
            del container[key]
        elif action == "duplicate" and isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
        else:
            v = container[key]
            container[key] = [v] if not isinstance(v, list) else {"x": v}
    return doc


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8")


yaml_ish = st.text(alphabet=st.sampled_from(list("[]{}:,-&*!?|>#'\"\n \t0123456789abxyz.~%@`\\")), max_size=160)


# --- properties ---------------------------------------------------------------------------------------

@SETTINGS
@given(st.binary(max_size=1024))
def test_random_bytes(data):
    with_file("input", data)


@SETTINGS
@given(mutated(SEED_DOCS))
def test_mutated_seed_scenarios(doc):
    with_file("s.yaml", _dump(doc))


@SETTINGS
@given(st.one_of(yaml_ish.map(lambda t: t.encode("utf-8")),
                 st.builds(bomb_text, st.integers(1, 14), st.integers(1, 14)).map(str.encode),
                 st.tuples(st.builds(bomb_text, st.integers(2, 10), st.integers(2, 10)), st.integers(0, 400))
                 .map(lambda t: t[0][: t[1]].encode())))
def test_yaml_text_and_alias_bombs(data):
    with_file("s.yaml", data)


_FINDING: dict[str, Any] = {}


def _finding() -> tuple[bytes, str, Any]:
    """A real finding of the engine: its raw bytes, name and sidecar (made once)."""
    if not _FINDING:
        with tempfile.TemporaryDirectory(prefix="pfndiff-robust-") as d:
            path = find(d, [D10_PAIR], [d10_other()])[0]
            with open(path, "rb") as fh:
                _FINDING["data"] = fh.read()
            with open(path + ".yaml", encoding="utf-8") as fh:
                _FINDING["sidecar"] = yaml.safe_load(fh)
            _FINDING["name"] = os.path.basename(path)
    return _FINDING["data"], _FINDING["name"], _FINDING["sidecar"]


@SETTINGS
@given(st.data())
def test_mutated_sidecars(data):
    raw, name, sidecar = _finding()
    doc = data.draw(mutated([sidecar]))
    with tempfile.TemporaryDirectory(prefix="pfndiff-robust-") as work:
        d = os.path.join(work, "in")
        os.makedirs(d)
        path = os.path.join(d, name)
        with open(path, "wb") as fh:
            fh.write(raw)
        with open(path + ".yaml", "wb") as fh:
            fh.write(_dump(doc))
        call(["triage", d, "-o", os.path.join(work, "out"), "--no-minimize", "--runs", "1"])
        call(["repro", path, "--exit-zero", "--no-color"])
        call(["corpus", "decode", path])
        shutil.rmtree(d)


CATALOGUE = yaml.safe_load(open(os.path.join(os.path.dirname(SEEDS), "..", "oracles", "catalogue.yaml"),
                                encoding="utf-8"))


@SETTINGS
@given(mutated([CATALOGUE]))
def test_mutated_catalogues(doc):
    with tempfile.TemporaryDirectory(prefix="pfndiff-robust-") as work:
        path = os.path.join(work, "catalogue.yaml")
        with open(path, "wb") as fh:
            fh.write(_dump(doc))
        call(["diff", os.path.join(SEEDS, "d10-sketch-warn-seq0.yaml"), "-l", "sim:g2", "-r", "sim:g2s-literal",
              "--exit-zero", "--catalogue", path])


@st.composite
def mutated_entries(draw) -> Any:
    """A catalogue with one entry given random values in random fields (the other entries kept)."""
    doc = copy.deepcopy(CATALOGUE)
    i = draw(st.integers(0, len(doc["entries"]) - 1))
    doc["entries"][i] = draw(mutated([doc["entries"][i]]))
    return doc


@SETTINGS
@given(mutated_entries())
def test_mutated_catalogue_entries(doc):
    test_mutated_catalogues.hypothesis.inner_test(doc)


def _finding_dir(work: str) -> str:
    """An artifacts directory in ``work`` holding the real finding and its sidecar."""
    raw, name, sidecar = _finding()
    d = os.path.join(work, "in")
    os.makedirs(d)
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(raw)
    with open(os.path.join(d, name + ".yaml"), "wb") as fh:
        fh.write(_dump(sidecar))
    return d


def _report() -> dict[str, Any]:
    """A real triage.json (of the real finding), made once."""
    if "report" not in _FINDING:
        with tempfile.TemporaryDirectory(prefix="pfndiff-robust-") as work:
            d = _finding_dir(work)
            call(["triage", d, "-o", os.path.join(work, "out"), "--no-minimize"])
            with open(os.path.join(work, "out", "triage.json"), encoding="utf-8") as fh:
                _FINDING["report"] = yaml.safe_load(fh)          # JSON is YAML
    return _FINDING["report"]


@SETTINGS
@given(st.data())
def test_mutated_join_reports(data):
    doc = data.draw(mutated([_report()]))
    with tempfile.TemporaryDirectory(prefix="pfndiff-robust-") as work:
        d = _finding_dir(work)
        prev = os.path.join(work, "prev.json")
        with open(prev, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, default=str)
        call(["triage", d, "-o", os.path.join(work, "out"), "--no-minimize", "--join", prev])
