"""What ``pfndiff report`` shows, gathered from the files campaigns and triage leave behind:
campaign directories (history, per-process counters, sidecars), triage outputs (``triage.json``
and ``clusters/<id>/``), and ``pfndiff kernels compare --json`` files.

Why only files: a report must be drawable after the fact, on another machine (a CI artifact),
for backends that cannot be run again (a real kernel); so everything here is read, bounded and
checked, and a malformed input is one line ``FILE: problem`` (``ReportInputError``).  The one
computation is the decision-table map of a corpus, which is ``pfndiff corpus stats``'s.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fuzz.campaigns import history
from fuzz.corpus.features import Feature
from fuzz.corpus.merge import MergeError, corpus_stats
from fuzz.inputs import schema
from fuzz.judging.artifacts import read_stats
from fuzz.triage.cluster import ArtifactError, list_inputs, load_artifact
from kvmsim.scenario import Scenario, loads_scenario
from kvmsim.trace import Trace
from kvmsim.yamlsrc import ScenarioError
from oracles.catalogue import Catalogue, load_catalogue

MAX_JSON = 64 << 20            # bytes read from one triage.json / kernels JSON / view.json
MAX_TEXT = 4 << 20              # bytes read from one repro.yaml
SPEC_ORDER = [f"D{i}" for i in range(1, 29)] + ["D12b", "S2", "S4", "S5", "S6", "S8"]


class ReportInputError(Exception):
    """An input the report cannot use; ``str()`` is ``PATH: problem``."""


# --- campaign directories -----------------------------------------------------------------------------

@dataclass
class Finding:
    """One sidecar, reduced to what the report plots and counts."""
    name: str
    signature: str
    pair: str
    spec_ids: list[str]
    found_after_s: float
    time: str


@dataclass
class CampaignDir:
    path: str
    runs: list[history.Run]
    stats: list[dict[str, Any]]
    findings: list[Finding]
    corpus: str | None             # the newest run's corpus directory, if it still exists

    def signature_counts(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(signature, pair) -> {known, entries, count} summed over every process of every run."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for st in self.stats:
            sigs = st.get("signatures")
            if not isinstance(sigs, dict):
                continue
            for s, v in sigs.items():
                if not isinstance(v, dict):
                    continue
                key = (s, str(v.get("pair", "")))
                cur = out.setdefault(key, {"known": bool(v.get("known")), "entries": list(v.get("entries") or []),
                                           "count": 0})
                c = v.get("count", 0)
                cur["count"] += c if isinstance(c, int) else 0
        return out


def _finding(inp: str) -> Finding | None:
    """An artifact's sidecar through triage's loader (bounded, schema-checked); None if it has no
    readable sidecar (triage names those; the report counts the rest)."""
    try:
        doc = load_artifact(inp).sidecar
    except ArtifactError:
        return None
    if not doc:
        return None
    after = doc.get("found_after_s")
    return Finding(os.path.basename(inp), doc["signature"], "~".join(str(p) for p in doc.get("pair") or [] if p),
                   [str(s) for s in doc.get("spec_ids") or [] if isinstance(s, str)],
                   float(after) if isinstance(after, (int, float)) else 0.0,
                   str((doc.get("host") or {}).get("time", "")))


def read_campaign(path: str) -> CampaignDir:
    runs = history.read(path)
    findings = []
    for inp in list_inputs([path], []):
        if os.path.isfile(inp + ".yaml"):
            f = _finding(inp)
            if f is not None:
                findings.append(f)
    corpus = None
    for r in reversed(runs):
        rel = r.start.get("corpus")
        if isinstance(rel, str):
            cand = os.path.normpath(os.path.join(path, rel))
            if os.path.isdir(cand):
                corpus = cand
                break
    return CampaignDir(path, runs, read_stats(path), findings, corpus)


def is_campaign(path: str) -> bool:
    return os.path.isdir(path) and (os.path.exists(history.path_in(path)) or os.path.isdir(os.path.join(path, ".stats"))
                                    or any(n.startswith("crash-") for n in os.listdir(path)))


# --- triage outputs -------------------------------------------------------------------------------------

@dataclass
class ClusterView:
    record: dict[str, Any]              # the cluster's entry in triage.json
    repro_yaml: str                     # the minimised reproducer (scenario YAML)
    repro_path: str
    scenario: Scenario | None
    view: dict[str, Any] | None         # fuzz.triage.report.view: traces, first differing op, spec rows
    note: str = ""

    def traces(self) -> list[Trace]:
        return [Trace.from_dict(t) for t in (self.view or {}).get("traces") or []]


@dataclass
class TriageDir:
    path: str
    meta: dict[str, Any]
    clusters: list[ClusterView]
    made_here: bool = False             # triaged by the report itself (a campaign without triage output)


def _load_json(path: str) -> Any:
    try:
        if os.path.getsize(path) > MAX_JSON:
            raise ReportInputError(f"{path}: larger than {MAX_JSON >> 20} MiB")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as e:
        raise ReportInputError(f"{path}: cannot read: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportInputError(f"{path}: not JSON: {e}") from None
    except RecursionError:
        raise ReportInputError(f"{path}: not JSON: nested too deeply") from None


def read_triage(path: str, cat: Catalogue, made_here: bool = False) -> TriageDir:
    """Through triage's own loader (what ``--join`` reads: bounded, checked against the schema)."""
    from fuzz.triage.run import load_previous
    try:
        records = load_previous(path)
    except ArtifactError as e:
        raise ReportInputError(str(e)) from None
    return TriageDir(path, {}, [_cluster_view(path, rec, cat) for rec in records], made_here)


