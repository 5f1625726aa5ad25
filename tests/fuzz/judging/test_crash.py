"""Crash mode (fuzz.judging.crash): which inputs raise, from which frames, with which message."""

from __future__ import annotations

import glob
import os
import re
import traceback

import pytest

from fuzz.corpus.seeds import encode_seed, seed_files
from fuzz.inputs.codec import decode
from fuzz.judging import crash
from fuzz.judging.engine import Checker, parse_pairs
from kvmsim.checkout import ROOT
from oracles.diff import Divergence

REPO = ROOT
SEEDS = os.path.join(REPO, "corpus", "seeds")
LITERAL = "sim:g2~sim:g2s-literal"


def _raised(checker: Checker, data: bytes) -> crash.PfndiffFinding:
    with pytest.raises(crash.PfndiffFinding) as info:
        checker.check(data)
    return info.value


def _innermost_names(exc: BaseException, n: int = 3) -> list[str]:
    return [f.name for f in reversed(traceback.extract_tb(exc.__traceback__))][:n]


def test_an_unknown_divergence_raises_from_frames_named_after_it():
    checker = Checker(parse_pairs(LITERAL), None, crash=True)
    data = encode_seed(os.path.join(SEEDS, "d10-sketch-warn-seq0.yaml"))
    exc = _raised(checker, data)
    finding = crash.primary(Checker(parse_pairs(LITERAL), None).check(data))
    assert finding is not None and not finding.known
    cause, parts = crash.crash_parts(decode(data), finding)
    assert cause.id == "S2"
    assert _innermost_names(exc) == crash.crash_state(parts)
    text = str(exc)
    assert "\n" not in text
    assert finding.signature in text and f"id {finding.sig_id}" in text and "cause S2:" in text and "D10" in text
    assert "pfndiff repro crash-" in text


def test_known_divergences_never_raise_and_keep_going_is_the_default():
    data = encode_seed(os.path.join(SEEDS, "d05-remapped-refcount0.yaml"))
    divs = Checker(parse_pairs("sim:g1~sim:g3"), None, crash=True).check(data)     # D5: catalogued
    assert divs and all(d.known for d in divs)
    literal = encode_seed(os.path.join(SEEDS, "d10-sketch-warn-seq0.yaml"))
    assert any(not d.known for d in Checker(parse_pairs(LITERAL), None).check(literal))   # no raise


def test_the_primary_finding_is_the_first_unknown_in_report_order():
    def div(index: int, oracle: str, known: bool) -> Divergence:
        d = Divergence(oracle, "sim:a", "sim:b" if oracle.startswith("diff:") else "", index, "access",
                       ["f"], "f", {}, {}, {"f": "D1"} if known else {})
        d.signature = f"{oracle} {index}"
        return d
    divs = [div(3, "diff:api", False), div(1, "inv:x", False), div(1, "diff:api", True), div(2, "diff:api", False)]
    assert crash.primary(divs).signature == "inv:x 1"
    assert crash.primary([divs[2]]) is None


def test_one_crash_state_per_root_cause_made_of_valid_frame_names():
    inputs = seed_files() + sorted(glob.glob(os.path.join(REPO, "corpus", "regressions", "*.yaml")))
    by_state: dict[tuple[str, ...], str] = {}
    by_cause: dict[str, tuple[str, ...]] = {}
    for pairs in ("sim:g1~sim:g3;sim:g2~sim:g3;sim:g2f~sim:g3", LITERAL, "sim:g2s~sim:g2s-literal:S4,S5,S8"):
        checker = Checker(parse_pairs(pairs), None)
        for path in inputs:
            data = encode_seed(path)
            divs = checker.check(data)
            for d in divs:
                if d.known:
                    continue
                cause, parts = crash.crash_parts(decode(data), d, others=divs)
                state = tuple(crash.crash_state(parts))
                for name in state:
                    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{2,79}", name), name
                    assert "assert" not in name and not re.match(r"(new|New|free|main|abort)", name), name
                assert state[0].endswith(cause.id.replace("-", "_").replace("+", "_plus_"))
                assert by_state.setdefault(state, cause.id) == cause.id           # distinct causes, distinct states
                assert by_cause.setdefault(cause.id, state) == state              # one cause, one state
                assert not set(state) & {n for s, c in by_state.items() if c != cause.id for n in s}
    assert {"S2", "S6"} <= set(by_cause) and len(by_cause) >= 6


def test_frame_names_avoid_what_clusterfuzz_skips():
    assert crash.frame_name("x") == "at_x"
    assert crash.frame_name("main loop") == "at_main_loop"
    assert "assert" not in crash.frame_name("lockdep_assert_held")
    assert crash.frame_name("events []>[WARN:a]") == "events_to_WARN_a"
    long = crash.frame_name("a" * 200 + " 0123456789ab")
    assert len(long) == crash.LINE_CAP and long.endswith("_0123456789ab")


@pytest.mark.parametrize("value,on", [("1", True), ("yes", True), ("0", False), ("", False), ("off", False)])
def test_the_environment_variable(value, on):
    assert crash.enabled(value) is on


def test_a_campaign_keeps_going_unless_asked(monkeypatch):
    from fuzz.campaigns.campaign import Campaign
    monkeypatch.setenv(crash.ENV, "1")                       # an inherited setting never switches it on
    assert Campaign([("sim:g2", "sim:g3")]).env()[crash.ENV] == "0"
    assert Campaign([("sim:g2", "sim:g3")], crash=True).env()[crash.ENV] == "1"
