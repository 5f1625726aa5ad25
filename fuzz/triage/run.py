"""``pfndiff triage`` end to end: read, re-run, cluster, minimise, write the outputs, join with an
earlier triage, promote reproducers into the regression corpus.

Every file is written atomically (``artifacts.atomic_write``); the inputs are only read, so a
user's artifacts are never lost or modified.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fuzz.campaigns import progress
from fuzz.campaigns.outdir import OutputDir
from fuzz.corpus.seeds import REGRESSIONS
from fuzz.inputs import schema
from fuzz.inputs.codec import EncodeError, encode
from fuzz.judging.artifacts import atomic_write, host_info
from fuzz.judging.judge import Judge, Pair, spec_ids
from fuzz.triage import formats
from fuzz.triage.cluster import (
    HOST_RUNS,
    ArtifactError,
    Cluster,
    JudgeCache,
    Verdict,
    cluster,
    judge_artifact,
    list_inputs,
    load_artifact,
)
from fuzz.triage.known import causes_in_regressions
from fuzz.triage.minimize import MinResult, minimize
from fuzz.triage.report import explain, partner, side_by_side, view
from kvmsim.scenario import Scenario, dump_scenario
from kvmsim.yamlsrc import MAX_JSON_BYTES, ScenarioError, read_text

FORMATS = ("md", "json", "junit", "sarif")
HOST_MIN_CHECKS = 200                 # minimising on a real host costs a VM per check


@dataclass
class Options:
    inputs: list[str]
    out: str
    join: str | None = None
    formats: tuple[str, ...] = ("md",)
    pairs: list[Pair] | None = None
    host_runs: int = HOST_RUNS
    minimize: bool = True
    promote: str | None = None            # directory to promote reproducers into
    regressions: str = REGRESSIONS        # promoted reproducers: their causes are known to the user
    err: Callable[[str], None] = lambda s: print(s, file=sys.stderr)
    stage: Callable[..., progress.Stage] = progress.stage      # progress on stderr (fuzz.campaigns.progress)


@dataclass
class Outcome:
    records: list[dict[str, Any]]
    errors: list[str]
    meta: dict[str, Any]
    clusters: list[Cluster] = field(default_factory=list)
    minimized: dict[str, MinResult | None] = field(default_factory=dict)
    promoted: list[str] = field(default_factory=list)

    @property
    def new(self) -> list[dict[str, Any]]:
        return [c for c in self.records if formats.failing(c)]


def _write(path: str, text: str | bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, text.encode("utf-8") if isinstance(text, str) else text)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a triage; ``kept`` is where its finished work was written."""

    def __init__(self, kept: str, judged: int, total: int, clusters: int) -> None:
        super().__init__(kept)
        self.kept, self.judged, self.total, self.clusters = kept, judged, total, clusters

    def __str__(self) -> str:
        return (f"pfndiff triage: interrupted after {self.judged}/{self.total} artifact(s) and {self.clusters} "
                f"cluster(s); finished work kept in {self.kept}")


OWNED = ("clusters", "junit.xml", "triage.sarif", "summary.md", "triage.json")   # triage.json last: the marker


