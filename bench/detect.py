#!/usr/bin/env python3
"""Time to detection: from an empty corpus, one core, how long until each distinct signature's
first artifact, per backend pair.  Each literal-sketch bug of spec §4.3 is measured on its own
pair (the intended sketch vs the sketch with only that quirk; S5 needs S4 to be reachable, so it
is measured as S4,S5 vs S4), and every generation against itself must give zero diff findings.
Each is measured in every feedback mode asked for (default: semantic and bytecode), one after
the other, so that both see the same machine load.  Not part of the test run.

    .venv/bin/python bench/detect.py [--time 120] [--self-time 20] [--only S8] [--feedback semantic]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import yaml

from fuzz.campaigns.campaign import Campaign
from fuzz.targets.atheris_compat import FEEDBACK_ENV, FEEDBACK_MODES

BUG_PAIRS = {
    "S2": ("sim:g2s", "sim:g2s-literal:S2"),
    "S4": ("sim:g2s", "sim:g2s-literal:S4"),
    "S5": ("sim:g2s-literal:S4", "sim:g2s-literal:S4,S5"),
    "S6": ("sim:g2s", "sim:g2s-literal:S6"),
    "S8": ("sim:g2s", "sim:g2s-literal:S8"),
}
SELF = ["sim:g1", "sim:g2", "sim:g2s", "sim:g2f", "sim:g3"]


def campaign(pair: tuple[str, str], seconds: int, feedback: str) -> list[tuple[float, str, str]]:
    """(seconds to first artifact, signature, input) for every distinct signature of the run."""
    os.environ[FEEDBACK_ENV] = feedback                     # the campaign's targets inherit it
    with tempfile.TemporaryDirectory() as tmp:
        c = Campaign([pair], seconds, 1, os.path.join(tmp, "corpus"), os.path.join(tmp, "art"), [],
                     status_every=10**9, out=lambda s: None)
        c.run()
        found = []
        art = os.path.join(tmp, "art")
        for n in sorted(os.listdir(art)):
            if n.startswith("crash-") and n.endswith(".yaml"):
                with open(os.path.join(art, n), encoding="utf-8") as fh:
                    side = yaml.safe_load(fh)
                for s in side["signatures"]:
                    found.append((side["found_after_s"], s["signature"], n[:-5]))
        return sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=int, default=120, help="budget per bug pair (seconds)")
    ap.add_argument("--self-time", type=int, default=20, help="budget per generation-vs-itself pair")
    ap.add_argument("--only", action="append", default=[], help="only these quirks (repeatable)")
    ap.add_argument("--feedback", action="append", choices=FEEDBACK_MODES,
                    help="feedback modes to measure (repeatable; default: semantic and bytecode)")
    ap.add_argument("--no-self", action="store_true", help="skip the generation-vs-itself runs")
    args = ap.parse_args()
    modes = args.feedback or ["semantic", "bytecode"]
    ok = True
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)")
    for quirk, pair in BUG_PAIRS.items():
        if args.only and quirk not in args.only:
            continue
        for mode in modes:
            found = campaign(pair, args.time, mode)
            print(f"\n{quirk} [{mode}]: {pair[0]} vs {pair[1]} ({args.time}s from an empty corpus): "
                  f"{len(found)} signature(s), first after {found[0][0]:.1f}s" if found else
                  f"\n{quirk} [{mode}]: {pair[0]} vs {pair[1]} ({args.time}s from an empty corpus): NOT FOUND")
            for t, sig, _name in found:
                print(f"  {t:7.1f}s  {sig}")
            ok = ok and bool(found)
    if not args.only and not args.no_self:
        for gen in SELF:
            for mode in modes:
                found = campaign((gen, gen), args.self_time, mode)
                diff = [f for f in found if f[1].startswith("diff")]
                inv = [f for f in found if not f[1].startswith("diff")]
                print(f"\n{gen} vs itself [{mode}] ({args.self_time}s): {len(diff)} diff finding(s), "
                      f"{len(inv)} invariant finding(s)")
                for t, sig, _ in found:
                    print(f"  {t:7.1f}s  {sig}")
                ok = ok and not diff
    print(f"\nload: {os.getloadavg()[0]:.2f}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
