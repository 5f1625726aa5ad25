"""The per-call contracts of each generation, checked on every lookup of random scenarios:
§2.5 (G1: C1, I3, I5), §3.4 (G2: *page ⇔ reference), §5.1 (G2f: writable reset, NEEDS_IO),
§6.6 (G3: K1, K4, K5)."""

from __future__ import annotations

import yaml
from helpers import GENERATIONS, run
from hypothesis import HealthCheck, given, settings
from scenario_strategies import B_GFN, scenarios

from kvmsim import loads_scenario

B_GFNS = (B_GFN, B_GFN + 1)     # the VM_PFNMAP vma of scenario_strategies


def _check_legacy(args: dict, api: dict) -> None:
    frame, page, held = api["frame"], api["page"], api["held"]
    assert page is None                                                    # legacy API: no page out
    assert set(held) <= ({frame} if frame else set()) and all(v == 1 for v in held.values()), api  # C1


def _check_noref(args: dict, api: dict) -> None:                           # §3.4
    res, frame, page, held = api["result"], api["frame"], api["page"], api["held"]
    if page not in (None, "<uninitialised>"):
        assert res == "pfn" and frame == page and held == {page: 1}, api
    else:
        assert held == {}, api
    if page == "<uninitialised>":
        assert res in ("ERR_RO_FAULT", "NOSLOT"), api                      # D26: only early returns


def _check_merged(args: dict, api: dict) -> None:                          # §6.6
    res, frame, page, held = api["result"], api["frame"], api["page"], api["held"]
    if page is not None:
        assert res == "pfn" and frame == page and held == {page: 1}, api   # K1
    else:
        assert held == {}, api
    if res != "pfn" and api["writable"] is not None:
        assert api["writable"] is False, api                               # K4


def _check_v11(args: dict, api: dict) -> None:                             # §5.1 (v11)
    res, frame, page, held = api["result"], api["frame"], api["page"], api["held"]
    if res != "pfn" and api["writable"] is not None:
        # D12: reset on entry — but v11's remapped path sets writable = pte.writable before
        # it refuses a pfn (§5.1 pseudo-code), so a remapped refusal may say true (as G1's I6)
        remapped_refusal = res == "ERR_FAULT" and args["gfn"] in B_GFNS
        assert api["writable"] is False or remapped_refusal, api
    if page is not None:
        assert frame == page
        assert held == ({page: 1} if args["want_ref"] else {}), api        # D3


def _check_pin(args: dict, api: dict) -> None:
    assert api["held"] == api["pinned"], api                               # K2: a pin, never a bare ref


# the lookup's entry point -> the contract its API states
_CONTRACTS = {"__gfn_to_pfn_memslot": _check_legacy, "__gfn_to_pfn_memslot (shim)": _check_legacy,
              "gfn_to_pfn_memslot_atomic (shim)": _check_legacy, "__gfn_to_pfn_noref_memslot": _check_noref,
              "__kvm_faultin_pfn": _check_merged, "kvm_follow_pfn": _check_v11, "kvm_follow_pfn(.pin)": _check_pin}


def check_lookup(backend: str, args: dict, api: dict) -> None:
    res = api["result"]
    assert (res == "pfn") == (api["frame"] is not None), api
    if res == "NOSLOT":
        assert api["writable"] in (False, None), api                       # I3
    if api.get("async"):
        assert res == "ERR_FAULT" and args["nowait"], api                  # I5
    if res == "ERR_NEEDS_IO":
        assert args["nowait"] and backend in ("sim:g2s", "sim:g2f", "sim:g3"), api   # K5, D1
    contract = _CONTRACTS.get(api["call"])
    if contract is not None:
        contract(args, api)
    assert api["leaked"] == {} or set(api["leaked"]) == {"rsv"}, api


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_lookup_contracts_hold_on_random_scenarios(sc_dict) -> None:
    sc = loads_scenario(yaml.safe_dump(sc_dict, sort_keys=False))
    for b in GENERATIONS:
        t = run(b, sc)
        for op, r in zip(sc_dict["ops"], t.records):
            kind, args = next(iter(op.items()))
            if kind == "lookup" and r.api and "result" in r.api:
                check_lookup(b, args, r.api)
