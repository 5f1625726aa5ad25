"""Compare two traces of one scenario: every divergence, explained or not.

Two levels (DESIGN principle 5): ``api`` between simulated generations (API records, VMM
records and WARN/BUG events), ``vmm`` for any pair that includes a backend without API
observations (a real host): only what a VMM sees is compared.

One divergence per differing op record; its ``fields`` are all the fields that differ after
normalisation, ``field`` is the first one no catalogue entry explains (or the first one, if all
are explained).  Single-trace invariant violations become divergences of their own.
"""

from __future__ import annotations

import dataclasses
import marshal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmsim.scenario import Scenario
from kvmsim.trace import Trace

from .bounded import BoundedMemo
from .catalogue import NOTHING, Asks, AtOp, Catalogue, family
from .context import op_contexts
from .invariants import check_trace
from .normalise import API_LEVEL, NA, REPORTING, VMM_LEVEL, Normalised
from .signature import make_signature, op_class, signature_id

PRIORITY = ("events", "api.oops", "api.skipped", "api.result", "api.ret", "vmm.outcome", "vmm.ret", "api.frame",
            "api.method", "vmm.exits", "vmm.data", "vmm.mmio", "vmm.signals", "vmm.emulated", "api.writable",
            "api.map_writable", "api.spte", "api.mmio_spte", "api.async_pf", "api.held", "api.pinned", "api.leaked",
            "api.pins_leaked", "api.released", "api.unpinned", "api.page", "api.faults", "api.accessed", "api.dirty",
            "api.dirty_logged", "vmm.dirty")
_RANK = {f: i for i, f in enumerate(PRIORITY)}
_MISSING = object()


@dataclass
class Divergence:
    """One divergence.  Its ``left_obs``, ``right_obs`` and ``explained`` may be shared with the
    divergences made from the same verdict (oracles.diff.Verdict): give it new ones, never change them."""
    oracle: str                   # diff:api | diff:vmm | inv:<name>
    left: str                     # backend (the one trace, for invariants)
    right: str                    # "" for invariants
    index: int                    # op index (len(ops) = end of scenario)
    op: str
    fields: list[str]
    field: str
    left_obs: dict[str, Any]
    right_obs: dict[str, Any]
    explained: dict[str, str] = dataclasses.field(default_factory=dict)   # `field` is a column name here
    signature: str = ""

    @property
    def known(self) -> bool:
        return bool(self.fields) and all(f in self.explained for f in self.fields)

    @property
    def entries(self) -> list[str]:
        return sorted(set(self.explained.values()))

    @property
    def sig_id(self) -> str:
        return signature_id(self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {"signature": self.signature, "id": self.sig_id, "known": self.known, "entries": self.entries,
                "oracle": self.oracle, "left": self.left, "right": self.right, "op_index": self.index,
                "op": self.op, "field": self.field, "fields": self.fields, "explained": self.explained,
                "left_obs": _plain(self.left_obs), "right_obs": _plain(self.right_obs)}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: ("n/a" if v is NA else v) for k, v in d.items()}


def _raw_same(a: Any, b: Any) -> bool:
    return a.api == b.api and a.vmm == b.vmm and a.events == b.events


def _family(t: Trace) -> str:
    """A real host counts as the generation its kernel implements (trace meta ``generation``),
    so the catalogue's VMM-visible entries apply to sim-vs-host pairs too."""
    fam = family(t.backend)
    if fam == "host" and t.meta.get("generation") in ("g1", "g2", "g2s", "g2f", "g3"):
        return t.meta["generation"]
    return fam


def level_for(left: Trace, right: Trace) -> str:
    """API level only when both traces carry API observations (simulated backends)."""
    for t in (left, right):
        if not t.backend.startswith("sim:"):
            return VMM_LEVEL
        for r in t.records:
            if isinstance(r.api, dict) and "not_observable" in r.api:
                return VMM_LEVEL
    return API_LEVEL


def _order(fields: list[str]) -> list[str]:
    return sorted(fields, key=lambda f: (_RANK.get(f, len(_RANK)), f))


