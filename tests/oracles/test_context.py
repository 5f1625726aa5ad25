"""Op contexts follow the page states host events leave, as the model's mm does (madvise, mprotect)."""

from kvmsim import get_backend, loads_scenario
from oracles.context import op_contexts

SC = """
version: 1
world:
  vmas:
    - {name: priv, pages: 2, state: present_rw}
    - {name: shrd, pages: 2, shared: true, page_states: {0: present_rw}}
  memslots:
    - {id: 0, gfn: 0x100, pages: 2, vma: priv}
    - {id: 1, gfn: 0x200, pages: 2, vma: shrd}
ops:
  - lookup: {gfn: 0x100}
  - madvise: {vma: priv, page: 1}
  - madvise: {vma: shrd}
  - lookup: {gfn: 0x100}
  - lookup: {gfn: 0x101}
  - lookup: {gfn: 0x200}
  - mprotect: {vma: priv, prot: r}
  - mprotect: {vma: priv, prot: rw}
  - lookup: {gfn: 0x100, write: true}
"""


def test_madvise_and_mprotect_change_the_page_state_later_ops_see() -> None:
    ctx = op_contexts(loads_scenario(SC))
    assert ctx[0]["ctx.state"] == "present_rw"
    assert ctx[3]["ctx.state"] == "present_rw"      # page 0 was not in the madvised range
    assert ctx[4]["ctx.state"] == "unpopulated"     # a private page is freed
    assert ctx[5]["ctx.state"] == "resident"        # a shared page stays in the page cache
    assert ctx[8]["ctx.state"] == "present_ro"      # write-protected by mprotect(PROT_READ), not restored
    assert ctx[8]["ctx.prot"] == "rw"


def test_the_model_write_protects_pages_it_has_not_touched_yet() -> None:
    """``mprotect`` write-protects every present PTE, also of pages the scenario never named."""
    sc = loads_scenario(SC.replace("  - lookup: {gfn: 0x100}\n", "", 1))
    trace = get_backend("sim:g1").run(sc)
    last = trace.records[-1].api
    assert last["writable"] is True and last["result"] == "pfn"   # a write lookup breaks the protection
    fast = loads_scenario(SC.replace("lookup: {gfn: 0x100, write: true}",
                                     "lookup: {gfn: 0x100, atomic: true, write: true}"))
    assert get_backend("sim:g1").run(fast).records[-1].api["result"] == "ERR_FAULT"   # fast GUP needs a writable PTE


INVAL = """
version: 1
world:
  vmas:
    - {name: ram, pages: 2}
  memslots:
    - {id: 0, gfn: 0x100, pages: 2, vma: ram}
ops:
  - invalidate_begin: {vma: ram, page: 1}
  - x86_fault: {gfn: 0x100}
  - mprotect: {vma: ram, prot: r}
  - x86_fault: {gfn: 0x100}
  - invalidate_end: {}
  - invalidate_begin: {vma: ram, page: 1}
  - x86_fault: {gfn: 0x100}
"""


def test_an_event_during_an_open_invalidation_widens_its_range_until_none_is_in_progress() -> None:
    """kvm_mmu_invalidate_range_add: mprotect's own invalidation of the whole VMA, begun while page 1's is
    open, leaves the open range covering page 0 too; once none is in progress the next one starts afresh."""
    ctx = op_contexts(loads_scenario(INVAL))
    assert (ctx[1]["ctx.inval_hva"], ctx[1]["ctx.inval_gfn"]) == (False, False)
    assert (ctx[3]["ctx.inval_hva"], ctx[3]["ctx.inval_gfn"]) == (True, True)
    assert (ctx[6]["ctx.inval_hva"], ctx[6]["ctx.inval_gfn"]) == (False, False)


def test_mprotect_to_the_same_protection_changes_nothing() -> None:
    """mm/mprotect.c mprotect_fixup returns at ``newflags == oldflags``: no invalidation widens the open
    range, the sequence does not move and the pages stay writable, as in the model's ``op_mprotect``."""
    ctx = op_contexts(loads_scenario(INVAL.replace("prot: r}", "prot: rw}")))
    assert (ctx[3]["ctx.inval_hva"], ctx[3]["ctx.inval_gfn"]) == (False, False)
    same = op_contexts(loads_scenario(SC.replace("prot: r}", "prot: rw}")))
    assert same[8]["ctx.state"] == "present_rw"
    assert same[8]["ctx.seq0"] is False               # the madvise of an in-slot page moved it
    quiet = op_contexts(loads_scenario(INVAL.split("ops:")[0] + "ops:\n  - mprotect: {vma: ram, prot: rw}\n"
                                       "  - x86_fault: {gfn: 0x100}\n"))
    assert quiet[1]["ctx.seq0"] is True and quiet[1]["ctx.invalidating"] is False
