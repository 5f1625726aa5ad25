"""Normalisation of trace records before comparison (spec §9).

Why: two generations can say the same thing in different words (``ERR_FAULT`` + ``*async``
vs ``ERR_NEEDS_IO``), or report values that the spec says not to compare (``writable`` on an
error).  Each rule below is named, cites its spec row, and is applied to one record at a time.
A rule that marks ``reports`` is a catalogued behaviour change (D1, D18): when it fires on one
side only, the diff reports a *known* divergence under that id instead of hiding it.

A normalised record is a flat ``{"api.<field>": value, "vmm.<field>": value, "events": [...]}``
dict.  ``NA`` marks a value that must not be compared (matches anything).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmsim.trace import OpRecord


class _NotApplicable:
    """A value that compares equal to anything (not observable, or not comparable here)."""

    def __repr__(self) -> str:
        return "n/a"


NA = _NotApplicable()

API_LEVEL = "api"
VMM_LEVEL = "vmm"

# Entry points without a ``struct page **`` out-parameter: their ``page`` is not an observation.
NO_PAGE_OUT = {"__gfn_to_pfn_memslot", "__gfn_to_pfn_memslot (shim)", "gfn_to_pfn_memslot_atomic (shim)"}


@dataclass(frozen=True)
class Rule:
    name: str
    spec: str
    doc: str
    apply: Callable[[dict[str, Any]], bool]     # mutates the flat record; True if it changed anything
    reports: str | None = None                  # catalogue id reported when it fires on one side only


def _ignore_call(r: dict[str, Any]) -> bool:
    changed = False
    for k in ("api.call", "api.calls"):
        if k in r:
            del r[k]
            changed = True
    return changed


def _hva(r: dict[str, Any]) -> bool:
    if "api.hva" in r:
        del r["api.hva"]
        return True
    return False


def _needs_io(r: dict[str, Any]) -> bool:
    # lookups report *async; an x86 fault that went to async #PF shows it through async_pf
    fired = r.get("api.result") == "ERR_FAULT" and (r.get("api.async") is True
                                                    or r.get("api.async_pf") in ("queued", "halt"))
    if fired:
        r["api.result"] = "ERR_NEEDS_IO"
    r.pop("api.async", None)
    return fired


def _bad_page(r: dict[str, Any]) -> bool:
    if r.get("api.result") == "ERR_PTR_BAD_PAGE":
        r["api.result"] = "NULL"
        return True
    return False


def _writable_on_success(r: dict[str, Any]) -> bool:
    changed = False
    if r.get("api.result") != "pfn" and not is_page_name(r.get("api.result")):
        for k in ("api.writable", "api.map_writable"):
            if k in r and r[k] is not NA:
                r[k] = NA
                changed = True
    return changed


def is_page_name(v: Any) -> bool:
    return isinstance(v, str) and v not in ("NULL", "ERR_PTR_BAD_PAGE") and not v.startswith(("ERR_", "HVA_"))


def _page_out_param(r: dict[str, Any]) -> bool:
    if r.get("_call") in NO_PAGE_OUT and "api.page" in r:
        r["api.page"] = NA
        return True
    return False


def _hwpoison_probe(r: dict[str, Any]) -> bool:
    return False


def _unobservable(r: dict[str, Any]) -> bool:
    if r.pop("_unobservable", False):
        r["vmm.*"] = NA
        return True
    return False


RULES: tuple[Rule, ...] = (
    Rule("ignore-call", "§9", "which kernel function a generation used is not behaviour", _ignore_call),
    Rule("ignore-raw-hva", "§1.2, §9", "gfn->hva is the same function in every generation; raw hva values "
         "depend on the layout and on whether an API reports them at all", _hva),
    Rule("async-fault-is-needs-io", "D1", "G1/G2 ERR_FAULT with *async = true means the same as "
         "KVM_PFN_ERR_NEEDS_IO (G2f/G3) and the sketch's FAULT_MINOR", _needs_io, reports="D1"),
    Rule("bad-page-is-null", "D18", "G1/G2/G2f gfn_to_page's KVM_ERR_PTR_BAD_PAGE means G3's NULL",
         _bad_page, reports="D18"),
    Rule("writable-only-on-success", "D12", "writable/map_writable are unspecified on error", _writable_on_success),
    Rule("page-out-param", "D26, §3.1", "legacy entry points have no struct page ** out-parameter: their "
         "'page' is not an observation (ownership is compared through held/leaked)", _page_out_param),
    Rule("unrealisable-is-unobserved", "§9, DESIGN host facts", "a host backend that cannot realise a scenario "
         "(e.g. a frame at a chosen pfn) reports not_realisable: nothing it says is compared", _unobservable),
    Rule("hwpoison-probe-no-op", "D14", "G1's check_user_page_hwpoison probe adds no outcome in the model "
         "(GUP already reports -EHWPOISON); nothing to rewrite", _hwpoison_probe),
)

_APPLY = tuple((rule.name, rule.apply) for rule in RULES)      # RULES without an attribute lookup per record
REPORTING = tuple(rule for rule in RULES if rule.reports)


def flatten(rec: OpRecord, level: str) -> dict[str, Any]:
    """The record as a flat dict of the fields compared at this level."""
    out: dict[str, Any] = {}
    if level == API_LEVEL and rec.api is not None:
        if "not_observable" in rec.api:
            pass
        else:
            for k, v in rec.api.items():
                out["api." + k] = v
            out["_call"] = rec.api.get("call")
    if rec.vmm is not None:
        if "not_realisable" in rec.vmm or "not_observable" in rec.vmm:
            out["_unobservable"] = True      # a host that cannot build this world observes nothing
        else:
            for k, v in rec.vmm.items():
                out["vmm." + k] = v
    if level == API_LEVEL:
        out["events"] = list(rec.events)
    return out


def normalise(rec: OpRecord, level: str) -> tuple[dict[str, Any], set[str]]:
    """Flatten and apply every rule; returns (record, names of the rules that changed it)."""
    r = flatten(rec, level)
    fired = set()
    for name, apply in _APPLY:
        if apply(r):
            fired.add(name)
    r.pop("_call", None)
    return r, fired


def rule(name: str) -> Rule:
    return next(r for r in RULES if r.name == name)


class Normalised:
    """Each record normalised once per level, however many comparisons read it.  Why: in a campaign
    a backend's trace is compared in more than one pair, and an op whose two records are the same
    is normalised for one side and read for both.  The dicts it returns are shared: read them, never
    change them (copy first)."""

    def __init__(self) -> None:
        self._got: dict[tuple[int, str], tuple[OpRecord, dict[str, Any], set[str]]] = {}

    def __call__(self, rec: OpRecord, level: str) -> tuple[dict[str, Any], set[str]]:
        """``normalise(rec, level)``, worked out on the first ask for this record object."""
        got = self._got.get((id(rec), level))
        if got is None:                  # kept with the record, so that no other object takes its id
            r, fired = normalise(rec, level)
            got = self._got[(id(rec), level)] = (rec, r, fired)
        return got[1], got[2]