def run(opts: Options) -> Outcome:
    """Inputs and ``--join`` are checked before OUT is touched; the new outputs replace the old
    ones only once complete (fuzz.campaigns.outdir); Ctrl-C keeps the finished part in OUT/interrupted."""
    t0 = time.time()
    errors: list[str] = []
    verdicts: list[Verdict] = []
    previous = load_previous(opts.join) if opts.join else None      # a bad --join fails before any work
    paths = list_inputs(opts.inputs, errors)                         # a missing input fails here too
    if not paths and not errors and os.path.isfile(os.path.join(opts.out, "triage.json")):
        raise ArtifactError(f"{', '.join(opts.inputs)}: no artifacts; {opts.out} keeps its earlier triage")
    judges = JudgeCache()
    stage = OutputDir(opts.out, OWNED)
    work = replace(opts, out=stage.dir)
    for e in errors:
        opts.err(e)
    records: list[dict[str, Any]] = []
    clusters: list[Cluster] = []
    try:
        with opts.stage("triage: re-running artifacts", len(paths)) as st:
            for path in paths:
                try:
                    art = load_artifact(path)
                    verdicts.append(judge_artifact(art, judges, opts.pairs, opts.host_runs))
                except ArtifactError as e:
                    errors.append(str(e))
                    opts.err(str(e))
                st.advance(note=os.path.basename(path))
        clusters = cluster(verdicts)
        minimized: dict[str, MinResult | None] = {}
        yaml_lines: dict[str, int] = {}
        what = "minimising and reporting clusters" if opts.minimize else "reporting clusters"
        with opts.stage(f"triage: {what}", len(clusters)) as st:
            for c in clusters:
                rec, res, line = _do_cluster(c, judges, work, _checks_note(st, c.id))
                records.append(rec)
                minimized[c.id] = res
                yaml_lines[c.id] = line
                st.advance(note=c.id)
        judges.close()
        meta = _meta(opts, paths, verdicts, t0)
        if previous is not None:
            records = join(records, previous)
        mark_seen(records, causes_in_regressions(opts.regressions))
        out = Outcome(records, errors, meta, clusters, minimized)
        if opts.promote:
            out.promoted = promote(out, opts.promote)
        _write_outputs(out, work, yaml_lines, final=opts.out)
    except KeyboardInterrupt:
        judges.close()
        _keep_interrupted(opts, work, stage, paths, verdicts, records, errors, t0)
    except BaseException:
        judges.close()
        stage.discard()
        raise
    stage.commit()
    return out


def _keep_interrupted(opts: Options, work: Options, stage: OutputDir, paths: list[str], verdicts: list[Verdict],
                      records: list[dict[str, Any]], errors: list[str], t0: float) -> None:
    """Ctrl-C: the clusters finished so far and every verdict reached go to OUT/interrupted (a
    host re-run is expensive); OUT keeps the previous complete triage.  Raises Interrupted."""
    meta = _meta(opts, paths, verdicts, t0)
    meta["interrupted"] = {"judged": len(verdicts), "of": len(paths),
                           "verdicts": [{"path": v.artifact.path, "status": v.status, "signature": v.primary,
                                         "hits": v.hits, "runs": v.runs} for v in verdicts]}
    done = [r for r in records if os.path.isdir(os.path.join(work.out, "clusters", r["id"]))]
    _write_outputs(Outcome(done, errors, meta), work, {}, final=opts.out)
    raise Interrupted(stage.keep_partial(), len(verdicts), len(paths), len(done)) from None


def _meta(opts: Options, paths: list[str], verdicts: list[Verdict], t0: float) -> dict[str, Any]:
    unclustered = [(v.artifact.path, v.note) for v in verdicts if not v.memberships]
    return {"artifacts": len(paths), "inputs": list(opts.inputs), "host": host_info(),
            "unclustered": len(unclustered), "unclustered_list": unclustered,
            "seconds": round(time.time() - t0, 3), "joined": opts.join or ""}


# --- one cluster -------------------------------------------------------------------------------------

def _checks_note(st: progress.Stage, cluster_id: str) -> Callable[[int], None]:
    """Progress while one cluster is minimised: the checks made so far."""
    return lambda n: st.advance(0, f"{cluster_id}: {n} checks")


