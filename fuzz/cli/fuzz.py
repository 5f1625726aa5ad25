"""``pfndiff fuzz``: a differential fuzzing campaign (see fuzz.campaigns.campaign)."""

from __future__ import annotations

import argparse
import os
import sys

from fuzz.campaigns.campaign import BUNDLED_CORPUS, DEFAULT_PAIRS, Campaign
from fuzz.cli.common import Commands, UsageError, output_dir, output_file
from fuzz.cli.report import report_after
from fuzz.corpus.seeds import NoSeeds, build_corpus
from fuzz.triage.known import causes_known
from fuzz.triage.minimize import minimised_size
from kvmsim import BackendError, get_backend


def _pair(text: str) -> tuple[str, str]:
    """``LEFT~RIGHT`` or ``LEFT,RIGHT``; ``sim:g2:sim:g3`` also works (split where both halves
    name backends)."""
    a, sep, b = text.partition("~")
    if sep and a and b:
        return a, b
    parts = text.split(":")
    for i in range(1, len(parts)):
        a, b = ":".join(parts[:i]), ":".join(parts[i:])
        try:
            get_backend(a)
            get_backend(b)
        except BackendError:
            continue
        return a, b
    a, sep, b = text.partition(",")
    if sep and a and b:
        return a, b
    raise UsageError(f"pfndiff fuzz: bad --pair {text!r} (expected LEFT~RIGHT, e.g. sim:g2~sim:g3)")


def cmd_fuzz(args: argparse.Namespace) -> int:
    pairs = _pairs(args)
    _check_available(pairs)
    if args.time <= 0 or args.jobs <= 0:
        raise UsageError("pfndiff fuzz: --time and --jobs must be positive")
    extra = _libfuzzer_flags(args.libfuzzer_args)
    output_dir(args.artifacts, "--artifacts")
    output_dir(args.corpus, "--corpus")
    seeds = [] if args.no_seeds else [_bundled_seeds()]
    for j in args.join:
        if not os.path.exists(j):
            print(f"pfndiff fuzz: --join {j}: no such file or directory", file=sys.stderr)
            return 2
    if args.report:
        output_file(args.report, "--report")                  # before the campaign, not after it
    c = Campaign(pairs, args.time, args.jobs, args.corpus, args.artifacts, seeds, extra,
                 status_every=args.status_every, crash=args.crash, join=list(args.join),
                 known=causes_known, shrink=minimised_size,
                 minimize=not args.no_minimize)
    rc = c.run()
    if args.report and rc in (0, 130):
        return report_after(args.report, [args.artifacts]) or rc
    return rc


def _pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--left/--right first, then each --pair; the default pairs when none is given."""
    pairs: list[tuple[str, str]] = [_pair(p) for p in args.pair]
    if args.left or args.right:
        if not (args.left and args.right):
            raise UsageError("pfndiff fuzz: --left and --right go together")
        pairs.insert(0, (args.left, args.right))
    return pairs or list(DEFAULT_PAIRS)


def _check_available(pairs: list[tuple[str, str]]) -> None:
    for name in {n for p in pairs for n in p}:
        reason = get_backend(name).available()
        if reason is not None:
            raise BackendError(f"backend {name} is not available here: {reason}")


def _libfuzzer_flags(given: list[str]) -> list[str]:
    extra = [a for a in given if a != "--"]
    for a in extra:
        if not a.startswith("-"):
            raise UsageError(f"pfndiff fuzz: extra libFuzzer arguments must be flags, got {a!r}")
    return extra


def _bundled_seeds() -> str:
    """The bundled seed corpus, rebuilt first: cheap, and never stale (the seeds may have changed)."""
    try:
        build_corpus()
    except NoSeeds as e:
        raise UsageError(f"pfndiff fuzz: {e}; or --no-seeds") from None
    return os.path.join(BUNDLED_CORPUS, "diff")


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--left", help="left backend of the (first) pair")
    p.add_argument("--right", help="right backend of the (first) pair")
    p.add_argument("--pair", action="append", default=[], metavar="LEFT~RIGHT",
                   help="a backend pair (repeatable; all pairs share the time budget and corpus; default: "
                        + ", ".join(f"{a}~{b}" for a, b in DEFAULT_PAIRS) + ")")
    p.add_argument("--time", type=int, default=300, help="time budget in seconds (default 300)")
    p.add_argument("--jobs", type=int, default=1,
                   help="libFuzzer workers side by side on the one corpus, one per core at most (default 1; "
                        "`make fuzz`: the number of cores); a worker that dies is restarted for the time left")
    p.add_argument("--corpus", default="fuzz-out/corpus", help="working corpus directory (grows)")
    p.add_argument("--artifacts", default="artifacts", help="where findings are written")
    p.add_argument("--no-seeds", action="store_true", help="do not add the bundled seed corpus")
    p.add_argument("--crash", action="store_true",
                   help="crash mode: a finding raises an uncaught exception naming it (as under ClusterFuzzLite); "
                        "the campaign stops at the first one (every worker)")
    p.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines")
    p.add_argument("--join", action="append", default=[], metavar="TRIAGE_OUT",
                   help="an earlier triage (its directory or triage.json): its causes are shown as already known")
    p.add_argument("--no-minimize", action="store_true",
                   help="do not minimise the first input of each new cause for the findings table")
    p.add_argument("--report", metavar="PATH", help="at the end, write the HTML report (pfndiff report) of the "
                                                    "artifacts directory to PATH")
    p.add_argument("libfuzzer_args", nargs=argparse.REMAINDER, help="after --: extra libFuzzer flags")


COMMANDS: Commands = {}
COMMANDS["fuzz"] = ("run a differential fuzzing campaign (libFuzzer in Python)", cmd_fuzz, _setup)
