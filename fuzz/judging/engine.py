"""One fuzz input, judged and recorded: decode, judge it on the campaign's pairs (``judge.Judge``:
every backend run once, each pair compared, each trace's invariants checked), count known
divergences, write an artifact for each signature not seen before.  Independent of the fuzzer
runtime, so tests and ``pfndiff corpus`` use it directly.

Why no crash for a finding (by default): the campaign must keep going and count; libFuzzer's own
crash path would stop a non-fork run at the first finding and name nothing but the input.  So
findings are written here (atomically) and the target returns normally.  Crash mode (``crash``,
for engines such as ClusterFuzzLite that only see crashes) raises for the input's finding after
recording it, from frames that name it (fuzz.judging.crash).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fuzz.inputs.codec import VERSION as CODEC_VERSION
from fuzz.inputs.codec import parse
from fuzz.judging import artifacts as art
from fuzz.judging import crash as crash_mode
from fuzz.judging.judge import Judge, Judgement, spec_ids
from fuzz.judging.quirks import quirks_of
from fuzz.judging.rootcause import RootCauser
from kvmsim.backend import BackendError
from kvmsim.realised import Coverage
from kvmsim.scenario import Scenario, dump_scenario
from kvmsim.trace import Trace
from oracles.bounded import BoundedMemo
from oracles.catalogue import Catalogue
from oracles.diff import Divergence

STATS_EVERY = 2.0
# Judgements kept for inputs that decode to a scenario judged recently.  Measured on recorded
# libFuzzer streams: 2048 -> 8192 gave +7 % exec/s on sim:g2~sim:g3 and +31 % on the default
# campaign's three pairs, for ~190 / ~355 MB more RSS (bounded: a scenario has at most 16 ops).
MEMO_SIZE = 8192


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``sim:g2~sim:g3;sim:g2~sim:g2s-literal`` (``,`` also separates left from right)."""
    pairs = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        sep = "~" if "~" in part else ","
        left, _, right = part.partition(sep)
        if not left or not right:
            raise ValueError(f"bad pair {part!r}: expected LEFT~RIGHT")
        pairs.append((left, right))
    if not pairs:
        raise ValueError("no backend pair given")
    return pairs


@dataclass
class SigStat:
    signature: str
    known: bool
    pair: str
    entries: list[str]
    count: int = 0
    first_input: str = ""
    first_seen: float = 0.0
    first_exec: int = 0
    cause: dict[str, Any] | None = None        # RootCause.to_dict() of the first input that showed it


@dataclass(slots=True, eq=False)
class Repeat:
    """What one more showing of a judgement adds to a checker's counts, worked out on its first
    showing: each pair's running coverage total with the judgement's coverage, and (once every
    signature it shows has its ``SigStat``) the stats one more input showing it counts.  Why: the
    memo shows most inputs a judgement seen before, and looking up each pair's total and each
    signature's stats for every one of them (a hash of the input bytes, the clock, a set) cost
    more than the counting."""
    judgement: Judgement
    totals: tuple[tuple[Coverage, Coverage], ...]            # (the pair's running total, this judgement's)
    counted: tuple[SigStat, ...] | None = None                # None until its signatures are all counted once


