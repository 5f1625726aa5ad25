"""Root causes: why two implementations diverge, computed from the scenario and the two backends,
not from where the difference became visible.

Why not the signature: a signature is "oracle + pair + op class + field + values", so one bug
shows once per op class and field it reaches (the sketch's WARN at ``mmu_seq == 0`` reaches
``access``, ``lookup[noref]``, ``lookup[pin]`` and ``x86_fault``).  A root cause is the decision
behind all of them, and it is what triage clusters by, campaigns count as new or known, and
ClusterFuzzLite uses as crash state.  Signatures stay the fine key inside a cause.

How a cause is found, in order:

``quirk``      a literal-sketch backend (``sim:g2s-literal[:Q]``) took part: its quirks are
               switched off one at a time and each quirk without which the divergence disappears
               is needed (ablation); the cause is that set (``S2``, ``S4+S5``).  A divergence that
               survives with every quirk off is not the sketch's bug and falls through.
``variant``    a patched copy of a generation (``sim:g3-mine``) took part and the divergence
               disappears with the generation's model (``sim:g3``) in its place: the cause is
               where the copy departs from the model (the first op at which a function of the
               generation returns or calls differently), whichever oracle, op or field showed it.
               A divergence the model (or, for the literal sketch, its intended reading) shows
               too is the model's: the kinds below name it by the model.
``decision``   two simulated generations: both are re-run with the functions of their generation
               modules recorded (name and class of the return value) during the divergent op;
               the cause is the innermost function both sides call whose results differ (the
               kernel function at which they part ways), e.g. ``hva_to_pfn_remapped: pfn |
               ERR_FAULT``.  Without such a function: the first unexplained field, without its
               op class.
``invariant``  one trace breaks an invariant: the invariant, the backend and the WARN/BUG site
               (never the op class); leaks, underflows and references kept on an error or at
               the end are one rule (unbalanced page references).
``missing``    a catalogue entry whose conditions hold did not show on the two sides
               (``expected D6 missing``); the entry is the cause.
``exception``  a backend or oracle raised: the exception type and where.

The result is a :class:`RootCause` with a stable short ``id`` (``S2``, ``S4+S5`` or
``<kind>-<8 hex>``), a one-line ``title`` and ``crash_state`` (three lines, ClusterFuzz style).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fuzz.judging.quirks import LITERAL, QUIRK_ROWS, QUIRK_TITLES, QUIRKS, quirks_of, with_quirks
from kvmsim import get_backend
from kvmsim.backend import Backend
from kvmsim.constants import ERRNO_NAMES, is_error_noslot_pfn, pfn_class
from kvmsim.scenario import Scenario
from kvmsim.trace import Trace
from oracles.catalogue import FAMILIES, Catalogue, family, load_catalogue
from oracles.diff import Divergence, check_invariants, compare
from oracles.invariants import (
    INVARIANT_SPEC,
    ONE_VIOLATION,
    REFERENCE_CHECKS,
    REFERENCE_EVENTS,
    REFERENCE_RULE,
)
from oracles.signature import event_class, make_signature


@dataclass(frozen=True)
class RootCause:
    """One cause.  ``id`` is stable across runs and machines (it depends only on ``key``)."""
    id: str
    kind: str                       # quirk | decision | invariant | missing | exception
    title: str
    key: str                        # the full text the id is derived from
    spec: tuple[str, ...] = ()      # spec rows the cause is (S2, D10; D6 for a missing D6 entry)
    pair: str = ""                  # the families compared (g2~g3), or the one backend's family

    @property
    def quirks(self) -> list[str]:
        """The literal-sketch quirks this cause needs (its spec ids that are quirks)."""
        return [q for q in self.spec if q in QUIRKS]

    @property
    def stated_rows(self) -> tuple[str, ...]:
        """The spec rows an invariant cause breaks (``inv:ro-slot-not-writable``: D12b's row)."""
        return self.spec if self.kind == "invariant" else ()

    @property
    def crash_state(self) -> str:
        """Three lines, like a ClusterFuzz crash state: kind, where, what."""
        lines = [f"pfndiff {self.kind} {self.pair}".strip(), *self.title.split(": ", 1)]
        return "\n".join(x.strip() for x in lines[:3])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "key": self.key,
                "spec": list(self.spec), "pair": self.pair}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RootCause:
        return cls(str(d["id"]), str(d.get("kind", "")), str(d.get("title", "")), str(d.get("key", d["id"])),
                   tuple(str(s) for s in d.get("spec") or ()), str(d.get("pair", "")))


