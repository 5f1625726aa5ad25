"""Judge one scenario on a set of backend pairs: every trace, every divergence.  The one judging
core: campaigns (``engine.Checker`` records what it finds), triage, minimisation, replay and the
corpus tools all judge through it, so a signature computed anywhere equals the one a campaign wrote.

Each pair is compared at the level both sides observe (``oracles.pair.compare_pair``, a real
backend's own quirks explaining what they can), each trace's invariants are checked once, and a
crash of a model or of the oracles is a divergence of its own, never an exception.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from fuzz.judging.quirks import quirks_of
from kvmsim import get_backend
from kvmsim.backend import Backend, BackendError
from kvmsim.realised import Coverage
from kvmsim.scenario import Scenario
from kvmsim.trace import Trace
from oracles.catalogue import Catalogue, load_catalogue
from oracles.context import op_contexts
from oracles.diff import Divergence, RecordDiff, RecordDiffs, check_invariants, report_order
from oracles.normalise import Normalised
from oracles.pair import compare_pair

Pair = tuple[str, str]          # (left, right); right == "" for a single-backend (invariant) check


def pair_from_tag(text: str) -> Pair:
    """A pair as a scenario's ``pairs`` tag writes it: ``left~right``, or ``left`` alone."""
    parts = text.split("~") + [""]
    return parts[0], parts[1]


@dataclass
class Judgement:
    traces: dict[str, Trace]
    divs: list[Divergence]                       # sorted: op index, then pair diffs before invariants
    found: list[Divergence] = field(default_factory=list)       # the same, in the order they were found
    compared: dict[Pair, tuple[Trace, Trace]] = field(default_factory=dict)   # the traces each pair compared
    coverage: dict[Pair, Coverage] = field(default_factory=dict)             # ops each pair observed, compared
    # each pair's differing records by op index (shared with the judge's memo: read, never change)
    differing: dict[Pair, dict[int, RecordDiff]] = field(default_factory=dict)

    @property
    def unknown(self) -> list[Divergence]:
        return [d for d in self.divs if not d.known]

    @property
    def signatures(self) -> dict[str, bool]:
        """signature -> known (a signature is unknown if any of its divergences is)."""
        out: dict[str, bool] = {}
        for d in self.divs:
            out[d.signature] = out.get(d.signature, True) and d.known
        return out

    def first_unknown(self) -> Divergence | None:
        return next((d for d in self.divs if not d.known), None)

    def find(self, signature: str) -> Divergence | None:
        return next((d for d in self.divs if d.signature == signature), None)


@dataclass
class Judge:
    """Backends are created once and reused; ``judge`` is then a pure function of the scenario."""
    pairs: list[Pair]
    catalogue: Catalogue | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    diffs: RecordDiffs = field(default_factory=RecordDiffs)      # record differences, across judgements

    def __post_init__(self) -> None:
        if self.catalogue is None:
            self.catalogue = load_catalogue()
        for name in self.names:
            if name not in self.backends:
                b = get_backend(name)
                reason = b.available()
                if reason is not None:
                    raise BackendError(f"backend {name} is not available here: {reason}")
                self.backends[name] = b

    @property
    def names(self) -> list[str]:
        seen: list[str] = []
        for p in self.pairs:
            for n in p:
                if n and n not in seen:
                    seen.append(n)
        return seen

    def run(self, sc: Scenario, only: list[str] | None = None) -> tuple[dict[str, Trace], list[Divergence]]:
        """Each backend's trace, in the order named; a backend that raises is a divergence."""
        traces: dict[str, Trace] = {}
        crashed: list[Divergence] = []
        for name in only or self.names:
            try:
                traces[name] = self.backends[name].run(sc)
            except Exception as e:                       # a model crash is a finding (needs exc_info)
                crashed.append(exception_divergence(name, e))
        return traces, crashed

    def judge(self, sc: Scenario, traces: dict[str, Trace] | None = None) -> Judgement:
        crashed: list[Divergence] = []
        if traces is None:
            traces, crashed = self.run(sc)
        return self.compare(sc, traces, crashed)

    def compare(self, sc: Scenario, traces: dict[str, Trace], crashed: list[Divergence] | None = None) -> Judgement:
        """Every pair whose two traces exist, then every trace's invariants (in the order of ``traces``)."""
        assert self.catalogue is not None
        found = list(crashed or [])
        j = Judgement(traces, [], found)
        try:
            ctxs = LazyContexts(sc)
            norms = Normalised()                 # a trace in two pairs is normalised once
            for left, right in self.pairs:
                if right and left in traces and right in traces and left != right:
                    differing = j.differing[(left, right)] = {}
                    divs, cov, lt, rt = compare_pair(sc, traces[left], traces[right], self.catalogue, self._run,
                                                     ctxs=ctxs, explain=self._explain, norms=norms,
                                                     diffs=self.diffs, differing=differing)
                    j.compared[(left, right)] = lt, rt
                    j.coverage[(left, right)] = cov
                    found.extend(divs)
            for t in traces.values():
                found.extend(check_invariants(sc, t, self.catalogue, ctxs))
        except Exception as e:               # an oracle bug is a finding too, and must not stop a campaign
            found.append(exception_divergence("oracles", e))
        j.divs = sorted(found, key=report_order)
        return j

    def _run(self, name: str, sc: Scenario) -> Trace:
        return self.backends[name].run(sc)

    def _explain(self, sc: Scenario, index: int, fields: list[str], model: Trace, real: Trace) -> dict[str, str]:
        backend = self.backends.get(real.backend)
        return backend.explain_divergence(sc, index, fields, model, real) if backend is not None else {}

    def catalogue_rows(self, divs: list[Divergence]) -> list[str]:
        """Spec rows of the catalogue entries that explain some of these divergences."""
        assert self.catalogue is not None
        return sorted({self.catalogue.by_id[e.split(" (")[0]].spec for d in divs for e in d.entries
                       if e.split(" (")[0] in self.catalogue.by_id})

    def spec_ids(self, j: Judgement) -> list[str]:
        """The spec rows involved: catalogue rows of the known divergences, plus the literal
        sketch's quirks when that backend took part (same rule as the campaign's sidecars)."""
        return sorted(set(self.catalogue_rows(j.divs)) | {q for n in self.names for q in quirks_of(n)})