def _cluster_view(path: str, rec: dict[str, Any], cat: Catalogue) -> ClusterView:
    cdir = os.path.join(path, "clusters", os.path.basename(rec["id"]))
    repro = os.path.join(cdir, "repro.yaml")
    text, sc, note = "", None, ""
    try:
        with open(repro, encoding="utf-8") as fh:
            text = fh.read(MAX_TEXT)
        sc = loads_scenario(text, repro)
    except OSError as e:
        note = f"{repro}: cannot read: {e.strerror}"
    except ScenarioError as e:
        note = str(e)
    view = None
    vpath = os.path.join(cdir, "view.json")
    if os.path.exists(vpath):
        view = _load_json(vpath)
        try:
            schema.check("cluster-view", view, vpath)
        except ScenarioError as e:
            raise ReportInputError(str(e)) from None
    elif sc is not None:
        view, why = _rerun_view(sc, rec, cat)
        note = note or why
    return ClusterView(rec, text, repro, sc, view, note)


def _rerun_view(sc: Scenario, rec: dict[str, Any], cat: Catalogue) -> tuple[dict[str, Any] | None, str]:
    """A triage output from before views were stored: re-run the reproducer where that is exact
    (simulated backends are deterministic); a real kernel's traces are not made up."""
    from fuzz.judging.judge import Judge, pair_from_tag
    from fuzz.judging.rootcause import RootCauser
    from fuzz.triage.report import view
    tags = sc.tags or {}
    pairs = [pair_from_tag(str(p)) for p in tags.get("pairs") or []]
    if not pairs or any(n and not n.startswith("sim:") for p in pairs for n in p):
        return None, "traces not stored with this triage output (a real-kernel cluster is not re-run)"
    judge = Judge(pairs, cat)
    j = judge.judge(sc)
    d = j.find(rec["signature"])
    if d is None:
        return None, "the reproducer no longer shows its signature"
    cause = RootCauser(cat)(sc, d, j.unknown)                   # the quirks triage names: the cause's
    return view(d, j.traces, pairs, cat, cause.quirks, cause.stated_rows), ""


# --- kernels compare ------------------------------------------------------------------------------------------

@dataclass
class KernelsMatrix:
    path: str
    doc: dict[str, Any]


def read_kernels(path: str) -> KernelsMatrix:
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), list) or not isinstance(doc.get("rows"), list):
        raise ReportInputError(f"{path}: not a `pfndiff kernels compare --json` output (no columns/rows)")
    return KernelsMatrix(path, doc)


# --- everything ---------------------------------------------------------------------------------------------

@dataclass
class ReportData:
    campaigns: list[CampaignDir] = field(default_factory=list)
    triages: list[TriageDir] = field(default_factory=list)
    kernels: list[KernelsMatrix] = field(default_factory=list)
    corpus_dirs: list[str] = field(default_factory=list)
    corpus_inputs: int = 0
    cells: Counter[Feature] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    catalogue: Catalogue | None = None

    def pairs(self) -> list[str]:
        """Every backend pair any input names, in first-seen order."""
        out: list[str] = []
        for c in self.campaigns:
            for r in c.runs:
                out += [p for p in r.start.get("pairs") or [] if isinstance(p, str)]
            for st in c.stats:
                out += [p for p in st.get("pairs") or [] if isinstance(p, str)]
        for t in self.triages:
            out += [str(c.record.get("pair")) for c in t.clusters if c.record.get("pair")]
        return list(dict.fromkeys(out))

    def d_rows(self) -> dict[tuple[str, str], dict[str, int]]:
        """(spec row, pair or kernel pair) -> {"known": executions a catalogued divergence of that row
        was counted, "finding": findings/clusters that involve it, "kernel": kernel-compare scenarios}."""
        cat = self.catalogue or load_catalogue()
        spec_of = {e.id: e.spec for e in cat.entries}
        out: dict[tuple[str, str], dict[str, int]] = {}
        for row, col, kind, n in self._d_row_counts(spec_of):
            cell = out.setdefault((row, col), {"known": 0, "finding": 0, "kernel": 0})
            cell[kind] += n
        return out

    def _d_row_counts(self, spec_of: dict[str, str]) -> Iterator[tuple[str, str, str, int]]:
        """(spec row, column, kind, count) from each source, campaigns first."""
        for c in self.campaigns:
            yield from _known_row_counts(c, spec_of)
            if not self.triages:                                          # findings count once: by cluster if triaged
                for f in c.findings:
                    for row in f.spec_ids:
                        yield row, f.pair or "?", "finding", 1
        for t in self.triages:
            for cv in t.clusters:
                for row in cv.record.get("spec_ids") or []:
                    yield str(row), str(cv.record.get("pair") or "?"), "finding", 1
        for k in self.kernels:
            yield from _kernel_row_counts(k)


