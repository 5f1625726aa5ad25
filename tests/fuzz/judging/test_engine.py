"""The fuzz engine: unknown divergences become atomic artifacts (input + sidecar), known ones
are only counted, a model crash is a finding, and the same signature is written once."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from fuzz.inputs.codec import encode
from fuzz.judging import artifacts as art
from fuzz.judging.engine import Checker, parse_pairs
from kvmsim import load_scenario
from kvmsim.checkout import ROOT

SEEDS = os.path.join(ROOT, "corpus", "seeds")


def seed_bytes(name: str) -> bytes:
    return encode(load_scenario(os.path.join(SEEDS, name)))


def artifacts(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("crash-"))


def test_unknown_divergence_becomes_an_artifact_with_a_complete_sidecar(tmp_path):
    c = Checker([("sim:g2", "sim:g2s-literal:S8")], str(tmp_path))
    data = seed_bytes("d24-sketch-ownership.yaml")
    divs = c.check(data)
    assert any(not d.known for d in divs)
    names = artifacts(tmp_path)
    assert len(names) == 2 and (tmp_path / names[0]).read_bytes() == data
    side = yaml.safe_load((tmp_path / (names[0] + ".yaml")).read_text())
    for key in ("signature", "traces", "first_differing_op", "spec_ids", "backend_versions", "host", "scenario",
                "observations", "field"):
        assert key in side, key
    assert "S8" in side["spec_ids"] and side["host"]["kernel"]
    assert set(side["traces"]) <= {"sim:g2", "sim:g2s-literal:S8"}
    assert side["first_differing_op"]["index"] == 0
    c.check(data)                                   # same signature again: counted, not rewritten
    assert artifacts(tmp_path) == names
    assert any(st.count == 2 for st in c.stats.values())
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_known_divergences_are_counted_not_reported(tmp_path):
    c = Checker([("sim:g1", "sim:g3")], str(tmp_path))
    divs = c.check(seed_bytes("d04-remapped-refcounted.yaml"))
    assert divs and all(d.known for d in divs)
    assert artifacts(tmp_path) == []
    assert all(st.known for st in c.stats.values())
    cov = c.snapshot()["compared"]["sim:g1~sim:g3"]
    assert cov["compared"] == cov["ops"] == cov["left"] == cov["right"] > 0


def test_a_model_exception_is_a_finding(tmp_path, monkeypatch):
    c = Checker([("sim:g2", "sim:g3")], str(tmp_path))

    def boom(sc):
        raise RuntimeError("model bug")
    monkeypatch.setattr(c.backends["sim:g3"], "run", boom)
    divs = c.check(b"\x01")
    assert [d.oracle for d in divs if not d.known] == ["exception"]
    assert artifacts(tmp_path)


@pytest.mark.parametrize("gen", ["sim:g1", "sim:g2", "sim:g2s", "sim:g2f", "sim:g3"])
def test_a_generation_never_diverges_from_itself(gen):
    c = Checker([(gen, gen)], None)
    for path in sorted(glob.glob(os.path.join(SEEDS, "*.yaml"))):
        divs = c.check(encode(load_scenario(path)))
        assert not [d for d in divs if d.oracle.startswith("diff") and not d.known], path


def test_parse_pairs():
    assert parse_pairs("sim:g2~sim:g3; sim:g1,sim:g2") == [("sim:g2", "sim:g3"), ("sim:g1", "sim:g2")]
    with pytest.raises(ValueError):
        parse_pairs("sim:g2")


def test_two_workers_claiming_signatures_of_one_input_both_stay_in_its_sidecar(tmp_path):
    """Two workers judge one input at once (both run the seeds): each claims some of its
    signatures, and the one that writes the sidecar second must extend it, not replace it."""
    data = seed_bytes("d24-sketch-ownership.yaml")
    pair = [("sim:g2", "sim:g2s-literal")]
    sigs = sorted({d.sig_id for d in Checker(pair, None).check(data) if not d.known})
    assert len(sigs) >= 2, sigs
    marker = tmp_path / art.SIGNATURE_DIR / sigs[-1]
    marker.parent.mkdir()
    marker.write_text("crash-other\n")              # worker B's claim of the last one came first ...
    Checker(pair, str(tmp_path)).check(data)        # ... so worker A writes the sidecar without it
    marker.unlink()                                 # (B's claim, replayed for real:) B writes after A
    Checker(pair, str(tmp_path)).check(data)
    (name,) = [n for n in artifacts(tmp_path) if n.endswith(".yaml")]
    side = art.read_sidecar(str(tmp_path / name))
    assert sorted(s["id"] for s in side["signatures"]) == sigs == sorted(os.listdir(tmp_path / art.SIGNATURE_DIR))


def test_counts_of_repeated_judgements_are_those_of_judging_every_input_afresh(tmp_path):
    """A judgement shown again adds what it added the first time (``Repeat``): the signature counts,
    first inputs and coverage totals equal those of a checker that remembers nothing (memo 0: every
    input judged anew, every Repeat made afresh), and of one whose Repeats are evicted over and over."""
    seeds = [seed_bytes(n) for n in sorted(os.listdir(SEEDS)) if n.endswith(".yaml")][:12]
    inputs = seeds * 3 + seeds[::-1]
    pairs = [("sim:g2", "sim:g3"), ("sim:g2", "sim:g2s-literal")]
    got = []
    for size in (0, 2, 8192):
        c = Checker(pairs, None, memo_size=size, t0=0.0)
        for data in inputs:
            c.check(data)
        snap = c.snapshot()
        got.append((snap["compared"], {s: (st["count"], st["first_input"], st["first_exec"], st["known"])
                                       for s, st in snap["signatures"].items()}))
    assert got[0][1] and any(st[0] > 1 for st in got[0][1].values())
    assert got[0] == got[1] == got[2]

