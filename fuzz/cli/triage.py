"""``pfndiff triage``, ``pfndiff minimize`` and ``pfndiff repro`` (see fuzz.triage, fuzz.triage.minimize,
fuzz.triage.report).  Bad input is one line ``FILE[:LINE]: problem`` and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from fuzz.campaigns import progress
from fuzz.cli.common import EXIT_USAGE, Commands, UsageError, output_dir, output_file
from fuzz.cli.diff import add_exit_zero, exit_status
from fuzz.cli.report import report_after
from fuzz.corpus.seeds import REGRESSIONS
from fuzz.inputs.codec import EncodeError, encode
from fuzz.judging.artifacts import atomic_write, is_sidecar, load_corpus_entry, read_yaml_doc
from fuzz.judging.judge import Judge, Judgement, Pair, pair_from_tag
from fuzz.judging.rootcause import RootCauser
from fuzz.triage import run as triage_run
from fuzz.triage.cluster import HOST_RUNS, ArtifactError, JudgeCache, judge_artifact, load_artifact
from fuzz.triage.minimize import Interrupted as MinimizeInterrupted
from fuzz.triage.minimize import minimize
from fuzz.triage.report import explain, partner, side_by_side
from kvmsim.scenario import Scenario, dump_scenario
from kvmsim.yamlsrc import ScenarioError
from oracles.diff import Divergence


def _override(args: argparse.Namespace, cmd: str) -> list[Pair] | None:
    if bool(args.left) != bool(args.right):
        raise UsageError(f"pfndiff {cmd}: --left and --right go together")
    return [(args.left, args.right)] if args.left else None


# --- triage ------------------------------------------------------------------------------------------

def cmd_triage(args: argparse.Namespace) -> int:
    fmts = tuple(dict.fromkeys(f for spec in args.format for f in spec.split(",") if f))
    for f in fmts:
        if f not in triage_run.FORMATS:
            raise UsageError(f"pfndiff triage: unknown --format {f!r} (choose from {', '.join(triage_run.FORMATS)})")
    if args.runs < 1:
        raise UsageError("pfndiff triage: --runs must be at least 1")
    output_dir(args.out, "-o", create=False)
    if args.report and not os.path.abspath(args.report).startswith(os.path.abspath(args.out) + os.sep):
        output_file(args.report, "--report")                  # (inside -o it is made with the output)
    promote = None
    if args.promote:
        promote = args.promote_dir or REGRESSIONS
    opts = triage_run.Options(args.dirs, args.out, args.join, fmts or ("md",), _override(args, "triage"),
                              args.runs, not args.no_minimize, promote, regressions=args.regressions)
    try:
        out = triage_run.run(opts)
    except ArtifactError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    from fuzz.triage.formats import table
    print(table(out.records, out.errors, out.meta))
    print(f"wrote {os.path.join(args.out, 'summary.md')}, triage.json"
          + ("".join(f", {n}" for f, n in (("junit", "junit.xml"), ("sarif", "triage.sarif")) if f in fmts))
          + f" and clusters/ ({len(out.clusters)})")
    for p in out.promoted:
        print(f"promoted: {p}")
    if args.report and report_after(args.report, [*args.dirs, args.out]) != 0:
        return EXIT_USAGE
    if out.errors:
        return EXIT_USAGE
    return 1 if args.fail_on_new and out.new else 0


def _setup_triage(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="artifact directories (campaign outputs) or files")
    p.add_argument("--out", "-o", default="triage-out", help="output directory (default triage-out)")
    p.add_argument("--join", metavar="PREVIOUS_OUT", help="an earlier triage output to compare with")
    p.add_argument("--format", action="append", default=[], metavar="FMT",
                   help="extra outputs: md, json, junit, sarif (repeatable or comma-separated; "
                        "summary.md and triage.json are always written)")
    p.add_argument("--left", help="re-run every artifact on this pair instead of its sidecar's")
    p.add_argument("--right", help="(with --left)")
    p.add_argument("--runs", type=int, default=HOST_RUNS,
                   help=f"re-runs per artifact on a real-host backend (default {HOST_RUNS}; sim backends run twice)")
    p.add_argument("--no-minimize", action="store_true", help="keep each cluster's smallest input as it is")
    p.add_argument("--promote", action="store_true",
                   help="copy reproducible sim clusters' reproducers into corpus/regressions as YAML")
    p.add_argument("--promote-dir", help=argparse.SUPPRESS)
    p.add_argument("--fail-on-new", action="store_true", help="exit 1 if there is a new cluster (for CI)")
    p.add_argument("--regressions", default=REGRESSIONS, metavar="DIR",
                   help="promoted reproducers whose causes count as known: their clusters show delta 'known' "
                        "and fail no CI job (default corpus/regressions)")
    p.add_argument("--report", metavar="PATH", help="also write the HTML report (pfndiff report) of the campaign "
                                                    "directories and this triage to PATH")


# --- shared: one reproducer from a raw input or a scenario YAML ---------------------------------------

@dataclass
class Input:
    scenario: Scenario
    data: bytes | None
    pairs: list[Pair]
    signature: str | None          # what it was recorded/tagged for


def _is_scenario_yaml(path: str) -> bool:
    """A scenario has ``ops``/``world``; a sidecar has ``signature`` and no ``world``/``ops``."""
    if not path.endswith((".yaml", ".yml")):
        return False
    try:
        doc, _ = read_yaml_doc(path, "scenario")
    except ScenarioError:
        return not os.path.isfile(path[: -len(".yaml")])      # let the loader name the problem
    return isinstance(doc, dict) and ("ops" in doc or "world" in doc) and not is_sidecar(doc)


def read_input(path: str, override: list[Pair] | None) -> Input:
    """A raw input (with or without sidecar) or a scenario YAML whose tags name left/right."""
    if _is_scenario_yaml(path):
        sc = load_corpus_entry(path)
        tags = sc.tags or {}
        pairs = override
        if pairs is None:
            if tags.get("pairs"):
                pairs = [pair_from_tag(p) for p in tags["pairs"]]
            elif tags.get("left"):
                pairs = [(str(tags["left"]), str(tags.get("right") or ""))]
            else:
                raise UsageError(f"{path}: the scenario's tags name no backends; give --left/--right")
        try:
            data = encode(sc)
        except EncodeError:
            data = None
        sig = tags.get("signature") if isinstance(tags.get("signature"), str) else None
        return Input(sc, data, list(pairs), sig)
    if path.endswith((".yaml", ".yml")):
        path = path[: -len(".yaml")]
    art = load_artifact(path)
    v = judge_artifact(art, JudgeCache(), override, host_runs=1)
    recorded = (art.sidecar or {}).get("signature")            # the divergence the campaign wrote it for
    shown = isinstance(recorded, str) and v.judgement.find(recorded) is not None
    return Input(v.scenario, art.data, v.pairs, recorded if shown else (v.primary or None))


def _pick(path: str, inp: Input, judge: Judge, wanted: str | None) -> tuple[Judgement, str]:
    j = judge.judge(inp.scenario)
    if wanted:
        d = j.find(wanted) or _by_id(j.divs, wanted)
        if d is None:
            raise UsageError(f"{path}: does not show signature {wanted!r} "
                             f"(it shows: {', '.join(f'{x.sig_id} {x.signature}' for x in j.divs[:6]) or 'nothing'})")
        return j, d.signature
    if inp.signature and j.find(inp.signature) is not None:
        return j, inp.signature
    d = j.first_unknown() or (j.divs[0] if j.divs else None)
    if d is None:
        raise UsageError(f"{path}: shows no divergence on " + ", ".join(f"{a}~{b}" if b else a for a, b in inp.pairs))
    return j, d.signature


def _by_id(divs: list[Divergence], wanted: str) -> Divergence | None:
    """A divergence named by its printed id (12 hex digits, or a prefix of 6 or more)."""
    w = wanted.strip().lower()
    if len(w) < 6 or any(c not in "0123456789abcdef" for c in w):
        return None
    return next((d for d in divs if d.sig_id.startswith(w)), None)


def _judged(args: argparse.Namespace, cmd: str) -> tuple[Input, Judge, Judgement, str, Divergence]:
    """Read one input, judge it, and pick the divergence to work on (minimize and repro)."""
    try:
        inp = read_input(args.file, _override(args, cmd))
        judge = Judge(inp.pairs)
    except (ArtifactError, ValueError) as e:
        raise UsageError(str(e)) from None                             # one line, exit 2
    j, sig = _pick(args.file, inp, judge, args.signature)
    d = j.find(sig)
    assert d is not None                                               # _pick chose sig among j's divergences
    return inp, judge, j, sig, d


# --- minimize ------------------------------------------------------------------------------------------

def cmd_minimize(args: argparse.Namespace) -> int:
    base = args.out or (args.file[:-5] if args.file.endswith(".yaml") else args.file) + ".min"
    for path in (base, base + ".yaml"):
        if os.path.abspath(path) == os.path.abspath(args.file):
            raise UsageError(f"pfndiff minimize: refusing to overwrite the input {path}")
        output_file(path, "-o")                                       # before the work, not after
    inp, judge, j, sig, d = _judged(args, "minimize")
    interrupted = False
    try:
        with progress.stage("minimize: checking candidates", None, "checks") as st:
            res = minimize(inp.scenario, judge, sig, known=d.known, data=inp.data, on_check=st.set)
    except MinimizeInterrupted as e:                # keep the smallest input found so far
        res, interrupted = e.result, True
    pair = triage_run._pair_of(sig, inp.pairs)
    tagged = Scenario(res.scenario.world, res.scenario.ops, name="minimised", description=f"Minimised: {sig}",
                      tags={"signature": sig, "left": pair[0], "right": pair[1],
                            "pairs": [f"{a}~{b}" if b else a for a, b in inp.pairs]})
    if res.data:
        atomic_write(base, res.data)
    atomic_write(base + ".yaml", dump_scenario(tagged).encode())
    print(f"{args.file}: {sig}")
    size = f"{res.bytes_before} -> {res.bytes_after} bytes" if res.data else "too large for the byte codec"
    wrote = f"{base} and {base}.yaml" if res.data else f"{base}.yaml"
    print(f"  {res.ops_before} -> {res.ops_after} ops, {size}, {res.checks} checks; wrote {wrote}")
    if interrupted:
        raise KeyboardInterrupt(f"pfndiff minimize: interrupted after {res.checks} checks; the smallest input "
                                f"found so far is in {wrote}")
    return 0


def _setup_minimize(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a raw input (crash-<sha1>, with or without sidecar) or a scenario YAML")
    p.add_argument("--left", help="left backend (default: the sidecar's or the scenario tags')")
    p.add_argument("--right", help="right backend")
    p.add_argument("--signature", help="the signature to keep, or its printed 12-digit id (default: the recorded "
                   "one, else the first unknown)")
    p.add_argument("--out", "-o", help="output path for the bytes (YAML goes to OUT.yaml; default FILE.min)")


# --- repro -----------------------------------------------------------------------------------------------

def cmd_repro(args: argparse.Namespace) -> int:
    inp, judge, j, sig, d = _judged(args, "repro")
    traces = j.traces
    left = traces[d.left]
    right = traces.get(d.right) if d.right else partner(d.left, judge.pairs, traces)
    color = sys.stdout.isatty() and not args.no_color
    print(f"# {args.file}")
    print(dump_scenario(inp.scenario).rstrip())
    print()
    status = f"known ({', '.join(d.entries)})" if d.known else "NEW (no catalogue entry explains it)"
    cause = RootCauser(judge.catalogue)(inp.scenario, d, j.unknown)
    print(f"root cause: {cause.id}  {cause.title}")
    print(f"signature: {sig}  [{d.sig_id}]  {status}")
    print(f"first differing op: [{d.index}] {d.op}, field {d.field} (all differing: {', '.join(d.fields)})")
    print()
    print(side_by_side(inp.scenario, left, right, d.index, d.fields, color=color))
    print()
    assert judge.catalogue is not None
    rows = explain(d, judge.catalogue, [q for q in cause.spec if q.startswith("S")], cause.stated_rows)
    print("spec rows:" if rows else "spec rows: none apply")
    for r in rows:
        print(f"  {r.id:<5} {r.text}")
    return exit_status(not d.known, args)


def _setup_repro(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a raw input (crash-<sha1>, with or without sidecar) or a scenario YAML")
    p.add_argument("--left", help="left backend (default: the sidecar's or the scenario tags')")
    p.add_argument("--right", help="right backend")
    p.add_argument("--signature", help="which divergence to show: a signature or its printed 12-digit id "
                   "(default: the recorded one, else the first unknown)")
    p.add_argument("--no-color", action="store_true", help="no ANSI highlighting")
    add_exit_zero(p)


def _guard(fn):
    """Scenario/artifact problems are one line and exit 2 (ScenarioError is handled by the CLI core)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ArtifactError as e:
            print(str(e), file=sys.stderr)
            return EXIT_USAGE
        except ScenarioError:
            raise
    return run


COMMANDS: Commands = {}
COMMANDS["triage"] = ("re-run, cluster and minimise findings; write reports (md/json/junit/sarif)",
                      _guard(cmd_triage), _setup_triage)
COMMANDS["minimize"] = ("minimise one input, keeping its divergence signature", _guard(cmd_minimize), _setup_minimize)
COMMANDS["repro"] = ("show one input's traces side by side, the first differing op and its spec rows",
                     _guard(cmd_repro), _setup_repro)