def compare(sc: Scenario, left: Trace, right: Trace, cat: Catalogue, level: str | None = None,
            invariants: bool = True, ctxs: Sequence[dict[str, Any]] | None = None,
            norms: Normalised | None = None, diffs: RecordDiffs | None = None,
            differing: dict[int, RecordDiff] | None = None) -> list[Divergence]:
    """Every divergence between two traces of ``sc``, first differing op first.  ``ctxs``: the op
    contexts if the caller already has them (oracles.context.op_contexts; read only if an op needs
    its context, so a lazy sequence is worked out only then); ``norms``: the records
    normalised so far, if the caller compares these traces in other pairs too; ``diffs``: the
    record differences remembered from earlier comparisons (``RecordDiffs``); ``differing``, if
    given, receives the difference of each op whose two records differ, by op index."""
    level = level or level_for(left, right)
    fams = (_family(left), _family(right))
    asks = [cat.asks(op.kind, fams) for op in sc.ops]
    if not invariants and not any(a.expecting for a in asks) and \
            all(_raw_same(a, b) for a, b in zip(left.records, right.records)):
        return []                         # the common case when fuzzing: nothing to normalise
    walk = _Walk(sc, left, right, cat, level, fams, asks, _contexts_of(sc, ctxs), norms or Normalised(), diffs,
                 differing)
    for lrec, rrec in zip(left.records, right.records):
        if lrec.api == rrec.api and lrec.vmm == rrec.vmm and lrec.events == rrec.events:      # _raw_same
            walk.same_record(lrec, rrec)
        else:
            walk.different_record(lrec, rrec)
    out = walk.out
    if invariants and level == API_LEVEL:
        seen: set[str] = set()
        for t in (left, right):
            if t.backend in seen:
                continue
            seen.add(t.backend)
            out.extend(check_invariants(sc, t, cat, walk.worked_out if walk.worked_out is not None else ctxs))
    out.sort(key=lambda d: (d.index, d.oracle != f"diff:{level}"))
    return out


def _contexts_of(sc: Scenario, ctxs: Sequence[dict[str, Any]] | None) -> Callable[[], list[dict[str, Any]]]:
    """The op contexts as a function called on first need: the caller's (a list, or a lazy sequence
    such as fuzz.judging.judge.LazyContexts, read into a plain list to index), or worked out here."""
    if ctxs is None:
        return lambda: op_contexts(sc)
    if type(ctxs) is list:
        return lambda: ctxs
    return lambda: list(ctxs)


