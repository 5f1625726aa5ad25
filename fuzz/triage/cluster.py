"""Triage: read findings (raw inputs, with or without sidecars), re-run each on its backends,
group them by signature, minimise one reproducer per cluster.

Clustering rule.  An artifact belongs to exactly one cluster: its *primary* signature, the first
unknown divergence of its re-run (op order; pair diffs before single-trace invariants).  That is
a property of the input alone, so the same bug found through different inputs or campaigns lands
in one cluster, whatever order a campaign met its signatures in.  The other unknown signatures
it shows (including those its sidecar was written for: a campaign writes a signature only once)
are kept as ``also`` and listed in the reports, not made into clusters of their own: they are
mostly the same event seen by a second oracle or the consequences of the first divergence.

Nothing is dropped: an artifact whose recorded signature no longer shows is kept, in the cluster
of its recorded signature, labelled ``unreproduced`` (or ``now-known`` if the catalogue explains it
today); an unreadable one is reported as one line and listed in the summary.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from fuzz.inputs.codec import VERSION, EncodeError, decode, encode
from fuzz.judging.artifacts import (
    content_mismatch,
    is_sidecar,
    load_corpus_entry,
    read_stats,
    read_twin,
    read_yaml_doc,
)
from fuzz.judging.judge import Judge, Judgement, Pair, pairs_from_sidecar
from fuzz.judging.rootcause import RootCause, RootCauser, make
from kvmsim.backend import BackendError
from kvmsim.scenario import Scenario, loads_scenario
from kvmsim.trace import Trace
from kvmsim.yamlsrc import MAX_INPUT_BYTES, ScenarioError, read_bytes
from oracles.catalogue import load_catalogue
from oracles.diff import Divergence

HOST_RUNS = 10                     # default re-runs of an artifact on a real-host backend
SIDECAR_GRACE = 2.0                # seconds: a just-written crash file may still be awaiting its sidecar
SIM_RUNS = 2                       # sim backends: run twice, the traces must be identical
_CRASH = re.compile(r"^crash-([0-9a-f]{40})$")
_SKIP_DIRS = {"by-signature", ".stats", "clusters"}


class ArtifactError(Exception):
    """One artifact cannot be triaged; ``str()`` is ``FILE[:LINE]: problem``."""


@dataclass
class Artifact:
    path: str
    data: bytes
    sidecar: dict[str, Any] | None
    mtime: float
    recorded: Scenario | None = None      # the sidecar's scenario, when the bytes decode differently now
    note: str = ""
    tag_pairs: list[Pair] = field(default_factory=list)      # a scenario YAML input: the pairs its tags name
    tag_signatures: list[str] = field(default_factory=list)  # ... and the signature they name

    def scenario(self) -> Scenario:
        return self.recorded if self.recorded is not None else decode(self.data)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def seen(self) -> str:
        """When it was found: the sidecar's host time, else the file's mtime (UTC, ISO 8601)."""
        t = ((self.sidecar or {}).get("host") or {}).get("time")
        if isinstance(t, str) and t:
            return t
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.mtime))


# --- reading ---------------------------------------------------------------------------------------

def list_inputs(paths: list[str], errors: list[str] | None = None) -> list[str]:
    """Raw inputs under the given directories (or the given files): every regular file that is
    not a sidecar, a dotfile, a libFuzzer log, or inside the campaign's bookkeeping directories.
    A missing path is always an error (ArtifactError): a typo must not pass for an empty
    campaign.  A directory named like an artifact is listed in ``errors`` if given, else raised."""
    out: list[str] = []
    for p in paths:
        if not os.path.exists(p):
            raise ArtifactError(f"{p}: no such file or directory")
        if os.path.isfile(p):
            out.append(p[:-5] if p.endswith(".yaml") and os.path.isfile(p[:-5]) else p)
        elif os.path.isdir(p):
            out.extend(_inputs_under(p, errors))
        else:
            raise ArtifactError(f"{p}: not a regular file or directory")
    return list(dict.fromkeys(out))                     # each once, in the order first seen


def _inputs_under(top: str, errors: list[str] | None) -> list[str]:
    """The inputs in one directory tree, in sorted order, skipping the campaign's bookkeeping."""
    out: list[str] = []
    for root, dirs, files in os.walk(top):
        for d in dirs:
            if _CRASH.match(d):
                _refuse(f"{os.path.join(root, d)}: a directory named like an artifact (not triaged)", errors)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".") and not _CRASH.match(d))
        for f in sorted(files):
            if _is_lone_scenario(f, files):
                out.append(os.path.join(root, f))       # no raw twin: a scenario (e.g. a promoted reproducer)
                continue
            if _is_bookkeeping(f):
                continue
            full = os.path.join(root, f)
            if not os.path.isfile(full):                 # a FIFO or device would block or never end
                _refuse(f"{full}: not a regular file (not triaged)", errors)
                continue
            out.append(full)
    return out