_SEVERITY = ("BUG:refcount_underflow", "CORRUPT:", "BUG:", "WARN:")


def _most_severe(events: list[str]) -> str:
    """The one event that names an op's violation: a reference underflow before corruption
    before other BUGs before WARNs (a WARN the catalogue excuses often comes along)."""
    return min(sorted(set(events)), key=lambda e: next((i for i, p in enumerate(_SEVERITY) if e.startswith(p)),
                                                       len(_SEVERITY)))


def _short(backend: str) -> str:
    return backend.removeprefix("sim:")


def _hash_id(kind: str, key: str) -> str:
    return f"{kind[:3]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def make(kind: str, key: str, title: str, spec: tuple[str, ...] = (), pair: str = "") -> RootCause:
    return RootCause(_hash_id(kind, key), kind, title, key, spec, pair)


# Causal order of the quirks on the x86 path: S2 and S6 decide the first attempt, S4 the second
# (its forced FOLL_GET|FOLL_WRITE through kvm_follow_pfn), S5 and S8 act only once S4's entry or the
# first attempt's page reached them.  A divergence that needs several quirks is the last one's:
# S4+S5 is S5 (reached through S4's kvm_follow_pfn), S4+S8 is S8 (spec §4.3: ownership differs
# between the attempts because S4 keeps the reference that S8's exit path puts).
CAUSAL_ORDER = ("S2", "S6", "S4", "S5", "S8")


def quirk_cause(qs: list[str] | set[str]) -> RootCause:
    """The cause of a divergence that needs quirks ``qs``: the causally last one."""
    qs = sorted(set(qs), key=CAUSAL_ORDER.index)
    main = qs[-1]
    title = f"literal-sketch quirk {main}: {QUIRK_TITLES[main]}"
    if len(qs) > 1:
        title += f" (reached through {', '.join(qs[:-1])})"
    spec = (main, QUIRK_ROWS[main]) if main in QUIRK_ROWS else (main,)
    return RootCause(main, "quirk", title, f"quirk {main}", spec, "g2s")


def _field_values(d: Divergence, f: str) -> str:
    """How one field differs, as a signature renders it (value classes): both sides' values for a
    pair difference (a single-trace signature would keep the left value alone, and a divergence
    whose other side changed would pass for the same one)."""
    return make_signature("", "", "~" if d.right else "", "", f, d.left_obs.get(f), d.right_obs.get(f))


# --- recording the decisions of one op -------------------------------------------------------------------

def ret_class(v: Any) -> str:
    """The part of a return value that identifies a decision: error pfns and errnos by name,
    RET_PF_* codes and small counts as numbers, frames as ``pfn``, objects by type."""
    if v is None or isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        if v < 0:
            return "-" + ERRNO_NAMES.get(-v, "errno")
        if is_error_noslot_pfn(v) or v >= 1 << 52:
            return pfn_class(v)
        return str(v) if v < 16 else "pfn"
    if isinstance(v, tuple):
        return "(" + ",".join(ret_class(x) for x in v) + ")"
    name = type(v).__name__
    if name == "Page":
        return "page"
    pfn = getattr(v, "pfn", None)
    if isinstance(pfn, int):
        extra = getattr(v, "error", None)
        return f"{name}({ret_class(pfn)}{',' + str(extra) if extra else ''})"
    if name == "PageResult":
        return f"PageResult({'page' if getattr(v, 'page', None) is not None else getattr(v, 'error', None)})"
    return name


def generation_modules(backend: Backend) -> set[str]:
    """The modules whose functions are the generation's decisions: those of its class hierarchy,
    the modules it builds on (``Generation.builds_on``: the GUP-era path, G2's noref functions),
    plus the x86 skeleton and the VMA walk every generation shares."""
    gen = getattr(backend, "gen", None)
    if gen is None:
        return set()
    mods = {c.__module__ for c in type(gen).__mro__ if c.__module__ not in ("builtins", "abc")}
    mods |= {m.__name__ for m in getattr(gen, "builds_on", ())}
    return mods | {"kvmsim.x86", "kvmsim.vma_walk"}


Call = tuple[str, str, tuple[str, ...]]     # function, return class, the generation functions it called