def _do_cluster(c: Cluster, judges: JudgeCache, opts: Options,
                on_check: Callable[[int], None] | None = None) -> tuple[dict[str, Any], MinResult | None, int]:
    rep = c.representative()
    judge = judges.get(rep.pairs)
    d0 = rep.judgement.find(c.signature)
    res: MinResult | None = None
    note = ""
    sc = rep.scenario
    data = rep.artifact.data
    if rep.artifact.recorded is not None:           # the bytes decode differently now: re-encode
        try:
            data = encode(sc)
        except EncodeError:
            pass
    if opts.minimize and d0 is not None and c.status != "nondeterministic":
        limit = HOST_MIN_CHECKS if any(not n.startswith("sim:") for p in rep.pairs for n in p if n) else 4000
        try:
            res = minimize(sc, judge, c.signature, known=d0.known, data=data, limit=limit, on_check=on_check)
            sc, data = res.scenario, res.data or data
        except ValueError as e:
            note = f"not minimised: {e}"
    elif d0 is None:
        note = "not minimised: the representative does not show the signature now"
    j = judge.judge(sc)
    d = j.find(c.signature)
    involved = judge.spec_ids(j)
    if d is not None:
        assert judge.catalogue is not None
        needed = c.cause.quirks                                    # the cause's quirks (fuzz.judging.rootcause)
        spec = spec_ids(d, c.cause.to_dict(), judge.catalogue)
    else:                               # nothing to recompute from: keep what the sidecars said
        needed = []
        spec = sorted({s for v in c.members for s in (v.artifact.sidecar or {}).get("spec_ids") or []
                       if isinstance(s, str)})
    pair = _pair_of(c.signature, rep.pairs)
    tagged = Scenario(sc.world, sc.ops, name=f"triage {c.id}",
                      description=f"Minimised reproducer of {c.id}: {c.cause.title}",
                      tags={"signature": c.signature, "id": c.id, "root_cause": c.id, "left": pair[0], "right": pair[1],
                            "pairs": [f"{a}~{b}" if b else a for a, b in rep.pairs], "spec": spec,
                            "status": c.status})
    text = dump_scenario(tagged)
    cdir = os.path.join(opts.out, "clusters", c.id)
    _write(os.path.join(cdir, "repro"), data)
    _write(os.path.join(cdir, "repro.yaml"), text)
    line = formats.op_line_in_yaml(text, d.index if d is not None else len(sc.ops))
    rec = _record(c, rep, judge, res, spec, pair, d, note)
    rec["spec_ids_involved"] = involved
    rec["needed_quirks"] = needed
    _write(os.path.join(cdir, "report.md"), cluster_md(c, rec, sc, j, judge, text))
    _write(os.path.join(cdir, "report.json"), json.dumps(rec, indent=2))
    if d is not None:                   # what `pfndiff report` draws without re-running a real kernel
        assert judge.catalogue is not None
        _write(os.path.join(cdir, "view.json"), json.dumps(view(d, j.traces, rep.pairs, judge.catalogue, needed,
                                                                   c.cause.stated_rows)))
    return rec, res, line


def _pair_of(signature: str, pairs: list[Pair]) -> tuple[str, str]:
    """The pair a signature is about (its second word), else the first pair."""
    words = signature.split(" ")
    if len(words) > 1:
        left, _, right = words[1].partition("~")
        if right:
            return left, right
        for a, b in pairs:
            if left in (a, b):
                return (a, b) if b else (a, "")
        return left, ""
    return pairs[0]


def _record(c: Cluster, rep: Verdict, judge: Judge, res: MinResult | None, spec: list[str],
            pair: tuple[str, str], d: Any, note: str) -> dict[str, Any]:
    backends = {n: judge.backends[n].version() for n in judge.names}
    found_on = sorted({str(((v.artifact.sidecar or {}).get("host") or {}).get("kernel", "?")) for v in c.members})
    return {
        "id": c.id, "root_cause": c.cause.to_dict(), "title": c.cause.title,
        "signature": c.signature, "signatures": c.signatures, "status": c.status,
        "known": c.known, "delta": "new", "count": c.count,
        "first_seen": c.first_seen, "last_seen": c.last_seen,
        "reproducibility": {"hits": c.hits, "runs": c.runs,
                            "deterministic": all(n.startswith("sim:") for n in judge.names)},
        "pair": f"{pair[0]}~{pair[1]}" if pair[1] else pair[0],
        "backends": backends, "found_on_kernels": found_on, "triaged_on_kernel": host_info()["kernel"],
        "spec_ids": spec,
        "first_differing_op": {"index": d.index, "op": d.op, "field": d.field} if d is not None else None,
        "reproducer": {"yaml": f"clusters/{c.id}/repro.yaml", "bytes": f"clusters/{c.id}/repro",
                       "ops": len(res.scenario.ops) if res else len(rep.scenario.ops),
                       "size": res.bytes_after if res else len(rep.artifact.data),
                       "ops_before": len(rep.scenario.ops), "size_before": len(rep.artifact.data),
                       "checks": res.checks if res else 0, "minimised": res is not None, "note": note},
        "members": [{"path": v.artifact.path, "status": v.status, "seen": v.artifact.seen,
                     "signature": v.signature_for(c.id), "hits": v.hits.get(v.signature_for(c.id), 0),
                     "runs": v.runs, **({"note": v.note} if v.note else {}), **({"also": v.also} if v.also else {})}
                    for v in c.members],
        "also": sorted({s for v in c.members for s in v.also}),
    }


