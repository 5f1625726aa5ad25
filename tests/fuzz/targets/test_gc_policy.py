"""The target's garbage-collection policy (fuzz.targets.gc_policy) and its premise: judging
creates no reference cycles, so with automatic collection off, reference counting alone frees
what the checker's memo drops."""

from __future__ import annotations

import gc
import glob
import os
import random
import time

import pytest

from fuzz.campaigns.campaign import DEFAULT_PAIRS
from fuzz.inputs.codec import encode
from fuzz.judging.engine import Checker
from fuzz.targets.gc_policy import MAX_SHARE, PeriodicCollector
from kvmsim import load_scenario
from kvmsim.checkout import ROOT

SEEDS = sorted(glob.glob(os.path.join(ROOT, "corpus", "seeds", "*.yaml")))
# Every simulated generation, the literal sketch with all and with some quirks.
PAIRS = list(DEFAULT_PAIRS) + [("sim:g1", "sim:g2f"), ("sim:g1", "sim:g3")]


def _mutants(seeds: list[bytes], n: int, rng: random.Random) -> list[bytes]:
    """Byte flips, inserts, deletes and splices of the seeds, as libFuzzer makes them."""
    out = []
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data) + 1)
            k = rng.randrange(4)
            if k == 0 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif k == 1:
                data[pos:pos] = bytes([rng.randrange(256)])
            elif k == 2:
                del data[pos:pos + rng.randint(1, 4)]
            else:
                other = rng.choice(seeds)
                data[pos:] = other[rng.randrange(len(other) + 1):]
        out.append(bytes(data))
    return out


@pytest.fixture
def no_automatic_gc():
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    yield
    gc.set_debug(0)
    gc.garbage.clear()
    if was:
        gc.enable()


@pytest.mark.slow
def test_judging_the_corpus_and_its_mutants_creates_no_reference_cycles(no_automatic_gc):
    seeds = [encode(load_scenario(p)) for p in SEEDS]
    inputs = seeds + _mutants(seeds, 1500, random.Random(7))
    checker = Checker(PAIRS, None)
    checker.check(seeds[0])
    gc.collect()                                # set-up's own garbage (entry-point lookups) gone
    for data in inputs:
        checker.check(data)
    checker._memo.clear()                       # what the memo holds is not garbage yet: drop it too
    checker._by_records.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)              # keep what a collection finds, to name it
    gc.collect()
    found = sorted({type(o).__qualname__ for o in gc.garbage})
    assert not gc.garbage, f"{len(gc.garbage)} objects in reference cycles, of types {found[:12]}"
    assert len(checker.stats) > 0               # the inputs did reach divergences


def test_the_collector_turns_automatic_collection_off_and_collects_at_its_interval():
    was = gc.isenabled()
    try:
        c = PeriodicCollector(interval=3600)
        c.start()
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0       # what existed at start is out of the collector's sight
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        c.tick()                                # not due: nothing collected
        assert c.collections == 0
        c.interval = 0
        before = time.monotonic()
        c.collect()                             # due now: the cycle is found
        assert c.collections == 1 and c.freed >= 1 and c.last_s > 0
        # with no interval left, the next one still waits until this one is MAX_SHARE of the time
        assert c._due >= before + c.last_s / MAX_SHARE
        c._due = 0.0
        c.tick()
        assert c.collections == 2
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