@dataclass
class _Walk:
    """The op-by-op walk of ``compare`` over two traces, and what it carries from op to op: the
    divergences so far and the gfns or host pages a known divergence changed (``tainted``).  An op's
    context is read only where the catalogue could read it (``asks``) or a taint could apply, so the
    contexts (``contexts``, called on first need) are often never worked out."""
    sc: Scenario
    left: Trace
    right: Trace
    cat: Catalogue
    level: str
    fams: tuple[str, str]
    asks: list[Asks]
    contexts: Callable[[], list[dict[str, Any]]]
    norms: Normalised
    diffs: RecordDiffs | None = None
    differing: dict[int, RecordDiff] | None = None
    out: list[Divergence] = dataclasses.field(default_factory=list)
    tainted: dict[Any, str] = dataclasses.field(default_factory=dict)   # gfn or host page -> entry id
    worked_out: list[dict[str, Any]] | None = None                       # the contexts, once needed
    oracle: str = dataclasses.field(init=False)                          # diff:<level>

    def __post_init__(self) -> None:
        self.oracle = f"diff:{self.level}"

    def ctx(self, i: int) -> dict[str, Any]:
        ctxs = self.worked_out
        if ctxs is None:
            ctxs = self.worked_out = self.contexts()
        return ctxs[i]

    def cascade(self, i: int) -> str | None:
        """``_cascade`` at op ``i`` (None without a taint: no context to read)."""
        return _cascade(self.ctx(i), self.tainted) if self.tainted else None

    def at(self, i: int) -> AtOp:
        """The catalogue's view of op ``i`` for this pair (asked once per op by each reader)."""
        if not self.asks[i].any:
            return NOTHING                # what ``Catalogue.at`` gives without reading the context
        op = self.sc.ops[i]
        return self.cat.at("diff", op.kind, self.fams, op.args, self.ctx(i))

    def same_record(self, lrec: Any, rrec: Any) -> None:
        """Identical records: only an expected divergence that did not appear, or a taint."""
        i = lrec.index
        at = None
        if self.asks[i].expecting and self.cascade(i) is None:
            at = self.at(i)
            if at.asserting:
                n = self.norms(lrec, self.level)[0]           # the records are equal: so are their normal forms
                self.out.extend(_missing(self.sc, i, self.left, self.right, self.cat, at, (n, n)))
        self.taint_if_applies(i, at)

    def taint_if_applies(self, i: int, at: AtOp | None = None) -> None:
        """An entry whose conditions on the op hold changes the worlds at its gfn even when the op's
        observations agree (G3's gfn_to_page(write=false) leaves a page read-only that an older
        gfn_to_page made writable): later differences there are its consequences."""
        if not self.asks[i].tainting:
            return                        # no entry of the op's kind taints on its op conditions
        ctx = self.ctx(i)
        gfn = ctx.get("ctx.gfn")
        if gfn is not None and gfn not in self.tainted:
            cause = (at or self.at(i)).taint
            if cause is not None:
                _taint(self.tainted, ctx, cause)

    def different_record(self, lrec: Any, rrec: Any) -> None:
        i = lrec.index
        if self.diffs is not None:
            rd = self.diffs(lrec, rrec, self.level, self.norms)
        else:
            ln, rn, unordered = _normalised_difference(lrec, rrec, self.level, self.norms)
            rd = RecordDiff(ln, rn, tuple(_order(unordered)))
        if self.differing is not None and rrec.index == i:
            self.differing[i] = rd
        cause = self.cascade(i)
        at = None
        if self.asks[i].expecting and cause is None:
            at = self.at(i)
            if at.asserting:
                self.out.extend(_missing(self.sc, i, self.left, self.right, self.cat, at, (rd.ln, rd.rn)))
        if not rd.diff:                 # records differ only in what normalisation drops (the call's name)
            self.taint_if_applies(i, at)
            return
        op = self.sc.ops[i]
        v = self.verdict(rd, at or self.at(i), cause, op_class(op.kind, op.args))
        d = Divergence(self.oracle, self.left.backend, self.right.backend, i, op.kind, list(rd.diff), v.first,
                       v.left_obs, v.right_obs, v.explained)
        d.signature = v.signature
        if v.taint is not None and "ctx.gfn" in self.ctx(i):
            _taint(self.tainted, self.ctx(i), v.taint)
        self.out.append(d)

    def verdict(self, rd: RecordDiff, at: AtOp, cause: str | None, opc: str) -> Verdict:
        """The verdict on two differing records (``rd``) at an op the catalogue sees as ``at``, an
        earlier known divergence at its gfn being ``cause``, its op class ``opc``: remembered with
        the records' difference, of which (with those) it is a function."""
        key = (id(at), cause, opc, self.left.backend, self.right.backend)
        v = rd.verdicts.get(key)
        if v is None or v.at is not at:
            ln, rn, diff = rd.ln, rd.rn, list(rd.diff)
            explained = self.cat.explain_at(at, diff, (ln, rn))
            if cause is not None:
                for f in diff:
                    if f not in explained and f != "events":
                        explained[f] = f"{cause} (cascade)"
            first = next((f for f in diff if f not in explained), diff[0])
            known = all(f in explained for f in diff)
            v = Verdict(at, explained, first, {k: ln.get(k) for k in diff if k in ln},
                        {k: rn.get(k) for k in diff if k in rn},
                        make_signature(self.oracle, self.left.backend, self.right.backend, opc, first, ln.get(first),
                                       rn.get(first)),
                        min(explained.values()).replace(" (cascade)", "") if known else None)
            rd.remember(key, v)
        return v


