"""Semantic features of an input: which decision-table cells of each generation it reaches, and
which oracle outcomes it produces.  Used by ``pfndiff corpus minimize`` (keep them all) and
``pfndiff corpus stats`` (show them).

Why derive cells from traces: each generation's decision table (spec §2.6, §3.4, §4, §5.1, §6.7)
is code in its module, not data; but every row leaves a distinct observation.  A **cell** is the
tuple, per API-level op record of one generation's trace:

    op class      lookup[ref|noref|pin|atomic], gfn_to_page, vcpu_map[rw|ro], vcpu_unmap, x86_fault,
                  access, get_dirty_log (host and memslot events are inputs, not table rows)
    result class  lookup: the pfn class (pfn, NOSLOT, ERR_FAULT, ...); gfn_to_page: page or the error;
                  vcpu_map: ret; x86_fault: ret/result; access: the VMM outcome; dirty log: dirty|clean
    writable      lookup: writable; x86_fault: map_writable; access: the access's own write flag
    ref delta     value class of the references KVM holds after the call and of what the caller's
                  canonical release leaks (``{+1}``, ``{}``, ``leak{+1}``), pins likewise
    path          the kernel function the generation used (lookup/gfn_to_page ``call``, x86_fault
                  ``calls``, vcpu_map ``method``), access: the RET_PF_* classes of its faults
    events        WARN/BUG/CORRUPT classes, if any

An **oracle outcome** is, per compared pair (and per backend for invariants): ``equal``, or each
divergence as ``known:<entry>`` / ``new:<op class> <field> <values>``.  A feature is
``(generation or pair, cell or outcome)``; signatures' value classes keep them stable across
inputs (page names, hvas and data never enter a feature).
"""

from __future__ import annotations

from dataclasses import dataclass

from fuzz.inputs.codec import decode
from fuzz.judging.cells import cell, outcome
from fuzz.judging.judge import Judge, Pair
from kvmsim.scenario import Scenario

SIM_BACKENDS = ("sim:g1", "sim:g2", "sim:g2s", "sim:g2s-literal", "sim:g2f", "sim:g3")
DEFAULT_PAIRS: list[Pair] = [("sim:g2", "sim:g3"), ("sim:g2", "sim:g2s-literal")]

Feature = tuple[str, str, str]            # (kind: cell | oracle, generation or pair, text)


@dataclass
class FeatureExtractor:
    """All sim generations for cells; the given pairs for oracle outcomes."""
    pairs: list[Pair]

    def __post_init__(self) -> None:
        names = {n for p in self.pairs for n in p if n}
        self.judge = Judge(list(self.pairs) + [(b, "") for b in SIM_BACKENDS if b not in names])

    def of_scenario(self, sc: Scenario) -> set[Feature]:
        j = self.judge.judge(sc)
        out: set[Feature] = set()
        for name, t in j.traces.items():
            gen = name.removeprefix("sim:")
            for rec in t.records:
                c = cell(sc.ops[rec.index], rec) if rec.index < len(sc.ops) else None
                if c is not None:
                    out.add(("cell", gen, c))
        for d in j.divs:
            who = f"{d.left}~{d.right}" if d.right else d.left
            out.add(("oracle", who, outcome(d)))
        for a, b in self.pairs:
            who = f"{a}~{b}" if b else a
            if not any(f[0] == "oracle" and f[1] == who for f in out):
                out.add(("oracle", who, "equal"))
        return out

    def of_bytes(self, data: bytes) -> set[Feature]:
        return self.of_scenario(decode(data))
