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
from .diff import Divergence, compare, level_for
from .normalise import API_LEVEL

# (scenario, op index, fields, model trace, real trace) -> field -> "quirk:<name>"
Explain = Callable[[Scenario, int, list[str], Trace, Trace], dict[str, str]]


def compare_pair(sc: Scenario, left: Trace, right: Trace, cat: Catalogue, run: Callable[[str, Scenario], Trace],
                 level: str | None = None, invariants: bool = False,
                 ctxs: list[dict[str, Any]] | None = None,
                 explain: Explain | None = None) -> tuple[list[Divergence], Coverage, Trace, Trace]:
    """Divergences, coverage and the two traces compared (``run(backend, scenario)`` re-runs a model;
    ``explain``, the real backend's quirks, marks the differences they account for)."""
    lt, rt = realise_pair(sc, left, right, run)
    level = level or level_for(lt, rt)
    divs = compare(sc, lt, rt, cat, level=level, invariants=invariants, ctxs=ctxs)
    real = None
    if is_model(lt.backend) != is_model(rt.backend):
        model, real = (lt, rt) if is_model(lt.backend) else (rt, lt)
    if real is not None and explain is not None and any(not d.known for d in divs):
        for d in divs:
            if d.oracle.startswith("diff:") and not d.known and d.index < len(sc.ops):
                d.explained.update(explain(sc, d.index, [f for f in d.fields if f not in d.explained],
                                                      model, real))
    return divs, coverage(lt, rt, level == API_LEVEL), lt, rt