def cluster_md(c: Cluster, rec: dict[str, Any], sc: Scenario, j: Any, judge: Judge, text: str) -> str:
    d = j.find(c.signature)
    catalogue = (f"known ({', '.join(d.entries)})" if d is not None and d.known
                 else "new: no catalogue entry explains it")
    r = rec["reproducibility"]
    rep = rec["reproducer"]
    lines = [f"# Cluster {c.id}: {c.cause.title}", "",
             f"Root cause ({c.cause.kind}): {c.cause.title}", "",
             "Signatures in this cluster (the reproducer shows the first):", "",
             *[f"- `{s}`" for s in c.signatures], "",
             "| | |", "|---|---|",
             f"| status | {rec['status']} |",
             f"| catalogue | {catalogue} |",
             f"| delta | {rec['delta']} |",
             f"| artifacts | {rec['count']} |",
             f"| first seen / last seen | {rec['first_seen']} / {rec['last_seen']} |",
             f"| reproducibility | {r['hits']}/{r['runs']} runs" +
             (" (simulated backends: every re-run gave identical traces)" if r["deterministic"] else "") + " |",
             f"| backends | {', '.join(f'{k} ({v})' for k, v in rec['backends'].items())} |",
             f"| host kernel | found on {', '.join(rec['found_on_kernels'])}; triaged on {rec['triaged_on_kernel']} |",
             f"| spec ids | {', '.join(rec['spec_ids']) or '-'} (rows this divergence depends on; every row "
             f"involved in the reproducer: {', '.join(rec.get('spec_ids_involved') or []) or '-'}) |",
             f"| reproducer | {rep['ops_before']} → {rep['ops']} ops, {rep['size_before']} → {rep['size']} bytes"
             f"{' (' + rep['note'] + ')' if rep['note'] else ''} |", ""]
    lines += ["## Artifacts", ""] + [f"- `{m['path']}`: {m['status']} ({m['hits']}/{m['runs']}), seen {m['seen']}"
                                     f"{' - ' + m['note'] if m.get('note') else ''}" for m in rec["members"]]
    if rec["also"]:
        lines += ["", "Other unknown signatures these artifacts show (after the first, so not clusters of their own):",
                  ""] + [f"- `{s}`" for s in rec["also"]]
    lines += ["", "## Reproducer (`repro.yaml`)", "", "```yaml", text.rstrip(), "```", ""]
    if d is not None:
        assert judge.catalogue is not None
        lines += ["## Spec rows", ""] + [f"- **{row.id}** {row.text}" for row in
                                             explain(d, judge.catalogue, rec.get("needed_quirks"),
                                                     c.cause.stated_rows)] + [""]
        left = j.traces.get(d.left)
        right = j.traces.get(d.right) if d.right else partner(d.left, judge.pairs, j.traces)
        if left is not None:
            lines += ["## Traces (first differing op marked `>>`, differing lines `*`)", "", "```",
                      side_by_side(sc, left, right, d.index, d.fields), "```", ""]
    return "\n".join(lines)


# --- join ------------------------------------------------------------------------------------------

def load_previous(path: str) -> list[dict[str, Any]]:
    """The clusters of an earlier triage (``--join``): a bounded read, then the report schema."""
    f = os.path.join(path, "triage.json") if os.path.isdir(path) else path
    try:
        doc = json.loads(read_text(f, MAX_JSON_BYTES, "triage report"))
    except ScenarioError as e:
        raise ArtifactError(f"{f}: cannot read an earlier triage: {e.problem}") from None
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{f}: not a triage.json: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(doc, dict) or doc.get("format") != "pfndiff-triage/1":
        raise ArtifactError(f"{f}: not a pfndiff triage.json (format pfndiff-triage/1)")
    try:
        schema.check("triage-report", doc, f)
    except ScenarioError as e:
        raise ArtifactError(str(e)) from None
    return [c for c in doc["clusters"] if c.get("delta") != "vanished"]