@dataclass(frozen=True)
class Verdict:
    """What the divergence between two differing records says at one op: the fields explained (by
    which entry), the first one no entry explains, the values shown, its signature, and the entry a
    known divergence taints the op's gfn with.  ``at`` is the catalogue's view of the op it was
    given for.  Read it, never change it: the divergences made from it share its dicts (a reader that
    adds to a divergence's ``explained`` gives it a new dict, oracles.pair)."""
    at: AtOp
    explained: dict[str, str]
    first: str
    left_obs: dict[str, Any]
    right_obs: dict[str, Any]
    signature: str
    taint: str | None


# Record differences ``RecordDiffs`` remembers; a bound on memory (a few KB each), not a tuning knob.
DIFFS_MEMO_SIZE = 1 << 13
# Verdicts one record difference remembers (views of the op and causes it was judged under); a bound.
VERDICTS_PER_DIFF = 16


@dataclass(eq=False)
class RecordDiff:
    """Two differing records' normal forms, the fields that differ (in report order), and the
    verdicts given on them so far (``Verdict``, by the view of the op, the cause and the pair).
    ``derived``: what a reader works out from the two records alone, kept with them by its own
    key (fuzz.judging.cells: the cell each side reached)."""
    ln: dict[str, Any]
    rn: dict[str, Any]
    diff: tuple[str, ...]
    verdicts: dict[tuple[Any, ...], Verdict] = dataclasses.field(default_factory=dict)
    derived: dict[Any, Any] = dataclasses.field(default_factory=dict)

    def remember(self, key: tuple[Any, ...], v: Verdict) -> None:
        if len(self.verdicts) >= VERDICTS_PER_DIFF:
            self.verdicts.clear()
        self.verdicts[key] = v


class RecordDiffs:
    """Two differing records' normal forms and the fields that differ (in report order), remembered
    across comparisons by what the records hold, with the verdicts given on them (``RecordDiff``).
    Why: fuzzed scenarios repeat the same op records over and over (a mutation changes one op; the
    others behave as before), and normalising both sides, diffing them and explaining the difference
    costs several times reading the key.  The key is the ``marshal`` form (version 2: no
    back-references, so equal bytes are equal values) of each record's observations: plain values
    (str, int, bool, None, lists, dicts) with equal forms are equal and of the same types, so
    normalisation cannot tell them apart; a value marshal cannot write is keyed by its ``repr``.
    What it returns is shared: read it, never change it."""

    def __init__(self) -> None:
        self._got: BoundedMemo[tuple[str, bytes | str], RecordDiff] = BoundedMemo(DIFFS_MEMO_SIZE)

    def __call__(self, lrec: Any, rrec: Any, level: str, norms: Normalised) -> RecordDiff:
        parts = (lrec.api, lrec.vmm, lrec.events, rrec.api, rrec.vmm, rrec.events)
        try:
            key: tuple[str, bytes | str] = (level, marshal.dumps(parts, 2))
        except ValueError:
            key = (level, repr(parts))
        got = self._got.get(key)
        if got is None:
            ln, rn, diff = _normalised_difference(lrec, rrec, level, norms)
            got = self._got.put(key, RecordDiff(ln, rn, tuple(_order(diff))))
        return got


def _normalised_difference(lrec: Any, rrec: Any, level: str,
                           norms: Normalised) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Both records normalised at ``level`` and the fields that differ (unordered), with a
    pseudo-field for each reporting rule that fired on one side only.  The records returned may be
    ``norms``' own: they are copied before a field is added."""
    ln, lfired = norms(lrec, level)
    rn, rfired = norms(rrec, level)
    if "vmm.*" in ln or "vmm.*" in rn:      # one side observed nothing at the VMM level
        ln = {k: v for k, v in ln.items() if not k.startswith("vmm.")}
        rn = {k: v for k, v in rn.items() if not k.startswith("vmm.")}
    diff = _differing(ln, rn)
    if lfired == rfired:
        return ln, rn, diff
    ln, rn = dict(ln), dict(rn)
    for rule in REPORTING:
        if (rule.name in lfired) != (rule.name in rfired) and ln.get("api.result") == rn.get("api.result"):
            pseudo = f"api.result ({rule.name})"
            diff.append(pseudo)
            ln[pseudo] = (lrec.api or {}).get("result")
            rn[pseudo] = (rrec.api or {}).get("result")
    return ln, rn, diff