def record_calls(backend: Backend, sc: Scenario, index: int) -> list[Call]:
    """Every generation-module function that returned while op ``index`` ran, innermost first
    (return order), with the class of its return value and the functions it called."""
    mods = generation_modules(backend)
    return _record(backend, sc, mods.__contains__, mods.__contains__, index).get(index, [])


def record_op_calls(backend: Backend, sc: Scenario) -> dict[int, list[Call]]:
    """Per op index, every generation-module function that returned while the op ran, with what it
    called anywhere in the model (a ``put_page`` in the page database, through helpers too): a patched
    copy of a generation and its original run the same code but where the patch is, so the first
    function whose results or callees differ is the changed decision."""
    return _record(backend, sc, generation_modules(backend).__contains__, _model_module, None)


def _model_module(name: str) -> bool:
    return name.startswith("kvmsim.") and not name.startswith(_NOT_DECISIONS)


# the executor's bookkeeping, the trace and the scenario format: what the model records, not what it decides
_NOT_DECISIONS = ("kvmsim.executor", "kvmsim.trace", "kvmsim.scenario", "kvmsim.fault_record", "kvmsim.backend",
                  "kvmsim.sim_backend", "kvmsim.yamlsrc")


def _record(backend: Backend, sc: Scenario, wanted: Callable[[str], bool], seen: Callable[[str], bool],
            index: int | None) -> dict[int, list[Call]]:
    """Run ``sc`` on ``backend`` recording, per op (only op ``index`` if given), the functions of the
    ``wanted`` modules that returned, innermost first, with the functions of the ``seen`` modules they
    called (through functions that are not ``wanted`` too)."""
    out: dict[int, list[Call]] = {}
    stack: list[tuple[bool, list[str]]] = []
    state: dict[str, Any] = {"op": None}

    def prof(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        module = frame.f_globals.get("__name__", "")
        if code.co_name == "step" and module == "kvmsim.executor":
            _track_op(frame, event, state, stack, index)
            return
        if state["op"] is None or code.co_name.startswith("<") or not (wanted(module) or seen(module)):
            return
        if event == "call":
            if stack:
                stack[-1][1].append(code.co_name)
            stack.append((wanted(module), []))
        elif event == "return" and stack:
            emit, callees = stack.pop()
            if not emit:
                if stack:
                    stack[-1][1].extend(callees)
                return
            out.setdefault(state["op"], []).append((code.co_name, ret_class(arg) + _out_params(frame),
                                                    tuple(dict.fromkeys(c for c in callees if c not in _SKIP))))

    old = sys.getprofile()
    sys.setprofile(prof)
    try:
        backend.run(sc)
    except Exception:
        pass                                    # the calls so far still say where it went
    finally:
        sys.setprofile(old)
    return out


def _track_op(frame: Any, event: str, state: dict[str, Any], stack: list[Any], index: int | None) -> None:
    """The executor's ``step(i, op)`` starts and ends an op: record it if it is the one wanted."""
    if event == "call":
        i = frame.f_locals.get("i")
        state["op"] = i if index is None or i == index else None
        stack.clear()
    elif event == "return":
        state["op"] = None


_SKIP = {"__init__", "__post_init__", "release", "nothing"}


def _results_differ(a: str, b: str) -> bool:
    """Return classes differ, or an out-parameter both sides take was written differently
    (functions of one name in two generations may take different out-parameters, e.g. G2's
    ``*page``: one that only one side has is not a decision, but ``*async`` on both sides is)."""
    ra, _, oa = a.partition("[")
    rb, _, ob = b.partition("[")
    if ra != rb:
        return True
    la, lb = _outs(oa), _outs(ob)
    return any(la[k] != lb[k] for k in la.keys() & lb.keys())


def _outs(outs: str) -> dict[str, str]:
    return dict((x.split("=", 1) + [""])[:2] for x in outs.rstrip("]").split(",") if x)


def _out_params(frame: Any) -> str:
    """What a function wrote through its C out-parameters (``Out``: ``*async``, ``*writable``,
    ``*page``): part of its decision, e.g. "FAULT with *async = true" is D1's needs-I/O."""
    code = frame.f_code
    parts = []
    for name in code.co_varnames[:code.co_argcount]:
        v = frame.f_locals.get(name)
        if type(v).__name__ == "Out":
            parts.append(f"{name}={ret_class(v.value)}")
    return f"[{','.join(parts)}]" if parts else ""


def parting_decision(left: list[Call], right: list[Call]) -> tuple[str, str, str] | None:
    """The innermost function both sides called whose n-th results differ; else the innermost one
    whose n-th call went on to different functions."""
    rseen: dict[str, list[Call]] = {}
    for c in right:
        rseen.setdefault(c[0], []).append(c)
    pairs: list[tuple[Call, Call]] = []
    count: dict[str, int] = {}
    for c in left:
        k = count.get(c[0], 0)
        count[c[0]] = k + 1
        if c[0] in _SKIP or k >= len(rseen.get(c[0], ())):
            continue
        pairs.append((c, rseen[c[0]][k]))
    for lc, rc in pairs:
        if _results_differ(lc[1], rc[1]):
            return lc[0], lc[1], rc[1]
    for lc, rc in pairs:
        if lc[2] != rc[2]:
            return lc[0], "calls " + ("+".join(lc[2]) or "nothing"), "calls " + ("+".join(rc[2]) or "nothing")
    return None


def first_departure(variant: dict[int, list[Call]], original: dict[int, list[Call]]) -> tuple[int, str] | None:
    """The first op at which a patched copy parts ways with its original, and the function there."""
    for i in sorted(variant.keys() | original.keys()):
        found = parting_decision(variant.get(i, []), original.get(i, []))
        if found is not None:
            return i, found[0]
    return None


def reference_of(backend: str) -> str | None:
    """The model a backend is a variant of: ``sim:g2f-mine`` (a patched copy of a generation,
    registered as a plugin) -> ``sim:g2f``; None for the generations themselves and the literal
    sketch (whose reference is its intended reading, found by quirk ablation)."""
    if not backend.startswith("sim:") or backend.startswith(LITERAL):
        return None
    fam = family(backend)
    return f"sim:{fam}" if backend != f"sim:{fam}" and fam in FAMILIES else None


# --- the analysis ---------------------------------------------------------------------------------------

@dataclass
class RootCauser:
    """Computes root causes; backends are created once and reused."""
    catalogue: Catalogue | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    _departures: dict[tuple[str, str, int], tuple[Scenario, tuple[int, str] | None]] = \
        field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.catalogue is None:
            self.catalogue = load_catalogue()

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            self.backends[name] = get_backend(name)
        return self.backends[name]

    def _run(self, name: str, sc: Scenario) -> Trace | None:
        try:
            return self.backend(name).run(sc)
        except Exception:
            return None

    def _shows(self, sc: Scenario, d: Divergence, lit: str, alt: str) -> bool:
        """Does the divergence still show with ``lit`` replaced by ``alt``: at the same op, the
        same field differing the same way and unexplained (other fields may come and go: they
        are other quirks' effects, not this divergence)?"""
        assert self.catalogue is not None
        left = alt if d.left == lit else d.left
        right = alt if d.right == lit else d.right
        lt = self._run(left, sc)
        if lt is None:
            return False
        if not d.right:
            divs = check_invariants(sc, lt, self.catalogue)
        else:
            rt = self._run(right, sc)
            if rt is None or left == right:
                return False
            divs = compare(sc, lt, rt, self.catalogue, invariants=False)
        want = _field_values(d, d.field)
        return any(x.index == d.index and x.oracle == d.oracle and d.field in x.fields and d.field not in x.explained
                   and _field_values(x, d.field) == want for x in divs)

    def quirks_needed(self, sc: Scenario, d: Divergence) -> list[str] | None:
        """The literal-sketch quirks this divergence needs; None when it is not the sketch's."""
        lits = [b for b in (d.left, d.right) if b and b.startswith(LITERAL)]
        if not lits or d.oracle == "exception":
            return None
        lit = lits[0]
        qs = quirks_of(lit)
        if self._shows(sc, d, lit, "sim:g2s"):
            return None                          # survives the intended reading: not a quirk
        needed = [q for q in qs if not self._shows(sc, d, lit, with_quirks(set(qs) - {q}))]
        if needed and (set(needed) == set(qs) or self._shows(sc, d, lit, with_quirks(needed))):
            return needed
        for q in qs:                             # several quirks each suffice: the first that does alone
            if self._shows(sc, d, lit, with_quirks({q})):
                return [q]
        return needed or qs

    def __call__(self, sc: Scenario, d: Divergence, others: list[Divergence] | None = None) -> RootCause:
        return self.cause(sc, d, others)

    def cause(self, sc: Scenario, d: Divergence, others: list[Divergence] | None = None) -> RootCause:
        """``others``: the other divergences of the same run.  A pair difference at an op where one
        of its backends breaks an invariant is that violation's consequence (a leak, a WARN): it
        gets the violation's cause, so one bug is one cause whichever oracle saw it."""
        if d.right and others:
            inv = self._violation_for(d, others)
            if inv is not None:
                return self.cause(sc, inv)
        if d.oracle == "exception" or d.oracle.startswith("nondeterministic"):
            where = d.left_obs.get("at", "?")
            exc = str(d.left_obs.get("exception", "")).split(":")[0]
            return make("exception", d.signature, f"{d.left} raised {exc}: at {where}", (), d.left)
        if d.known:                          # catalogued: the entries are the cause
            ids = ",".join(e.split(" (")[0] for e in d.entries)
            spec = tuple(sorted({self.catalogue.by_id[e.split(" (")[0]].spec for e in d.entries
                                 if self.catalogue and e.split(" (")[0] in self.catalogue.by_id}))
            return make("known", f"known {ids}", f"catalogued ({ids}): an intended behaviour change", spec,
                        f"{family(d.left)}~{family(d.right)}" if d.right else family(d.left))
        patched = self.variant_cause(sc, d)
        if patched is not None:
            return patched
        qs = self.quirks_needed(sc, d)
        if qs:
            return quirk_cause(qs)           # the literal sketch's bugs also hide expected divergences
        d = self._as_models(d)               # it shows on the models too: theirs, whichever copy showed it
        if d.oracle.startswith("missing:"):
            eid = d.oracle.split(":", 1)[1]
            e = self.catalogue.by_id.get(eid) if self.catalogue else None
            row = e.spec if e else "?"
            # keyed by the spec row: every entry of one row states the same intended change
            fams = f"{_short(d.left)}~{_short(d.right)}"
            return make("missing", f"missing {row} {fams}",
                        f"expected {row} missing: the change did not show on {fams}", (row,),
                        f"{family(d.left)}~{family(d.right)}")
        if not d.right:
            return self._invariant(d)
        return self._decision(sc, d)

    def variant_cause(self, sc: Scenario, d: Divergence) -> RootCause | None:
        """A patched copy of a generation took part and the divergence disappears when it is replaced by
        the generation's model: the cause is where the copy departs from the model (the first op at
        which their decisions differ, and the function there), whichever oracle, op or field shows it.
        Comparing the copy with the other generation would mix the change in with every intended
        difference between the generations."""
        for name in dict.fromkeys(n for n in (d.left, d.right) if n):
            ref = reference_of(name)
            if ref is None or d.oracle == "exception" or self._shows(sc, d, name, ref):
                continue
            where = self._departure(name, ref, sc)
            if where is None:
                continue
            fam, short = family(ref), _short(name)
            return make("variant", f"variant {short} {where[1]}",
                        f"{short} departs from {fam} in {where[1]}: the change of {fam}'s decision", (), short)
        return None

    def _departure(self, name: str, ref: str, sc: Scenario) -> tuple[int, str] | None:
        """Where ``name`` first departs from ``ref`` on ``sc`` (one analysis per copy and scenario)."""
        key = (name, ref, id(sc))
        hit = self._departures.get(key)
        if hit is None or hit[0] is not sc:
            if len(self._departures) >= 256:         # a campaign's causer lives long: keep the recent ones
                self._departures.clear()
            found = first_departure(record_op_calls(self.backend(name), sc), record_op_calls(self.backend(ref), sc))
            hit = self._departures[key] = (sc, found)
        return hit[1]

    def _as_models(self, d: Divergence) -> Divergence:
        """The divergence with each backend named by the model that shows it too: a patched copy's
        divergence that its generation's model shows is the model's, and one of the literal sketch that
        survives the intended reading is ``sim:g2s``'s (so every copy and quirk subset is one cause)."""
        def model(n: str) -> str:
            if n.startswith(LITERAL):
                return "sim:g2s"
            return reference_of(n) or n
        left, right = model(d.left), model(d.right) if d.right else d.right
        if (left, right) == (d.left, d.right) or left == right:
            return d
        return dataclasses.replace(d, left=left, right=right)

    def _invariant(self, d: Divergence) -> RootCause:
        # the backend itself, not its family (as for decisions): a simulated generation's name is its
        # family, and what a patched copy or the literal sketch shows here its model shows too (_as_models)
        fam = _short(d.left) if d.left.startswith("sim:") else family(d.left)
        v = d.left_obs.get(d.field)
        # an invariant some op classes break through different fields is one violation: keyed by
        # what it states, not by the field the op class shows it in (never the op class)
        what = _most_severe([event_class(e) for e in v]) if isinstance(v, list) and v else \
            ONE_VIOLATION.get(d.oracle, d.field)
        oracle = d.oracle
        if oracle in REFERENCE_CHECKS or what.startswith(REFERENCE_EVENTS):
            oracle, what = "inv:references", REFERENCE_RULE
        key = f"{oracle} {fam} {what}"
        return make("invariant", key, f"{oracle} on {fam}: {what}", INVARIANT_SPEC.get(oracle, ()), fam)

    @staticmethod
    def _violation_for(d: Divergence, others: list[Divergence]) -> Divergence | None:
        """The invariant violation a pair difference is a consequence of: one of its backends breaks
        an invariant at the same op, or (two generations, not the literal sketch, whose quirks are
        told apart exactly by ablation) later in the same run, as a reference handed out wrongly
        at a map shows as a leak or an underflow at the unmap."""
        invs = [x for x in others if not x.right and x.oracle.startswith("inv:") and not x.known
                and x.left in (d.left, d.right) and x.index >= d.index]
        same = next((x for x in invs if x.index == d.index), None)
        if same is not None or any(b.startswith(LITERAL) for b in (d.left, d.right)):
            return same
        return min(invs, key=lambda x: x.index, default=None)

    @staticmethod
    def _event_site(d: Divergence) -> str | None:
        """A WARN/BUG/CORRUPT site on one side only: the most specific name a decision has."""
        if d.field != "events":
            return None
        lv, rv = d.left_obs.get("events") or [], d.right_obs.get("events") or []
        only = sorted({event_class(e) for e in lv} ^ {event_class(e) for e in rv})
        return _most_severe(only) if only else None

    def _decision(self, sc: Scenario, d: Divergence) -> RootCause:
        # the backends themselves, not their families: two implementations of one generation (a real
        # kernel and the model) part ways in their own places; a copy's own changes are variant causes
        fams = f"{_short(d.left)}~{_short(d.right)}"
        site = self._event_site(d)
        if site is not None:
            return make("decision", f"decision {fams} event {site}", f"{fams}: {site} on one side only", (), fams)
        found = None
        if d.left.startswith("sim:") and d.right.startswith("sim:") and d.index < len(sc.ops):
            lcalls = record_calls(self.backend(d.left), sc, d.index)
            rcalls = record_calls(self.backend(d.right), sc, d.index)
            found = parting_decision(lcalls, rcalls)
        if found is not None:
            fn = found[0]
            # the values (return classes, callees) vary with the input; the function does not, and
            # the title is made from the key alone, so one id has one title and one crash state
            key = f"decision {fams} {fn}"
            title = f"{fams} part ways in {fn}: {family(d.left)} and {family(d.right)} decide differently"
        else:
            lv, rv = (d.signature.rsplit(" ", 1)[-1].split(">") + [""])[:2]
            key = f"decision {fams} {d.field} {lv}>{rv}"
            title = f"{fams} differ in {d.field}: {lv} on {family(d.left)}, {rv} on {family(d.right)}"
        spec = tuple(sorted({self.catalogue.by_id[e.split(' (')[0]].spec for e in d.explained.values()
                             if self.catalogue and e.split(" (")[0] in self.catalogue.by_id}))
        return make("decision", key, title, spec, fams)


_DEFAULT: list[RootCauser] = []


def root_cause(sc: Scenario, d: Divergence, catalogue: Catalogue | None = None,
               others: list[Divergence] | None = None) -> RootCause:
    """The root cause of divergence ``d`` of scenario ``sc`` (the public entry point); ``others``:
    the other divergences of the same run, if known (a pair difference caused by an invariant
    violation at the same op then gets the violation's cause)."""
    if catalogue is not None:
        return RootCauser(catalogue)(sc, d, others)
    if not _DEFAULT:
        _DEFAULT.append(RootCauser())
    return _DEFAULT[0](sc, d, others)


CauseFn = Callable[[Scenario, Divergence], RootCause]