def mark_seen(records: list[dict[str, Any]], seen: dict[str, str]) -> None:
    """A cluster new to this triage whose cause a promoted reproducer already shows is known to the
    user: ``seen_in`` names that reproducer, and it fails no CI job (as the campaign table's "known")."""
    for c in records:
        rc = c.get("root_cause")
        cid = rc.get("id") if isinstance(rc, dict) else c["id"]
        if c["delta"] == "new" and cid in seen:
            c["seen_in"] = seen[cid]


def join(records: list[dict[str, Any]], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """new / grew / same against the earlier triage; its clusters missing now are 'vanished'."""
    prev = {c["id"]: c for c in previous}
    out = []
    for c in records:
        p = prev.get(c["id"])
        if p is None:
            c["delta"] = "new"
        else:
            c["delta"] = "grew" if c["count"] > p.get("count", 0) else "same"
            c["previous_count"] = p.get("count", 0)
            c["first_seen"] = min(c["first_seen"], p.get("first_seen", c["first_seen"]))
        out.append(c)
    ids = {c["id"] for c in records}
    for p in previous:
        if p["id"] not in ids:
            out.append({**p, "delta": "vanished", "previous_count": p.get("count", 0), "count": 0,
                        "reproducibility": {"hits": 0, "runs": 0, "deterministic": True}})
    return out


# --- promotion ---------------------------------------------------------------------------------------

def promote(out: Outcome, dest: str) -> list[str]:
    """Copy reproducible, simulated-only clusters' reproducers into ``dest`` as readable YAML
    (Go ``testdata/fuzz`` style), named by pair and cluster id; the replay test checks them."""
    written = []
    by_id = {c.id: c for c in out.clusters}
    for rec in out.records:
        c = by_id.get(rec["id"])
        res = out.minimized.get(rec["id"])
        if c is None or rec["status"] != "reproduced" or rec["known"]:
            continue
        if not all(n.startswith("sim:") for n in rec["backends"]):
            continue
        sc = res.scenario if res else c.representative().scenario
        tagged = Scenario(sc.world, sc.ops, name=f"regression {rec['id']}",
                          description=f"Promoted from triage: {rec['id']}: {rec.get('title') or rec['signature']}",
                          tags={"signature": rec["signature"], "id": rec["id"],
                                "left": rec["pair"].partition("~")[0], "right": rec["pair"].partition("~")[2],
                                "pairs": sorted({f"{a}~{b}" if b else a for a, b in c.representative().pairs}),
                                "spec": rec["spec_ids"], "promoted": out.meta["host"]["time"]})
        slug = rec["pair"].replace("sim:", "").replace("~", "-vs-").replace(":", "-").replace(",", "")
        path = os.path.join(dest, f"{slug}-{rec['id']}.yaml")
        if os.path.exists(path):                # promoted earlier: never rewrite a corpus file
            continue
        text = dump_scenario(tagged)
        encode(sc)                              # a promoted reproducer must stay encodable (EncodeError)
        _write(path, text)
        written.append(path)
    return written


# --- outputs -----------------------------------------------------------------------------------------

def _write_outputs(out: Outcome, opts: Options, yaml_lines: dict[str, int], final: str | None = None) -> None:
    """Write into ``opts.out``; SARIF locations are computed for ``final`` (where the outputs
    will live once committed)."""
    r, e, m = out.records, out.errors, out.meta
    _write(os.path.join(opts.out, "triage.json"), formats.triage_json(r, e, m))
    _write(os.path.join(opts.out, "summary.md"), formats.summary_md(r, e, m))
    if "junit" in opts.formats:
        _write(os.path.join(opts.out, "junit.xml"), formats.junit(r, e, m))
    if "sarif" in opts.formats:
        out_abs, cwd = os.path.abspath(final or opts.out), os.getcwd()
        if out_abs.startswith(cwd.rstrip("/") + "/"):
            base, prefix, base_id = "file://" + cwd.rstrip("/") + "/", os.path.relpath(out_abs, cwd) + "/", "%SRCROOT%"
        else:
            base, prefix, base_id = "file://" + out_abs.rstrip("/") + "/", "", "TRIAGEROOT"
        _write(os.path.join(opts.out, "triage.sarif"), formats.sarif(r, e, m, yaml_lines, base, prefix, base_id))
