"""Root causes: one cause per decision, whatever op class or field shows it."""

from __future__ import annotations

import os

import pytest

from fuzz.judging.judge import Judge
from fuzz.judging.rootcause import RootCause, RootCauser, parting_decision, quirks_of, with_quirks
from kvmsim import loads_scenario
from kvmsim.checkout import ROOT
from oracles.catalogue import Catalogue

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
    # catalogued as D20 (mprotect's invalidation widens the open one's range to the faulting gfn) ...
    d = next(x for x in Judge([("sim:g2", "sim:g3")]).judge(sc).divs if x.index == 2)
    assert d.known and causer(sc, d).kind == "known" and "D20" in causer(sc, d).title
    # ... and, judged without a catalogue, the cause is where the two generations' decisions part
    bare = Catalogue([])
    d = next(x for x in Judge([("sim:g2", "sim:g3")], bare).judge(sc).divs if x.index == 2)
    c = RootCauser(bare)(sc, d)
    assert c.kind == "decision" and c.pair == "g2~g3" and "faultin" in c.title
    assert c.id.startswith("dec-") and c == RootCauser(bare)(sc, d)


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


# D12b (v11's remapped path reports a read-only memslot's mapping writable) through two op classes:
# an x86 read fault on a VM_PFNMAP BAR (writable SPTE) and a lookup of an I/O remap (writable flag)
D12B_INPUTS = ("""
version: 1
name: d12b-fault
world:
  vmas: [{name: bar, pages: 1, remap: pfnmap}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: bar, readonly: true}]
ops:
- x86_fault: {gfn: 0x100}
""", """
version: 1
name: d12b-lookup
world:
  vmas: [{name: vma0, pages: 2, remap: io, frames: normal}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: vma0, readonly: true}]
ops:
- lookup: {gfn: 0x101}
""")


def test_one_d12b_cause_and_crash_state_whatever_input_shows_it(causer):
    from fuzz.judging import crash
    by_primary, by_pair_diff = set(), set()
    for text in D12B_INPUTS:
        sc = loads_scenario(text, "t.yaml")
        j = Judge([("sim:g2f", "sim:g3")]).judge(sc)
        d = crash.primary(j.divs)
        assert d is not None and d.right                       # the pair difference comes first
        cause, parts = crash.crash_parts(sc, d, causer, j.divs)
        assert cause.kind == "invariant" and "read-only memslot" in cause.title
        by_primary.add((cause.id, tuple(crash.crash_state(parts)), cause.crash_state))
        alone, parts = crash.crash_parts(sc, d, causer)        # without the invariant: the parting decision
        assert alone.kind == "decision" and "hva_to_pfn_remapped" in alone.title
        by_pair_diff.add((alone.id, tuple(crash.crash_state(parts)), alone.crash_state))
    assert len(by_primary) == 1 and len(by_pair_diff) == 1


def test_cause_ids_do_not_depend_on_hash_randomisation(causer):
    import json
    import os
    import subprocess
    import sys
    code = ("import json,sys\nfrom fuzz.judging import crash\nfrom fuzz.judging.judge import Judge\n"
            "from kvmsim import loads_scenario\n"
            "sc = loads_scenario(sys.stdin.read(), 't.yaml')\nj = Judge([('sim:g2f', 'sim:g3')]).judge(sc)\n"
            "c, parts = crash.crash_parts(sc, crash.primary(j.divs), others=j.divs)\n"
            "print(json.dumps([c.id, crash.crash_state(parts)]))\n")
    root = ROOT
    seen = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], input=D12B_INPUTS[1], capture_output=True, text=True,
                             cwd=root, env={**os.environ, "PYTHONHASHSEED": seed}, check=True, timeout=120)
        seen.add(out.stdout)
    sc = loads_scenario(D12B_INPUTS[0], "t.yaml")
    from fuzz.judging import crash
    j = Judge([("sim:g2f", "sim:g3")]).judge(sc)
    c, parts = crash.crash_parts(sc, crash.primary(j.divs), causer, j.divs)
    assert seen == {json.dumps([c.id, crash.crash_state(parts)]) + "\n"}


def test_quirk_ablation_compares_both_sides(causer):
    # a guarded no-reference lookup at sequence 0 under a fatal signal: G2's slow GUP says SIGPENDING,
    # the literal sketch fails it first (S2); its intended reading resolves the page through fast GUP
    # (pfn), which is not the same difference, so the cause is S2, not a decision of the intended sketch
    sc = loads_scenario(RAM + "- gfn_to_page: {gfn: 0x100}\n- signal: {kind: fatal}\n"
                        "- lookup: {gfn: 0x100, want_ref: false, guarded: true, try_writable: false}\n", "t.yaml")
    d = next(x for x in Judge([("sim:g2", "sim:g2s-literal")]).judge(sc).unknown if x.index == 2)
    assert d.left_obs["api.result"] == "ERR_SIGPENDING" and d.right_obs["api.result"] == "ERR_FAULT"
    assert causer(sc, d).id == "S2"


G2F_PUT = "    if not kfp.flags & FOLL_GET:\n        w.db.put(pg)"


@pytest.fixture(scope="module")
def patched_g2f(tmp_path_factory):
    """A copy of G2f that keeps the reference a no-reference caller did not want and drops the one a
    FOLL_GET caller did, registered as a plugin backend as a developer's patched generation would be."""
    import json

    from kvmsim.backend import load_plugins
    with open(os.path.join(ROOT, "kvmsim", "g2f_posted.py"), encoding="utf-8") as fh:
        src = fh.read()
    assert src.count(G2F_PUT) == 1
    d = tmp_path_factory.mktemp("patched")
    (d / "g2f_put.py").write_text(src.replace(G2F_PUT, G2F_PUT.replace("if not", "if")), encoding="utf-8")
    (d / "plugins.json").write_text(json.dumps([{"backend": "sim:g2f-put", "module": "kvmsim._test_g2f_put",
                                                 "file": str(d / "g2f_put.py"), "class": "G2fPosted"}]))
    load_plugins(str(d / "plugins.json"))
    return "sim:g2f-put"


def test_a_patched_copy_is_one_cause_where_it_departs_from_its_model(causer, patched_g2f):
    causes = set()
    for ops in ("- lookup: {gfn: 0x100}\n",                                         # a reference too few
                "- lookup: {gfn: 0x100, want_ref: false, guarded: true}\n",         # one kept
                "- access: {gpa: 0x100000}\n"):
        sc = loads_scenario(RAM + ops, "t.yaml")
        j = Judge([(patched_g2f, "sim:g3")]).judge(sc)
        assert j.unknown
        causes |= {causer(sc, d, j.unknown).key for d in j.unknown}
    assert causes == {"variant g2f-put refcounted"}
    # what the model shows as well is the model's, named by it: G2f's D12b, whichever copy showed it
    sc = loads_scenario(D12B_INPUTS[0], "t.yaml")
    j, model = (Judge([(b, "sim:g3")]).judge(sc) for b in (patched_g2f, "sim:g2f"))
    c = causer(sc, j.unknown[0], j.unknown)
    assert c == causer(sc, model.unknown[0], model.unknown) and c.kind == "invariant" and c.pair == "g2f"