def _differing(ln: dict[str, Any], rn: dict[str, Any]) -> list[str]:
    """The fields whose values differ, ``NA`` matching anything and a field one side lacks differing
    (unordered).  A plain loop over each side: most fields are on both, most are equal."""
    out = []
    for k, a in ln.items():
        b = rn.get(k, _MISSING)
        if a is not NA and b is not NA and not a == b:
            out.append(k)
    for k, b in rn.items():
        if k not in ln and b is not NA:
            out.append(k)
    return out


def check_invariants(sc: Scenario, trace: Trace, cat: Catalogue,
                     ctxs: Sequence[dict[str, Any]] | None = None) -> list[Divergence]:
    """Invariant violations of one trace, each matched against the catalogue's inv:* entries."""
    cache: list[Sequence[dict[str, Any]]] = [ctxs] if ctxs is not None else []

    def all_ctxs() -> Sequence[dict[str, Any]]:
        if not cache:
            cache.append(op_contexts(sc))
        return cache[0]

    fam = _family(trace)
    out = []
    for v in check_trace(sc, trace, all_ctxs):
        ctxs = all_ctxs()
        args = sc.ops[v.index].args if v.index < len(sc.ops) else {}
        obs = {v.field: v.value}
        explained = cat.explain(v.oracle, v.op, (fam, ""), [v.field], (obs, {}), args,
                                ctxs[v.index] if v.index < len(ctxs) else {}) if v.op != "end" else {}
        d = Divergence(v.oracle, trace.backend, "", v.index, v.op, [v.field], v.field, obs, {}, explained)
        d.signature = make_signature(v.oracle, trace.backend, "", op_class(v.op, args), v.field, v.value, None)
        out.append(d)
    return out


def _missing(sc: Scenario, i: int, left: Trace, right: Trace, cat: Catalogue, at: AtOp,
             norm: tuple[dict[str, Any], dict[str, Any]]) -> list[Divergence]:
    """Expected divergences that did not appear at op ``i`` (``missing:<entry>``), ``at`` being
    the catalogue's view of the op and ``norm`` the two normalised records."""
    ln, rn = norm
    op = sc.ops[i]
    out = []
    for e, f in cat.missing_at(at, norm):
        d = Divergence(f"missing:{e.id}", left.backend, right.backend, i, op.kind, [f], f,
                       {f: ln.get(f)}, {f: rn.get(f)})
        d.signature = make_signature(f"missing:{e.spec}", left.backend, right.backend, op_class(op.kind, op.args),
                                     f, ln.get(f), rn.get(f))
        out.append(d)
    return out


def _cascade(ctx: dict[str, Any], tainted: dict[Any, str]) -> str | None:
    """A known divergence at a gfn leaves the two worlds different there (a COW break on one side
    only, an SPTE on one side only...): later differences at the same gfn (or in the dirty log of
    its memslot) are its consequences.  WARN/BUG events are never explained this way."""
    gfn = ctx.get("ctx.gfn")
    if gfn is not None and gfn in tainted:
        return tainted[gfn]
    page = ctx.get("ctx.host_page")
    if page is not None and page in tainted:           # another gfn aliasing the same host page
        return tainted[page]
    span = ctx.get("ctx.gfns")
    if span:
        for g, cause in tainted.items():
            if isinstance(g, int) and span[0] <= g < span[1]:
                return cause
    return None


def _taint(tainted: dict[Any, str], ctx: dict[str, Any], cause: str) -> None:
    """Mark the gfn and the host page behind it as changed by a known divergence."""
    tainted.setdefault(ctx["ctx.gfn"], cause)
    if ctx.get("ctx.host_page") is not None:
        tainted.setdefault(ctx["ctx.host_page"], cause)


def report_order(d: Divergence) -> tuple[int, bool]:
    """Sort key of an input's divergences: op order, pair diffs (and model exceptions) before
    single-trace invariants.  The first unknown one in this order is the input's finding."""
    return d.index, not d.oracle.startswith("diff:") and d.oracle != "exception"


def first_unknown(divs: list[Divergence]) -> Divergence | None:
    return next((d for d in divs if not d.known), None)
