"""One comparison of two backends' traces of a scenario, as every command makes it.

Why one function: a model paired with a real kernel must be re-run over the ops the kernel ran
(``kvmsim.realised``), a difference there may be a named quirk of that kernel or host
(known, documented, never a model bug: the real backend says which, ``explain``), and every output says how many
ops were compared.  ``pfndiff diff``, the fuzz engine and triage's judge all go through here, so a
signature and its status are the same wherever they are computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmsim.realised import Coverage, coverage, is_model, realise_pair
from kvmsim.scenario import Scenario
from kvmsim.trace import Trace

from .catalogue import Catalogue
from .diff import Divergence, RecordDiff, RecordDiffs, compare, level_for
from .faultpath import compare_faults
from .normalise import API_LEVEL, Normalised
from .signature import make_signature, op_class

# (scenario, op index, fields, model trace, real trace) -> field -> "quirk:<name>"
Explain = Callable[[Scenario, int, list[str], Trace, Trace], dict[str, str]]


def compare_pair(sc: Scenario, left: Trace, right: Trace, cat: Catalogue, run: Callable[[str, Scenario], Trace],
                 level: str | None = None, invariants: bool = False,
                 ctxs: list[dict[str, Any]] | None = None,
                 explain: Explain | None = None,
                 norms: Normalised | None = None,
                 diffs: RecordDiffs | None = None,
                 differing: dict[int, RecordDiff] | None = None) -> tuple[list[Divergence], Coverage, Trace, Trace]:
    """Divergences, coverage and the two traces compared (``run(backend, scenario)`` re-runs a model;
    ``explain``, the real backend's quirks, marks the differences they account for; ``norms``, records
    normalised by earlier comparisons of the same traces; ``diffs``, record differences remembered
    across comparisons; ``differing``, if given, receives the difference of each op whose two compared
    records differ)."""
    lt, rt = realise_pair(sc, left, right, run)
    level = level or level_for(lt, rt)
    divs = compare(sc, lt, rt, cat, level=level, invariants=invariants, ctxs=ctxs, norms=norms,
                   diffs=diffs, differing=differing)
    real = None
    if is_model(lt.backend) != is_model(rt.backend):
        model, real = (lt, rt) if is_model(lt.backend) else (rt, lt)
    cov = coverage(lt, rt, level == API_LEVEL)
    if real is not None:
        divs.extend(_fault_divergences(sc, lt, rt, model, real, cov))
    if real is not None and explain is not None and any(not d.known for d in divs):
        for d in divs:
            if d.oracle.startswith("diff:") and not d.known and d.index < len(sc.ops):
                # a new dict: the one it has may be shared with other divergences (oracles.diff.Verdict)
                d.explained = {**d.explained, **explain(sc, d.index, [f for f in d.fields if f not in d.explained],
                                                        model, real)}
    return divs, cov, lt, rt


def _fault_divergences(sc: Scenario, lt: Trace, rt: Trace, model: Trace, real: Trace,
                       cov: Coverage) -> list[Divergence]:
    """The fault-path comparison (oracles/faultpath.py) as divergences ``diff:fault``, one per
    access, and its counts in the coverage."""
    fc = compare_faults(model, real)
    cov.fault_accesses += fc.accesses
    cov.fault_fields += fc.fields
    by_op: dict[int, list] = {}
    for fd in fc.differences:
        by_op.setdefault(fd.index, []).append(fd)
    out = []
    for i, fds in sorted(by_op.items()):
        left = {fd.field: (fd.model if lt is model else fd.real) for fd in fds}
        right = {fd.field: (fd.real if lt is model else fd.model) for fd in fds}
        fields = [fd.field for fd in fds]
        d = Divergence("diff:fault", lt.backend, rt.backend, i, sc.ops[i].kind, fields, fields[0], left, right)
        d.signature = make_signature(d.oracle, lt.backend, rt.backend, op_class(sc.ops[i].kind, sc.ops[i].args),
                                     fields[0], left[fields[0]], right[fields[0]])
        out.append(d)
    return out
