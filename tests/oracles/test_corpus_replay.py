"""Replay every seed of corpus/seeds and check it shows exactly its tagged divergences.

Tags (written with the seeds): ``left``/``right`` + ``known`` (catalogue spec ids the pair's
divergences must match) + ``bugs`` (the seed must produce unknown findings); or ``equal`` (+
``backends``): no divergence on any pair of those backends.  "Ambient" catalogue entries (A/D
bookkeeping D17, G3's pins D7) accompany whole classes of ops and are allowed in addition.
``expect`` rows are checked against the raw traces.
"""

from __future__ import annotations

import glob
import itertools
import os

import pytest

from kvmsim import get_backend, load_scenario
from oracles.catalogue import load_catalogue
from oracles.diff import compare

SEEDS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "seeds", "*.yaml")))
ALL_SIM = ["sim:g1", "sim:g2", "sim:g2s", "sim:g2f", "sim:g3"]
CAT = load_catalogue()
AMBIENT = {e.spec for e in CAT.entries if e.ambient}


def _entry(eid: str):
    return CAT.by_id[eid.replace(" (cascade)", "")]


def _known_specs(divs) -> set[str]:
    return {_entry(e).spec for d in divs for e in d.explained.values()}


def _raw(trace, op: int, field: str):
    rec = trace.records[op]
    level, _, key = field.partition(".")
    if level == "fault":                            # an access's fault path: its last fault's field
        return (rec.fault or [{}])[-1].get(key)
    part = getattr(rec, level) or {}
    return part.get(key)


def _pairs(sc):
    t = sc.tags
    if "equal" in t:
        return list(itertools.combinations(t.get("backends", ALL_SIM), 2))
    return [(t["left"], t["right"])]


CASES = [(p, pair) for p in SEEDS for pair in _pairs(load_scenario(p))]


@pytest.mark.parametrize("path,pair", CASES, ids=[f"{os.path.basename(p)}:{a}~{b}" for p, (a, b) in CASES])
def test_seed_shows_exactly_its_tagged_divergences(path, pair):
    sc = load_scenario(path)
    tags = sc.tags
    left, right = pair
    lt, rt = get_backend(left).run(sc), get_backend(right).run(sc)
    divs = compare(sc, lt, rt, CAT)
    unknown = [d for d in divs if not d.known]
    specs = _known_specs(divs)
    report = "\n".join(f"  op {d.index} {d.signature} known={d.known} {d.explained}" for d in divs)
    if "equal" in tags:
        assert not unknown, f"expected-equal seed diverges:\n{report}"
        assert specs <= AMBIENT, f"expected-equal seed shows catalogued changes {specs - AMBIENT}:\n{report}"
    else:
        tagged = set(tags.get("known", []))
        assert specs - AMBIENT == tagged - AMBIENT, \
            f"known divergences {sorted(specs)} != tagged {sorted(tagged)}:\n{report}"
        if tags.get("bugs"):
            assert unknown, f"bug seed {tags['bugs']} produced no finding:\n{report}"
        else:
            assert not unknown, f"unexpected findings:\n{report}"
    for row in tags.get("expect", []):
        if "equal" in tags:
            continue
        assert _raw(lt, row["op"], row["field"]) == row["left"], (row, "left")
        assert _raw(rt, row["op"], row["field"]) == row["right"], (row, "right")


@pytest.mark.parametrize("path", [p for p in SEEDS if "equal" in load_scenario(p).tags], ids=os.path.basename)
def test_expected_equal_seed_values(path):
    sc = load_scenario(path)
    for name in sc.tags.get("backends", ALL_SIM):
        t = get_backend(name).run(sc)
        for row in sc.tags.get("expect", []):
            assert _raw(t, row["op"], row["field"]) == row["left"], (name, row)


def test_bug_seeds_are_never_catalogued():
    """The sketch's bugs surface as findings on every seed that shows them."""
    for path in SEEDS:
        sc = load_scenario(path)
        if not sc.tags.get("bugs"):
            continue
        lt, rt = get_backend(sc.tags["left"]).run(sc), get_backend(sc.tags["right"]).run(sc)
        assert any(not d.known for d in compare(sc, lt, rt, CAT)), path