def _known_row_counts(c: CampaignDir, spec_of: dict[str, str]) -> Iterator[tuple[str, str, str, int]]:
    """Executions of catalogued divergences, per spec row of their entries."""
    for (_sig, pair), v in c.signature_counts().items():
        if v["known"]:
            ids = [e.split(" (")[0] for e in v["entries"]]
            for row in {spec_of[i] for i in ids if i in spec_of}:
                yield row, pair, "known", v["count"]


def _kernel_row_counts(k: KernelsMatrix) -> Iterator[tuple[str, str, str, int]]:
    """Each kernel-compare scenario once per spec row its differences name, per kernel pair."""
    for r in k.doc["rows"]:
        seen: set[tuple[str, str]] = set()
        for d in (r.get("differences") or []) if isinstance(r, dict) else []:
            if not isinstance(d, dict):
                continue
            col = f"{d.get('left')}~{d.get('right')}"
            spec = d.get("spec")
            for row in spec if isinstance(spec, list) else []:
                if (str(row), col) not in seen:
                    seen.add((str(row), col))
                    yield str(row), col, "kernel", 1


def _classify(path: str) -> str:
    if os.path.isfile(path):
        return "kernels" if path.endswith(".json") else "?"
    if not os.path.isdir(path):
        return "missing"
    if os.path.isfile(os.path.join(path, "triage.json")):
        return "triage"
    if is_campaign(path):
        return "campaign"
    return "?"


def usable(path: str) -> bool:
    return _classify(path) in ("campaign", "triage")


def gather(paths: list[str], corpus: list[str] | None = None, triage_missing: bool = True,
           stage: Callable[..., Any] | None = None) -> ReportData:
    """Read every input; a campaign without a triage output among the inputs is triaged into a
    temporary directory (simulated pairs take a second; the report says so)."""
    cat = load_catalogue()
    data = ReportData(catalogue=cat)
    kinds = {p: _classify(p) for p in paths}
    for p, k in kinds.items():
        if k == "missing":
            raise ReportInputError(f"{p}: no such file or directory")
        if k == "?":
            raise ReportInputError(f"{p}: not a campaign directory, a triage output (triage.json) or a "
                                   "`pfndiff kernels compare --json` file")
    for p, k in kinds.items():
        if k == "campaign":
            data.campaigns.append(read_campaign(p))
        elif k == "triage":
            data.triages.append(read_triage(p, cat))
        else:
            data.kernels.append(read_kernels(p))
    if triage_missing and not data.triages and any(c.findings for c in data.campaigns):
        data.triages.append(_triage_here([c.path for c in data.campaigns], cat, stage))
        data.notes.append("clusters: triaged by the report (no triage output was given; "
                          "`pfndiff triage DIR -o OUT` keeps one, `pfndiff report DIR OUT` shows it)")
    dirs = corpus or [c.corpus for c in data.campaigns if c.corpus]
    dirs = list(dict.fromkeys(d for d in dirs if d))
    if dirs:
        pairs = _pairs_of(data)
        try:
            data.corpus_inputs, data.cells = corpus_stats(dirs, pairs or None)
        except MergeError as e:
            raise ReportInputError(str(e)) from None
        data.corpus_dirs = dirs
    return data


def _pairs_of(data: ReportData) -> list[tuple[str, str]]:
    out = []
    for p in data.pairs():
        a, _, b = p.partition("~")
        if a.startswith("sim:") and b.startswith("sim:"):
            out.append((a, b))
    return out


def _triage_here(dirs: list[str], cat: Catalogue, stage: Callable[..., Any] | None) -> TriageDir:
    from fuzz.triage import run as triage_run
    with tempfile.TemporaryDirectory(prefix="pfndiff-report-triage-") as tmp:
        opts = triage_run.Options(dirs, tmp, err=lambda s: None)
        if stage:
            opts.stage = stage
        try:
            triage_run.run(opts)
        except ArtifactError as e:
            raise ReportInputError(str(e)) from None
        t = read_triage(tmp, cat, made_here=True)
        for cv in t.clusters:          # the temporary directory goes away: point at the inputs instead
            cv.repro_path = ""
        return t