def _is_lone_scenario(name: str, siblings: list[str]) -> bool:
    return name.endswith((".yaml", ".yml")) and not name.startswith(".") and name.rsplit(".", 1)[0] not in siblings


def _is_bookkeeping(name: str) -> bool:
    """Sidecars, dotfiles, logs and reports: written next to the inputs, not inputs themselves."""
    return name.startswith(".") or name.endswith((".yaml", ".yml", ".json", ".log", ".md", ".xml", ".sarif", ".dict"))


def _refuse(msg: str, errors: list[str] | None) -> None:
    """List a path that is not triaged in ``errors`` when the caller collects them, else raise."""
    if errors is None:
        raise ArtifactError(msg)
    errors.append(msg)


def load_scenario_input(path: str) -> Artifact:
    """A scenario YAML as an input (seeds, ``repro.yaml``, promoted regressions, ``pfndiff
    minimize`` output): its tags name the pairs; a sidecar whose raw input is missing is an error."""
    try:
        mtime = os.stat(path).st_mtime
        doc, _ = read_yaml_doc(path, "scenario")
        if is_sidecar(doc):
            raise ArtifactError(f"{path}: a sidecar without its input {path.rsplit('.', 1)[0]}")
        sc = load_corpus_entry(path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read: {e.strerror}") from None
    except ScenarioError as e:
        raise ArtifactError(str(e)) from None
    try:
        data = encode(sc)
    except EncodeError as e:
        raise ArtifactError(f"{path}: cannot be encoded for triage: {e}") from None
    tags = sc.tags or {}
    pairs: list[Pair] = []
    for p in tags.get("pairs") or ([f"{tags['left']}~{tags.get('right') or ''}"] if tags.get("left") else []):
        a, _, b = str(p).partition("~")
        pairs.append((a, b))
    recorded = [tags["signature"]] if isinstance(tags.get("signature"), str) else []
    return Artifact(path, data, None, mtime, None, "", pairs, recorded)


def load_artifact(path: str) -> Artifact:
    """The raw input and its sidecar, checked against each other.  Raises ArtifactError."""
    if path.endswith((".yaml", ".yml")) and not os.path.isfile(path.rsplit(".", 1)[0]):
        return load_scenario_input(path)
    side_path = path + ".yaml"
    try:
        data = read_bytes(path, MAX_INPUT_BYTES, "fuzzer input")
        mtime = os.stat(path).st_mtime
    except ScenarioError as e:
        raise ArtifactError(str(e)) from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read: {e.strerror}") from None
    sidecar = None
    if _CRASH.match(os.path.basename(path)) and not os.path.exists(side_path) and time.time() - mtime < SIDECAR_GRACE:
        time.sleep(SIDECAR_GRACE / 4)       # a running campaign writes the input first, its sidecar next
    if os.path.exists(side_path):
        try:
            sidecar = read_twin(side_path)
        except ScenarioError as e:
            raise ArtifactError(str(e)) from None
        if sidecar is None:                 # X.min + X.min.yaml from pfndiff minimize: the YAML is the input
            return load_scenario_input(side_path)
    if (problem := content_mismatch(path, data)) is not None:
        raise ArtifactError(problem)
    recorded = _recorded_scenario(sidecar, side_path)
    if sidecar is not None and recorded is not None and recorded != decode(data):
        # The bytes are intact (name check above) but this codec decodes them differently, e.g. a
        # changed default world: triage what the campaign actually ran, and say so.
        return Artifact(path, data, sidecar, mtime, recorded,
                        f"decodes differently with this codec (sidecar codec_version {sidecar.get('codec_version')}, "
                        f"now {VERSION}); triaged from the sidecar's scenario")
    return Artifact(path, data, sidecar, mtime)


def _recorded_scenario(sidecar: dict[str, Any] | None, side_path: str) -> Scenario | None:
    if sidecar is None or not isinstance(sidecar.get("scenario"), str):
        return None
    try:
        return loads_scenario(sidecar["scenario"], side_path)
    except ScenarioError as e:
        raise ArtifactError(f"{side_path}: sidecar field 'scenario' is not a scenario: {e.problem}") from None


# --- judging one artifact --------------------------------------------------------------------------

@dataclass
class Verdict:
    """One artifact, re-run."""
    artifact: Artifact
    pairs: list[Pair]
    status: str                       # reproduced | flaky | unreproduced | now-known | no-divergence | nondeterministic
    primary: str                      # cluster signature ("" for no-divergence)
    memberships: list[str]            # [primary] (empty: no cluster)
    runs: int                         # how many times it was run
    hits: dict[str, int]              # signature -> runs that showed it
    judgement: Judgement              # of a run that shows the primary signature (else the first run)
    scenario: Scenario
    note: str = ""
    also: list[str] = field(default_factory=list)    # other unknown signatures it shows, recorded ones first
    cause: RootCause | None = None                   # the root cause of the primary divergence
    causes: dict[str, tuple[RootCause, str]] = field(default_factory=dict)   # cause id -> (cause, its signature)

    def signature_for(self, cause_id: str) -> str:
        """The signature through which this artifact shows a cause (its primary if not one of its causes)."""
        return self.causes[cause_id][1] if cause_id in self.causes else self.primary


def campaign_pairs(directory: str) -> list[Pair]:
    """The pairs a campaign ran, from its per-process counters (``.stats/*.json``): what a raw
    input without sidecar in a campaign's artifact directory (e.g. libFuzzer's own ``timeout-*``)
    is re-run on."""
    pairs: list[Pair] = []
    for st in read_stats(directory):
        for p in st.get("pairs") or []:
            if isinstance(p, str) and "~" in p:
                a, _, b = p.partition("~")
                if (a, b) not in pairs:
                    pairs.append((a, b))
    return pairs


def _sim_only(pairs: list[Pair]) -> bool:
    return all(n.startswith("sim:") for p in pairs for n in p if n)


def _same_traces(a: dict[str, Trace], b: dict[str, Trace]) -> list[str]:
    return [n for n in a if n not in b or a[n].to_dict() != b[n].to_dict()]


def _artifact_pairs(art: Artifact) -> list[Pair]:
    """The pairs an artifact was run on: its sidecar's, else its scenario tags' or its campaign's."""
    if art.sidecar is not None:
        pairs = pairs_from_sidecar(art.sidecar)
        if not pairs:
            raise ArtifactError(f"{art.path}.yaml: the sidecar names no backends")
        return pairs
    pairs = art.tag_pairs or campaign_pairs(os.path.dirname(art.path))
    if not pairs:
        what = "its tags name no backend pair" if art.path.endswith((".yaml", ".yml")) else "no sidecar"
        raise ArtifactError(f"{art.path}: {what}; give the backends with --left/--right")
    return pairs


def _judge_for(art: Artifact, judges: JudgeCache, pairs: list[Pair], override: list[Pair] | None) -> Judge:
    try:
        return judges.get(pairs)
    except ArtifactError as e:
        where = f"{art.path}.yaml" if art.sidecar is not None and not override else art.path
        raise ArtifactError(f"{where}: {e}") from None


def _run(judge: Judge, sc: Scenario, runs: int, sim_only: bool) -> tuple[list[Judgement], list[str]]:
    """``runs`` judgements of the input, and (simulated pairs only) the backends whose traces the
    last run changed: a simulated backend must be deterministic."""
    all_runs = [judge.judge(sc)]
    nondet: list[str] = []
    for _ in range(runs - 1):
        j = judge.judge(sc)
        all_runs.append(j)
        if sim_only:
            nondet = _same_traces(all_runs[0].traces, j.traces)
    return all_runs, nondet


def _recorded_signatures(art: Artifact, only_pairs: list[Pair] | None) -> list[str]:
    """The signatures the campaign recorded for the input (sidecar first, then scenario tags),
    restricted to ``only_pairs`` when the backends are overridden."""
    recorded = [s["signature"] for s in (art.sidecar or {}).get("signatures") or [] if isinstance(s, dict)
                and isinstance(s.get("signature"), str)]
    if art.sidecar and art.sidecar["signature"] not in recorded:
        recorded.insert(0, art.sidecar["signature"])
    recorded += [s for s in art.tag_signatures if s not in recorded]
    if only_pairs:
        names = {f"{a}~{b}" if b else a for a, b in only_pairs}
        recorded = [s for s in recorded if (s.split(" ") + [""])[1] in names]
    return recorded


def judge_artifact(art: Artifact, judges: JudgeCache, override: list[Pair] | None = None,
                   host_runs: int = HOST_RUNS) -> Verdict:
    pairs = override or _artifact_pairs(art)
    judge = _judge_for(art, judges, pairs, override)
    sc = art.scenario()
    runs = SIM_RUNS if _sim_only(pairs) else host_runs
    all_runs, nondet = _run(judge, sc, runs, _sim_only(pairs))
    first = all_runs[0]
    note = art.note
    hits: dict[str, int] = {}
    for j in all_runs:
        for s in {d.signature for d in j.unknown}:
            hits[s] = hits.get(s, 0) + 1
    recorded = _recorded_signatures(art, pairs if override else None)
    fu = _usual_first(all_runs)
    if nondeterministic := nondet:
        primary = f"nondeterministic {','.join(sorted(nondeterministic))}"
        nd = make("nondeterministic", primary, f"{primary}: a simulated backend is not deterministic")
        return Verdict(art, pairs, "nondeterministic", primary, [nd.id], runs, hits, first, sc,
                       "a simulated backend gave different traces for the same input (a model bug)",
                       cause=nd, causes={nd.id: (nd, primary)})
    if fu is not None:
        primary = fu
        also = [s for s in dict.fromkeys([*recorded, *(d.signature for j in all_runs for d in j.unknown)])
                if s in hits and s != primary]
        status = "reproduced" if hits[primary] == runs else "flaky"
        shown = next(j for j in all_runs if j.find(primary) is not None)      # a run that shows it
        causes = _causes(judges.causer, sc, shown, primary)
        cause = next(iter(causes.values()))[0]
        return Verdict(art, pairs, status, primary, list(causes), runs, hits, shown, sc, note, also, cause, causes)
    if recorded:                              # kept in its recorded cluster, labelled
        primary = recorded[0]
        known = first.signatures.get(primary)
        if known:
            status, why = "now-known", "the catalogue now explains it: " + ", ".join(
                e for d in first.divs if d.signature == primary for e in d.entries)
        else:
            status, why = "unreproduced", f"0/{runs} runs showed the recorded signature"
        note = "; ".join(x for x in (why, note) if x)
        rc = _recorded_cause(art, primary)
        return Verdict(art, pairs, status, primary, [rc.id], runs, hits, first, sc, note, cause=rc,
                       causes={rc.id: (rc, primary)})
    return Verdict(art, pairs, "no-divergence", "", [], runs, hits, first, sc,
                   "; ".join(x for x in ("no unknown divergence", note) if x))


def _causes(causer: RootCauser, sc: Scenario, j: Judgement, primary: str) -> dict[str, tuple[RootCause, str]]:
    """The root cause of each pair's first unknown divergence (its diffs and the invariants of its
    two backends, in op order), the primary's first: one pair's bug does not hide another's, and
    what follows a pair's first divergence (a leak counted again at the end) is its consequence."""
    p = j.find(primary)
    assert p is not None
    groups: dict[str, Divergence] = {}
    pairs = {f"{d.left}~{d.right}": (d.left, d.right) for d in j.divs if d.right}
    for d in j.unknown:                                  # op order, pair diffs before invariants
        keys = [f"{d.left}~{d.right}"] if d.right else \
            [k for k, (a, b) in pairs.items() if d.left in (a, b)] or [f"{d.oracle} {d.left}"]
        for k in keys:
            groups.setdefault(k, d)
    out: dict[str, tuple[RootCause, str]] = {}
    for d in [p, *groups.values()]:
        c = causer(sc, d, j.unknown)
        out.setdefault(c.id, (c, d.signature))
    return out


def _recorded_cause(art: Artifact, signature: str) -> RootCause:
    """The cause the campaign recorded for a signature that no longer shows (else one named by it)."""
    rc = (art.sidecar or {}).get("root_cause")
    if isinstance(rc, dict) and isinstance(rc.get("id"), str) and (art.sidecar or {}).get("signature") == signature:
        try:
            return RootCause.from_dict(rc)
        except (KeyError, TypeError, ValueError):
            pass
    return make("signature", signature, signature)


def _usual_first(runs: list[Judgement]) -> str | None:
    """The first unknown signature most runs show (the first run's on a tie): a flaky host run
    that happened to miss the bug does not decide the cluster."""
    firsts = [d.signature for j in runs if (d := j.first_unknown()) is not None]
    if not firsts:
        return None
    return max(dict.fromkeys(firsts), key=firsts.count)


class JudgeCache:
    """One Judge per distinct pair list (backends are created once)."""
    def __init__(self) -> None:
        self._j: dict[tuple[Pair, ...], Judge] = {}
        self.catalogue = load_catalogue()
        self.causer = RootCauser(self.catalogue)

    def get(self, pairs: list[Pair]) -> Judge:
        key = tuple(pairs)
        if key not in self._j:
            try:
                self._j[key] = Judge(list(pairs), self.catalogue)
            except (BackendError, ValueError) as e:
                raise ArtifactError(str(e)) from None
        return self._j[key]

    def close(self) -> None:
        """Stop the backends' helpers (real-host workers, QEMU guests) now, not at exit."""
        for j in self._j.values():
            for b in j.backends.values():
                close = getattr(b, "close", None)
                if close is not None:
                    close()


# --- clusters ----------------------------------------------------------------------------------------

@dataclass
class Cluster:
    """The artifacts of one root cause; their primary signatures are the fine key inside it."""
    cause: RootCause
    members: list[Verdict] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.cause.id

    @property
    def signatures(self) -> list[str]:
        """The members' primary signatures, most frequent first."""
        prim = [v.signature_for(self.id) for v in self.members]
        return sorted(dict.fromkeys(prim), key=lambda s: -prim.count(s))

    @property
    def signature(self) -> str:
        return self.signatures[0]

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def known(self) -> bool:
        return all(v.status == "now-known" for v in self.members)

    @property
    def first_seen(self) -> str:
        return min(v.artifact.seen for v in self.members)

    @property
    def last_seen(self) -> str:
        return max(v.artifact.seen for v in self.members)

    @property
    def runs(self) -> int:
        return sum(v.runs for v in self.members)

    @property
    def hits(self) -> int:
        return sum(v.hits.get(v.signature_for(self.id), 0) for v in self.members)

    @property
    def status(self) -> str:
        statuses = {v.status for v in self.members}
        for s in ("nondeterministic", "reproduced", "flaky", "now-known", "unreproduced"):
            if s in statuses:
                return s
        return "unreproduced"

    def representative(self) -> Verdict:
        """The smallest member that shows the cluster's main signature (fewest ops, then bytes)."""
        sig = self.signature
        live = [v for v in self.members if v.signature_for(self.id) == sig and v.hits.get(sig)] or \
            [v for v in self.members if v.signature_for(self.id) == sig] or self.members
        return min(live, key=lambda v: (len(v.scenario.ops), len(v.artifact.data), v.artifact.name))


def cluster(verdicts: list[Verdict]) -> list[Cluster]:
    """One cluster per root cause; an artifact that shows several (one per pair) is in each."""
    by: dict[str, Cluster] = {}
    for v in verdicts:
        for cid in v.memberships:
            cause = v.causes[cid][0] if cid in v.causes else make("signature", v.primary, v.primary)
            by.setdefault(cause.id, Cluster(cause)).members.append(v)
    return sorted(by.values(), key=lambda c: (c.known, c.first_seen, c.id))
