"""``pfndiff backends``, ``pfndiff run`` and ``pfndiff check``: the backends and scenario files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fuzz.cli.common import EXIT_USAGE, Commands
from fuzz.judging.quirks import LITERAL, QUIRKS
from fuzz.triage.report import flow_text, kvm_view
from kvmsim import BackendError, ScenarioError, backend_names, get_backend, load_scenario
from kvmsim.trace import Trace


def format_trace(trace: Trace) -> str:
    """Human-readable trace: one block per op."""
    meta = ", ".join(f"{k}={v}" for k, v in trace.meta.items() if not isinstance(v, dict))
    lines = [f"backend: {trace.backend}  ({meta})"]
    for r in trace.records:
        lines.append(f"[{r.index}] {r.op}")
        for level in ("api", "vmm"):
            val = getattr(r, level)
            if val:
                flow = flow_text(kvm_view(val))
                lines.append(f"    {level}: {flow}")
        if r.events:
            lines.append(f"    events: {', '.join(r.events)}")
    for key in ("refs_held_at_end", "pins_held_at_end"):
        if trace.meta.get(key):
            lines.append(f"{key}: {trace.meta[key]}")
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------

def cmd_backends(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []             # JSON rows
    for name in backend_names():
        try:
            b = get_backend(name)
        except BackendError as e:
            rows.append({"name": name, "available": False, "reason": str(e)})
            continue
        reason = b.available()
        rows.append({"name": name, "description": b.description(), "version": b.version(),
                     "available": reason is None, **({"reason": reason} if reason else {}), "info": b.info()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        desc = r.get("description", "")
        note = "" if r["available"] else f"  [unavailable: {r['reason']}]"
        print(f"{r['name']:<{width}}  {desc}{note}")
    print(f"\n{LITERAL}:Q1,Q2 enables only the named sketch quirks ({' '.join(QUIRKS)}).")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    sc = load_scenario(args.scenario)
    backend = get_backend(args.backend)
    reason = backend.available()
    if reason is not None:
        raise BackendError(f"backend {args.backend} is not available here: {reason}")
    trace = backend.run(sc)
    if args.json:
        print(json.dumps(trace.to_dict(), indent=2))
    else:
        print(format_trace(trace))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.scenarios:
        try:
            sc = load_scenario(path)
        except ScenarioError as e:
            print(str(e), file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: ok ({len(sc.world.memslots)} memslots, {len(sc.world.vmas)} vmas, {len(sc.ops)} ops)")
    return EXIT_USAGE if bad else 0


def _setup_backends(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--backend", "-b", default="sim:g3", help="backend name (see `pfndiff backends`)")
    p.add_argument("--json", action="store_true", help="print the trace as JSON")


def _setup_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenarios", nargs="+", help="scenario YAML files")


COMMANDS: Commands = {
    "backends": ("list the backends", cmd_backends, _setup_backends),
    "run": ("run a scenario on one backend and print its trace", cmd_run, _setup_run),
    "check": ("validate scenario files", cmd_check, _setup_check),
}


