#!/usr/bin/env python3
"""Decoded-and-judged results of many random inputs, as one digest per input, so that a change
meant to make the check cheaper can be shown to change nothing it computes: run it before the
change with ``--write``, after it with ``--against``.  Inputs are the seed corpus and seeded
random mutations of it (flips, inserts, deletes, splices, random tails), the kinds of bytes
libFuzzer feeds the target, judged by the campaign's checker.  Each digest covers the decoded
scenario, every trace, every divergence (in the order found), what each pair compared and the
semantic features; a last one the signatures counted, with their first inputs and root causes.  Not part of
the test run.

    .venv/bin/python bench/identity.py --n 20000 [--inputs CAMPAIGN_CORPUS] --write before.txt
    .venv/bin/python bench/identity.py --n 20000 --against before.txt
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys

from fuzz.corpus.seeds import OUT, build_corpus
from fuzz.judging.engine import Checker, parse_pairs
from fuzz.judging.judge import Judgement
from fuzz.targets.diff_target import semantic_observer
from kvmsim.scenario import Scenario, dump_scenario


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One random mutation of a random seed, a few steps deep."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if k == 0 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif k == 1:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif k == 2 and data:
            del data[pos:pos + rng.randint(1, 4)]
        elif k == 3:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            data[pos:] = other[cut:]
        elif k == 4:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif data:
            data[min(pos, len(data) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    return bytes(data)


def inputs(n: int, seed: int, corpus: str, extra: tuple[str, ...] = ()) -> list[bytes]:
    """The seed corpus, every file of the ``extra`` directories (a campaign's corpus, say), then
    mutations of the seeds up to ``n`` inputs."""
    seeds = [open(os.path.join(corpus, f), "rb").read() for f in sorted(os.listdir(corpus))]
    seeds += [open(os.path.join(d, f), "rb").read() for d in extra for f in sorted(os.listdir(d))]
    rng = random.Random(seed)
    out = list(seeds[:n])
    while len(out) < n:
        out.append(mutate(rng, seeds))
    return out


def digest(sc: Scenario, j: Judgement, features: list[object]) -> str:
    h = hashlib.sha1()
    for part in (repr(sc), repr(dump_scenario(sc)),
                 repr({n: t.to_dict() for n, t in j.traces.items()}),
                 repr([d.to_dict() for d in j.found]), repr([d.signature for d in j.divs]),
                 repr({p: (a.to_dict(), b.to_dict()) for p, (a, b) in j.compared.items()}),
                 repr({p: c.to_dict() for p, c in j.coverage.items()}), repr(features)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class _Features:
    """Collects what the semantic observer feeds libFuzzer for one input."""

    def __init__(self) -> None:
        self.got: list[object] = []

    def hit(self, f: object) -> None:
        self.got.append(f)


def run(pairs: str, data: list[bytes]) -> list[str]:
    """One digest per input as the campaign's checker sees it (its memos on), then one of the
    signatures it counted."""
    checker = Checker(parse_pairs(pairs), None)
    feats = _Features()
    features = semantic_observer(feats)      # type: ignore[arg-type]
    out: list[str] = []

    def observe(sc: Scenario, j: Judgement) -> None:
        feats.got = []
        features(sc, j)
        out.append(digest(sc, j, feats.got))

    checker.observe = observe
    for d in data:
        checker.check(d)
    out.append(hashlib.sha1(repr(sorted((s, st.count, st.first_exec, st.first_input, st.known, st.cause)
                                        for s, st in checker.stats.items())).encode()).hexdigest())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pairs", default="sim:g2~sim:g3;sim:g2~sim:g2s-literal")
    ap.add_argument("--inputs", action="append", default=[], metavar="DIR",
                    help="also every file of DIR, and mutations of them (repeatable)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE")
    g.add_argument("--against", metavar="FILE")
    args = ap.parse_args()
    build_corpus()
    got = run(args.pairs, inputs(args.n, args.seed, os.path.join(OUT, "diff"), tuple(args.inputs)))
    if args.write:
        with open(args.write, "w") as f:
            f.write("".join(x + "\n" for x in got))
        print(f"{len(got)} digests written to {args.write}")
        return
    want = open(args.against).read().split()
    diff = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    if len(got) != len(want) or diff:
        sys.exit(f"identity: {len(diff)} of {len(got)} inputs differ (first {diff[:5]}), counts {len(got)}/{len(want)}")
    print(f"identity: all {len(got)} inputs decode and judge identically")


if __name__ == "__main__":
    main()
