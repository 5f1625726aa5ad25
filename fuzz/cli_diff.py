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

from kvmsim import BackendError, get_backend, load_scenario
from oracles.catalogue import DEFAULT_PATH, load_catalogue
from oracles.diff import Divergence, compare
from oracles.normalise import API_LEVEL, VMM_LEVEL

from .cli import COMMANDS


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
    traces = []
    for name in (args.left, args.right):
        b = get_backend(name)
        reason = b.available()
        if reason is not None:
            raise BackendError(f"backend {name} is not available here: {reason}")
        traces.append(b.run(sc))
    level = {"auto": None, "api": API_LEVEL, "vmm": VMM_LEVEL}[args.level]
    divs = compare(sc, traces[0], traces[1], cat, level=level)
    if args.json:
        print(json.dumps({"scenario": args.scenario, "left": args.left, "right": args.right,
                          "divergences": [d.to_dict() for d in divs]}, indent=2, default=str))
        return 0
    new = sum(1 for d in divs if not d.known)
    print(f"{args.scenario}: {args.left} vs {args.right}: {len(divs)} divergence(s), {new} not catalogued")
    for d in divs:
        print(format_divergence(d))
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--left", "-l", required=True, help="left backend (see `pfndiff backends`)")
    p.add_argument("--right", "-r", required=True, help="right backend")
    p.add_argument("--level", choices=("auto", "api", "vmm"), default="auto",
                   help="comparison level (auto: api for two simulated backends, else vmm)")
    p.add_argument("--catalogue", default=DEFAULT_PATH, help="known-divergence catalogue (YAML)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


COMMANDS["diff"] = ("compare one scenario on two backends and list every divergence", cmd_diff, _setup)
