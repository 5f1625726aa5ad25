"""Judge one scenario on a set of backend pairs: every trace, every divergence, sorted.

Why not ``engine.Checker.check``: triage, minimisation and replay need the traces and must not
record anything (no stats, no artifacts).  The oracle calls are the engine's: ``compare`` per pair
without invariants, then ``check_invariants`` once per backend, and a model exception becomes a
divergence of its own, so a signature computed here equals the one the campaign wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmsim import get_backend
from kvmsim.backend import Backend, BackendError
from kvmsim.scenario import Scenario
from kvmsim.trace import Trace
from oracles.catalogue import Catalogue, load_catalogue
from oracles.diff import Divergence, check_invariants, report_order
from oracles.pair import compare_pair

from fuzz.judging.engine import _exception_divergence, _quirks

Pair = tuple[str, str]          # (left, right); right == "" for a single-backend (invariant) check


@dataclass
class Judgement:
    traces: dict[str, Trace]
    divs: list[Divergence]                       # sorted: op index, then pair diffs before invariants

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
        traces: dict[str, Trace] = {}
        crashed: list[Divergence] = []
        for name in only or self.names:
            try:
                traces[name] = self.backends[name].run(sc)
            except Exception as e:                       # a model crash is a finding (needs exc_info)
                crashed.append(_exception_divergence(name, e))
        return traces, crashed

    def judge(self, sc: Scenario, traces: dict[str, Trace] | None = None) -> Judgement:
        crashed: list[Divergence] = []
        if traces is None:
            traces, crashed = self.run(sc)
        assert self.catalogue is not None
        divs = list(crashed)
        for left, right in self.pairs:
            if right and left in traces and right in traces and left != right:
                divs.extend(compare_pair(sc, traces[left], traces[right], self.catalogue,
                                         lambda n, s: self.backends[n].run(s))[0])
        for t in traces.values():
            divs.extend(check_invariants(sc, t, self.catalogue))
        divs.sort(key=report_order)
        return Judgement(traces, divs)

    def spec_ids(self, j: Judgement) -> list[str]:
        """The spec rows involved: catalogue rows of the known divergences, plus the literal
        sketch's quirks when that backend took part (same rule as the campaign's sidecars)."""
        assert self.catalogue is not None
        ids = {self.catalogue.by_id[e.split(" (")[0]].spec for d in j.divs for e in d.entries
               if e.split(" (")[0] in self.catalogue.by_id}
        ids |= {q for n in self.names for q in _quirks(n)}
        return sorted(ids)


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
