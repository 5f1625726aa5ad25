"""Single-trace invariants: rules every generation must keep, whatever the other side does.

Why separate from the diff: a refcount leak or a WARN can be identical in two generations (then
the diff is silent) and still be wrong.  Each check returns violations; the catalogue can mark
a violation as known for a generation whose documented behaviour it is (G1's reserved-page
leak, D19), exactly as for divergences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmsim.scenario import Scenario
from kvmsim.trace import Trace

from .normalise import is_page_name

# Invariants whose fields are one violation seen through different op classes (an x86 fault shows
# a writable mapping as its SPTE, a lookup as its writable flag), and what that violation is: a
# root cause names it, so the op class that showed it does not split one bug.
ONE_VIOLATION = {"inv:ro-slot-not-writable": "writable mapping of a read-only memslot"}
# Checks that state one rule: KVM's references to a page balance (a leak is a put too few, an
# underflow a put too many, a reference kept on an error or at the end a put too few).  One
# refcounting decision shows as a leak on one path and an underflow on another, so a root cause
# names the rule, not the check that saw it first.
REFERENCE_RULE = "unbalanced page references"
REFERENCE_CHECKS = frozenset({"inv:no-leak", "inv:no-ref-on-error", "inv:balanced-at-end"})
REFERENCE_EVENTS = ("BUG:refcount_underflow",)
# The spec rows an invariant states (§7: D12b's row says no generation maps a read-only memslot
# writable).
INVARIANT_SPEC = {"inv:ro-slot-not-writable": ("D12b",)}


@dataclass
class Violation:
    oracle: str           # inv:<name>
    index: int            # op index (len(ops) for end-of-scenario checks)
    op: str
    field: str
    value: Any


def _api(rec) -> dict[str, Any]:
    api = rec.api
    return api if isinstance(api, dict) and "not_observable" not in api else _NOTHING


_NOTHING: dict[str, Any] = {}          # the API observations of a record without any (read, never changed)


def check_trace(sc: Scenario, trace: Trace, ctxs: Callable[[], Sequence[dict[str, Any]]]) -> list[Violation]:
    """``ctxs`` computes the op contexts (oracles.context) only if a check needs them."""
    out: list[Violation] = []
    crashed = False
    for rec in trace.records:             # _api, and _api_violations' first questions, inline: per record
        api = rec.api
        if not isinstance(api, dict) or "not_observable" in api:
            api = _NOTHING
        if "skipped" in api:
            crashed = True
            continue
        if rec.events:
            bad = [e for e in rec.events if e.startswith(("WARN:", "BUG:", "CORRUPT:"))]
            if bad:
                out.append(Violation("inv:no-warn-bug", rec.index, rec.op, "events", bad))
        if "oops" in api:
            crashed = True
            out.append(Violation("inv:no-warn-bug", rec.index, rec.op, "api.oops", api["oops"]))
            continue
        if api:
            kind = rec.op
            if api.get("leaked") or api.get("pins_leaked") or (kind in _REF_CHECKED and (
                    api.get("held") or api.get("pinned"))) or (kind in _WRITABLE_CHECKED and (
                    api.get("writable") is True or api.get("spte"))):
                _api_violations(rec.index, kind, api, ctxs, out)
    if not crashed:
        out.extend(_held_at_end(sc, trace, out))
    return out


def _held_at_end(sc: Scenario, trace: Trace, found: list[Violation]) -> list[Violation]:
    """Every map was unmapped and nothing leaked on the way: KVM must hold nothing at the end (the
    maps still open are looked for only when the trace says something is held)."""
    held = [key for key in ("refs_held_at_end", "pins_held_at_end") if trace.meta.get(key)]
    if not held or any(v.oracle == "inv:no-leak" for v in found) or _maps_still_open(sc, trace):
        return []
    return [Violation("inv:balanced-at-end", len(sc.ops), "end", "meta." + key, trace.meta[key]) for key in held]


def _api_violations(i: int, kind: str, api: dict[str, Any], ctxs: Callable[[], Sequence[dict[str, Any]]],
                    out: list[Violation]) -> None:
    """The checks of one op's API observations into ``out``, each asked only of the op kinds it
    concerns and only when the values it looks for are there (most records show none: asking
    costs more than the checks)."""
    if api.get("leaked") or api.get("pins_leaked"):
        out.extend(_leaks(i, kind, api))
    if kind in _REF_CHECKED and (api.get("held") or api.get("pinned")):
        out.extend(_refs_on_error(i, kind, api))
    if kind in _WRITABLE_CHECKED and (api.get("writable") is True or api.get("spte")):
        out.extend(_writable_in_ro_slot(i, kind, api, ctxs))


_REF_CHECKED = frozenset({"lookup", "gfn_to_page", "vcpu_map"})       # the kinds _refs_on_error checks
_WRITABLE_CHECKED = frozenset({"lookup", "x86_fault"})               # the kinds _writable_in_ro_slot checks


def _leaks(i: int, kind: str, api: dict[str, Any]) -> list[Violation]:
    return [Violation("inv:no-leak", i, kind, "api." + f, api[f]) for f in ("leaked", "pins_leaked") if api.get(f)]


def _refs_on_error(i: int, kind: str, api: dict[str, Any]) -> list[Violation]:
    """A failed lookup, gfn_to_page or vcpu_map must not leave a reference or a pin behind."""
    out: list[Violation] = []
    if kind == "lookup" and api.get("result") != "pfn" and (api.get("held") or api.get("pinned")):
        f = "api.held" if api.get("held") else "api.pinned"
        out.append(Violation("inv:no-ref-on-error", i, kind, f, api[f[4:]]))
    if kind == "gfn_to_page" and not is_page_name(api.get("result")) and api.get("held"):
        out.append(Violation("inv:no-ref-on-error", i, kind, "api.held", api["held"]))
    if kind == "vcpu_map" and api.get("ret", 0) != 0 and (api.get("held") or api.get("pinned")):
        f = "api.held" if api.get("held") else "api.pinned"
        out.append(Violation("inv:no-ref-on-error", i, kind, f, api[f[4:]]))
    return out


def _writable_in_ro_slot(i: int, kind: str, api: dict[str, Any],
                         ctxs: Callable[[], Sequence[dict[str, Any]]]) -> list[Violation]:
    """A writable SPTE or a writable pfn in a read-only memslot."""
    spte = api.get("spte")
    w_spte = kind == "x86_fault" and isinstance(spte, dict) and spte.get("writable")
    w_lookup = kind == "lookup" and api.get("result") == "pfn" and api.get("writable") is True
    if not (w_spte or w_lookup) or ctxs()[i].get("ctx.slot") != "ro":
        return []
    if w_spte:
        return [Violation("inv:ro-slot-not-writable", i, kind, "api.spte", spte)]
    return [Violation("inv:ro-slot-not-writable", i, kind, "api.writable", True)]


def _maps_still_open(sc: Scenario, trace: Trace) -> set[str | None]:
    """The handles of successful vcpu_maps the scenario never unmapped."""
    still_open: set[str | None] = set()
    for r in trace.records:
        api = _api(r)
        if r.op == "vcpu_map" and api.get("ret") == 0:
            still_open.add(api.get("handle"))
        elif r.op == "vcpu_unmap":
            still_open.discard(sc.ops[r.index].args["handle"])
    return still_open