class LazyContexts(list):
    """The op contexts of one scenario, computed on first use and shared by every pair."""

    def __init__(self, sc: Scenario) -> None:
        super().__init__()
        self.sc, self.done = sc, False

    def _fill(self) -> None:
        if not self.done:
            self.done = True
            self.extend(op_contexts(self.sc))

    def __getitem__(self, i):
        self._fill()
        return super().__getitem__(i)

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def __iter__(self):
        self._fill()
        return super().__iter__()


def exception_divergence(backend: str, e: Exception) -> Divergence:
    """A crash of a backend (or of the oracles) as a divergence, signed by where it was raised."""
    tb = traceback.extract_tb(sys.exc_info()[2])
    where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb)), "?")
    d = Divergence("exception", backend, "", 0, "run", ["exception"], "exception",
                   {"exception": f"{type(e).__name__}: {e}", "at": where}, {})
    d.signature = f"exception {backend} {type(e).__name__} at {where}"
    return d


def spec_ids(d: Divergence, cause: dict[str, Any], cat: Catalogue) -> list[str]:
    """The spec rows that really apply to a divergence: its root cause's rows and those of the
    catalogue entries that explain some of its fields (their conditions matched)."""
    ids = set(cause.get("spec") or ())
    ids |= {cat.by_id[e.split(" (")[0]].spec for e in d.explained.values() if e.split(" (")[0] in cat.by_id}
    return sorted(ids, key=lambda s: (s[0], int("".join(c for c in s[1:] if c.isdigit()) or 0), s))


def pairs_from_sidecar(sidecar: dict) -> list[Pair]:
    """The campaign's pairs, as far as the sidecar shows them: every diff divergence names its
    pair; a finding with only invariant violations names its one backend."""
    pairs: list[Pair] = []
    for d in sidecar.get("divergences") or []:
        if isinstance(d, dict) and d.get("right"):
            p = (str(d["left"]), str(d["right"]))
            if p not in pairs:
                pairs.append(p)
    if not pairs:
        pair = sidecar.get("pair") or []
        if isinstance(pair, list) and len(pair) == 2:
            pairs.append((str(pair[0]), str(pair[1])))
        elif isinstance(pair, list) and len(pair) == 1:
            pairs.append((str(pair[0]), ""))
    for d in sidecar.get("divergences") or []:       # an invariant on a backend outside every pair
        if isinstance(d, dict) and not d.get("right") and d.get("left"):
            if not any(d["left"] in p for p in pairs):
                pairs.append((str(d["left"]), ""))
    return pairs
