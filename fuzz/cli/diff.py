"""``pfndiff diff SCENARIO --left A --right B``: every divergence between two backends.

Why a command of its own: it is the tool a reviewer runs on one scenario ("does my conversion
change behaviour here, and is that change catalogued?"), and the fuzzer's sidecars are built
from the same report.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from fuzz.cli.common import Commands
from kvmsim import BackendError, get_backend, load_scenario
from oracles.catalogue import DEFAULT_PATH, load_catalogue
from oracles.diff import Divergence
from oracles.normalise import API_LEVEL, VMM_LEVEL
from oracles.pair import compare_pair


def _val(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
    return "null" if v is None else str(v)


def format_divergence(d: Divergence) -> str:
    status = f"known ({', '.join(d.entries)})" if d.known else "NEW"
    right = d.right or "(single-trace invariant)"
    lines = [f"[op {d.index}] {d.op}  {status}", f"  signature: {d.signature}  [{d.sig_id}]",
             f"  first unexplained field: {d.field}" if not d.known else f"  field: {d.field}"]
    width = max(len(f) for f in d.fields)
    lines.append(f"  {'':<{width}}  {d.left:<28}  {right}")
    for f in d.fields:
        why = d.explained.get(f)
        note = f"   <- {why}" if why else ("   <- unexplained" if not d.known else "")
        lines.append(f"  {f:<{width}}  {_val(d.left_obs.get(f)):<28}  {_val(d.right_obs.get(f))}{note}")
    return "\n".join(lines)


def cmd_diff(args: argparse.Namespace) -> int:
    sc = load_scenario(args.scenario)
    cat = load_catalogue(args.catalogue)
    backends = {}
    for name in (args.left, args.right):
        b = backends[name] = get_backend(name)
        reason = b.available()
        if reason is not None:
            raise BackendError(f"backend {name} is not available here: {reason}")
    level = {"auto": None, "api": API_LEVEL, "vmm": VMM_LEVEL}[args.level]
    divs, cov, _, _ = compare_pair(sc, backends[args.left].run(sc), backends[args.right].run(sc), cat,
                                   lambda n, s: backends[n].run(s), level=level, invariants=True,
                                   explain=lambda s, i, f, m, r: backends[r.backend].explain_divergence(s, i, f, m, r)
                                   if r.backend in backends else {})
    new = sum(1 for d in divs if not d.known)
    if args.json:
        print(json.dumps({"scenario": args.scenario, "left": args.left, "right": args.right,
                          "compared": cov.to_dict(), "divergences": [d.to_dict() for d in divs]},
                         indent=2, default=str))
    elif cov.compared == 0:
        print(f"{args.scenario}: {args.left} vs {args.right}: {cov.summary(args.left, args.right)}")
    else:
        print(f"{args.scenario}: {args.left} vs {args.right}: {len(divs)} divergence(s), {new} not catalogued; "
              f"{cov.summary(args.left, args.right)}")
        for d in divs:
            print(format_divergence(d))
    return exit_status(new > 0, args)


def exit_status(new_shown: bool, args: argparse.Namespace) -> int:
    """1 when a NEW (uncatalogued) divergence was shown, so a CI step can run the command as it
    is; ``--exit-zero`` reports without failing."""
    return 1 if new_shown and not args.exit_zero else 0


def add_exit_zero(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exit-zero", action="store_true",
                   help="exit 0 even when a NEW divergence is shown (default: exit 1)")


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--left", "-l", required=True, help="left backend (see `pfndiff backends`)")
    p.add_argument("--right", "-r", required=True, help="right backend")
    p.add_argument("--level", choices=("auto", "api", "vmm"), default="auto",
                   help="comparison level (auto: api for two simulated backends, else vmm)")
    p.add_argument("--catalogue", default=DEFAULT_PATH, help="known-divergence catalogue (YAML)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_exit_zero(p)


COMMANDS: Commands = {}
COMMANDS["diff"] = ("compare one scenario on two backends and list every divergence", cmd_diff, _setup)
