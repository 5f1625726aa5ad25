"""Root causes: one cause per decision, whatever op class or field shows it."""

from __future__ import annotations

import pytest

from fuzz.judge import Judge
from fuzz.rootcause import RootCause, RootCauser, parting_decision, quirks_of, with_quirks
from kvmsim import loads_scenario

RAM = """
version: 1
name: t
world:
  vmas: [{name: ram, pages: 4}]
  memslots: [{id: 0, gfn: 0x100, pages: 4, vma: ram}]
ops:
"""


def _first(pairs, ops: str):
    sc = loads_scenario(RAM + ops, "t.yaml")
    j = Judge(pairs).judge(sc)
    d = j.first_unknown()
    assert d is not None
    return sc, d


@pytest.fixture(scope="module")
def causer():
    return RootCauser()


def test_s2_is_one_cause_across_op_classes(causer):
    pair = [("sim:g2", "sim:g2s-literal")]
    ids = set()
    for ops in ("- access: {gpa: 0x100000}\n", "- lookup: {gfn: 0x100, want_ref: false, guarded: true}\n",
                "- x86_fault: {gfn: 0x101}\n"):
        sc, d = _first(pair, ops)
        c = causer(sc, d)
        assert c.kind == "quirk" and "D10" in c.spec
        ids.add(c.id)
    assert ids == {"S2"}


def test_quirk_subsets_name_their_own_cause(causer):
    sc, d = _first([("sim:g2s", "sim:g2s-literal:S8")], "- x86_fault: {gfn: 0x100}\n")
    assert causer(sc, d).id == "S8"
    sc = loads_scenario(RAM.replace("pages: 4}]\n  memslots", "pages: 4, page_states: {0: needs_io}}]\n  memslots")
                        + "- x86_fault: {gfn: 0x100}\n", "t.yaml")
    d = Judge([("sim:g2s", "sim:g2s-literal:S4")]).judge(sc).first_unknown()
    assert d is not None and causer(sc, d).id == "S4"


def test_a_divergence_between_generations_is_the_function_where_they_part(causer):
    # HWPOISON under an invalidation covering the gfn: G3 (6.8+) retries before GUP, G2 GUPs,
    # sees the poison and delivers SIGBUS (regression g2-vs-g3-cd6c65d61db1)
    sc = loads_scenario("""
version: 1
name: t
world:
  vmas: [{name: ram, pages: 2, state: hwpoison, frames: normal}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}]
ops:
- invalidate_begin: {vma: ram, page: 1}
- mprotect: {vma: ram, prot: r}
- access: {gpa: 0x100000}
""", "t.yaml")
    d = next(x for x in Judge([("sim:g2", "sim:g3")]).judge(sc).divs if x.index == 2)    # known or not
    c = causer(sc, d)
    assert c.kind == "decision" and c.pair == "g2~g3" and "faultin" in c.title
    assert c.id.startswith("dec-") and c == causer(sc, d)


def test_decision_names_the_function_where_generations_part():
    left = [("hva_to_pfn_remapped", "(0,pfn)", ()), ("hva_to_pfn", "pfn", ("hva_to_pfn_remapped",))]
    right = [("hva_to_pfn_remapped", "(0,ERR_FAULT)", ()), ("hva_to_pfn", "ERR_FAULT", ("hva_to_pfn_remapped",))]
    assert parting_decision(left, right) == ("hva_to_pfn_remapped", "(0,pfn)", "(0,ERR_FAULT)")
    left2 = [("faultin", "1", ("_faultin",))]
    right2 = [("faultin", "1", ())]
    assert parting_decision(left2, right2) == ("faultin", "calls _faultin", "calls nothing")


def test_cause_round_trips_and_has_a_crash_state(causer):
    sc, d = _first([("sim:g2s", "sim:g2s-literal:S8")], "- x86_fault: {gfn: 0x100}\n")
    c = causer(sc, d)
    assert RootCause.from_dict(c.to_dict()) == c
    assert len(c.crash_state.splitlines()) <= 3 and "S8" in c.crash_state


def test_quirk_names():
    assert quirks_of("sim:g2s-literal") == ["S2", "S4", "S5", "S6", "S8"]
    assert quirks_of("sim:g2s-literal:S8,S4") == ["S8", "S4"]
    assert with_quirks({"S8", "S4"}) == "sim:g2s-literal:S4,S8"
    assert with_quirks(set()) == "sim:g2s"
    assert with_quirks(set(quirks_of("sim:g2s-literal"))) == "sim:g2s-literal"