@dataclass
class Checker:
    pairs: list[tuple[str, str]]
    artifacts: str | None = None
    catalogue: Catalogue | None = None
    t0: float = field(default_factory=time.time)
    execs: int = 0
    stats: dict[str, SigStat] = field(default_factory=dict)
    crash: bool = False               # raise for an unknown divergence (fuzz.judging.crash) instead of going on
    compared: dict[str, Coverage] = field(default_factory=dict)     # pair -> ops observed and compared
    observe: Callable[[Scenario, Judgement], None] | None = None     # sees every judgement (semantic feedback)
    memo_size: int = MEMO_SIZE
    memo_hits: int = 0
    _last_flush: float = 0.0

    def __post_init__(self) -> None:
        try:
            self.judge = Judge(list(self.pairs), self.catalogue)
        except BackendError as e:
            raise ValueError(str(e)) from None
        self.catalogue = self.judge.catalogue
        self.order = sorted(self.judge.names)               # the order backends run and are checked in
        self.backends = {n: self.judge.backends[n] for n in self.order}
        self.causer = RootCauser(self.catalogue, dict(self.backends))
        self._memo: BoundedMemo[tuple, Judgement] = BoundedMemo(self.memo_size)
        # an OrderedDict: ``decoded`` evicts its oldest entry, in O(1) there (oracles.bounded)
        self._by_records: OrderedDict[tuple, tuple[Scenario, Judgement]] = OrderedDict()
        self._compared_by_pair: dict[tuple[str, str], Coverage] = {}     # the entries of ``compared``, by pair
        self._repeats: BoundedMemo[int, Repeat] = BoundedMemo(max(self.memo_size, 1))   # id(judgement) ->

    def judgement(self, sc: Scenario) -> Judgement:
        """The judgement of ``sc``, remembered for the last ``memo_size`` distinct scenarios.  Why:
        judging is a pure function of the decoded scenario, and under libFuzzer most mutations
        (bytes of a dropped record, a value clamped to its bound) decode to a scenario already
        judged -- about four inputs in five on ``sim:g2~sim:g3`` from the seed corpus."""
        key = sc.repr_key()
        j = self._memo.get(key)
        if j is not None:
            self.memo_hits += 1
            return j
        j = self.judge.compare(sc, *self.judge.run(sc, only=self.order))
        if self.memo_size:
            self._memo.put(key, j)
        return j

    def decoded(self, data: bytes) -> tuple[Scenario, Judgement]:
        """The scenario ``data`` decodes to and its judgement.  Inputs whose kept records are the
        same bytes (``codec.Parsed.key``) decode to equal scenarios, so the last ``memo_size``
        keys are remembered too: a mutation of skipped bytes costs reading the records, not
        building, repairing and naming the scenario again."""
        parsed = parse(data)
        got = self._by_records.get(parsed.key)
        if got is not None:
            self.memo_hits += 1
            return got
        sc = parsed.scenario()
        j = self.judgement(sc)
        if self.memo_size:
            if len(self._by_records) >= self.memo_size:
                del self._by_records[next(iter(self._by_records))]
            self._by_records[parsed.key] = sc, j
        return sc, j

    # --- one input ------------------------------------------------------------------------------
    def check(self, data: bytes) -> list[Divergence]:
        """Every divergence of this input (known and unknown, in the order found), after recording them."""
        self.execs += 1
        sc, j = self.decoded(data)
        if self.observe is not None:
            self.observe(sc, j)
        rep = self._repeats.get(id(j))
        if rep is None or rep.judgement is not j:
            rep = self._repeat_of(j)
        for total, cov in rep.totals:
            total.add(cov)
        divs = list(j.found)
        if rep.counted is not None:                  # every signature it shows is counted already: once more
            for st in rep.counted:
                st.count += 1
        elif divs:
            self._record(data, sc, divs, j.traces, j.compared)
            rep.counted = tuple(self.stats[s] for s in dict.fromkeys(d.signature for d in divs))
        else:
            rep.counted = ()
        self._maybe_flush()
        if self.crash and divs:
            finding = crash_mode.primary(divs)
            if finding is not None:
                self.flush()
                crash_mode.raise_finding(sc, finding, self.catalogue_rows(divs), self.pairs, art.input_name(data),
                                         self.cause_of, divs)
        return divs

    def _repeat_of(self, j: Judgement) -> Repeat:
        """``j``'s Repeat, made now and remembered for the last ``memo_size`` judgements shown."""
        totals = []
        for pair, cov in j.coverage.items():
            total = self._compared_by_pair.get(pair)
            if total is None:
                total = self._compared_by_pair[pair] = self.compared.setdefault("~".join(pair), Coverage())
            totals.append((total, cov))
        return self._repeats.put(id(j), Repeat(j, tuple(totals)))

    def _record(self, data: bytes, sc: Scenario, divs: list[Divergence], traces: dict[str, Trace],
                compared: dict[tuple[str, str], tuple[Trace, Trace]] | None = None) -> None:
        now = time.time() - self.t0
        name = art.input_name(data)
        new: list[Divergence] = []
        seen: set[str] = set()
        for d in divs:
            if d.signature in seen:
                continue
            seen.add(d.signature)
            st = self.stats.get(d.signature)
            if st is None:
                label = f"{d.left}~{d.right}" if d.right else d.left
                st = self.stats[d.signature] = SigStat(d.signature, d.known, label, d.entries, 0, name,
                                                       round(now, 3), self.execs)
                if not d.known:
                    new.append(d)
                    st.cause = self.cause_of(sc, d, divs).to_dict()
            st.count += 1
        if new and self.artifacts:
            fresh = [d for d in new if art.claim_signature(self.artifacts, d.sig_id, name)]
            if fresh:
                shown = dict(traces)
                pair = (fresh[0].left, fresh[0].right)
                if compared and pair in compared:             # the traces the pair compared (realised)
                    shown[pair[0]], shown[pair[1]] = compared[pair]
                art.write_finding(self.artifacts, data, self.sidecar(sc, fresh, divs, shown, now))
                self.flush()

    def cause_of(self, sc: Scenario, d: Divergence, divs: list[Divergence] | None = None):
        """The root cause (fuzz.judging.rootcause); a failure there must not stop the campaign."""
        try:
            return self.causer(sc, d, divs)
        except Exception as e:
            from fuzz.judging.rootcause import make
            return make("exception", f"rootcause {type(e).__name__}", f"root-cause analysis failed: {e}")

    def sidecar(self, sc: Scenario, fresh: list[Divergence], divs: list[Divergence], traces: dict[str, Trace],
                now: float) -> dict[str, Any]:
        first = fresh[0]
        backends = [first.left] + ([first.right] if first.right else [])
        catalogue = self.catalogue
        assert catalogue is not None
        causes = {d.signature: (self.stats[d.signature].cause or self.cause_of(sc, d, divs).to_dict()) for d in fresh}
        return {
            "signature": first.signature, "id": first.sig_id,
            "root_cause": causes[first.signature],
            "signatures": [{"signature": d.signature, "id": d.sig_id, "root_cause": causes[d.signature]["id"]}
                           for d in fresh],
            "oracle": first.oracle, "pair": backends,
            "first_differing_op": {"index": first.index, "op": first.op,
                                   "args": sc.ops[first.index].args if first.index < len(sc.ops) else None},
            "field": first.field, "fields": first.fields,
            "observations": {first.left: first.left_obs, **({first.right: first.right_obs} if first.right else {})},
            "spec_ids": spec_ids(first, causes[first.signature], catalogue),
            "spec_ids_involved": self.catalogue_rows(divs),
            "quirks_enabled": sorted({q for n in traces for q in quirks_of(n)}),
            "divergences": [d.to_dict() for d in divs],
            "backend_versions": {n: self.backends[n].version() for n in backends if n in self.backends},
            "host": art.host_info(), "codec_version": CODEC_VERSION,
            "found_after_s": round(now, 3), "execs": self.execs,
            "scenario": dump_scenario(sc),
            "traces": {n: traces[n].to_dict() for n in backends if n in traces},
        }

    def catalogue_rows(self, divs: list[Divergence]) -> list[str]:
        """Spec rows of the catalogue entries that explain some of these divergences."""
        return self.judge.catalogue_rows(divs)

    # --- counters ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "execs": self.execs, "t0": self.t0, "updated": time.time(),
                "pairs": [f"{a}~{b}" for a, b in self.pairs],
                "compared": {p: c.to_dict() for p, c in self.compared.items()},
                "signatures": {s: vars(st) for s, st in self.stats.items()}}

    def flush(self) -> None:
        self._last_flush = time.time()
        if self.artifacts:
            art.write_stats(self.artifacts, self.snapshot())

    def _maybe_flush(self) -> None:
        if self.artifacts and time.time() - self._last_flush >= STATS_EVERY:
            self.flush()
