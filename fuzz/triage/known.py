"""Which root causes a user already knows: "new" means new to the user, not "not in the catalogue".

A cause is already known when it is in the regression corpus (``corpus/regressions``: every
promoted reproducer, re-judged), in an earlier campaign in the same artifacts directory (its
per-process counters carry each signature's cause), or in an earlier triage given with
``--join`` (its clusters are causes).  Each source maps cause id -> where it was seen.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fuzz.corpus.seeds import REGRESSIONS
from fuzz.judging.artifacts import read_stats
from kvmsim.checkout import ROOT
from kvmsim.yamlsrc import MAX_JSON_BYTES, ScenarioError, read_text

REPO = ROOT


def causes_in_regressions(directory: str = REGRESSIONS) -> dict[str, str]:
    """cause id -> reproducer file, for every promoted reproducer that still shows a divergence."""
    from fuzz.judging.judge import Judge
    from fuzz.judging.rootcause import RootCauser
    from fuzz.triage.cluster import ArtifactError, load_scenario_input

    out: dict[str, str] = {}
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith((".yaml", ".yml")))
    except OSError:
        return out
    judges: dict[tuple, Judge] = {}
    causer: RootCauser | None = None
    for n in names:
        path = os.path.join(directory, n)
        try:
            art = load_scenario_input(path)
        except ArtifactError:
            continue
        if not art.tag_pairs:
            continue
        key = tuple(art.tag_pairs)
        try:
            judge = judges.setdefault(key, Judge(list(art.tag_pairs)))
        except Exception:
            continue
        sc = art.scenario()
        j = judge.judge(sc)
        d = next((x for s in art.tag_signatures if (x := j.find(s)) is not None), None) or j.first_unknown()
        if d is None:
            continue
        if causer is None:
            causer = RootCauser(judge.catalogue)
        out.setdefault(causer(sc, d, j.unknown).id, os.path.relpath(path, REPO))
    return out


def causes_in_campaigns(artifacts: str, exclude_t0: float | None = None) -> dict[str, str]:
    """cause id -> 'earlier campaign', from the counters of campaigns other than ``exclude_t0``."""
    out: dict[str, str] = {}
    for st in read_stats(artifacts):
        if exclude_t0 is not None and abs(st.get("t0", 0) - exclude_t0) <= 1e-3:
            continue
        for v in (st.get("signatures") or {}).values():
            c = v.get("cause") if isinstance(v, dict) else None
            if isinstance(c, dict) and isinstance(c.get("id"), str) and not v.get("known"):
                out.setdefault(c["id"], f"an earlier campaign in {artifacts}")
    return out


def causes_in_triage(path: str) -> dict[str, str]:
    """cause id -> triage file, from a ``triage.json`` (or the directory holding it)."""
    f = os.path.join(path, "triage.json") if os.path.isdir(path) else path
    try:
        doc: Any = json.loads(read_text(f, MAX_JSON_BYTES, "triage report"))
    except (ScenarioError, ValueError, RecursionError):      # bounded read; a bad file adds nothing
        return {}
    out: dict[str, str] = {}
    for c in doc.get("clusters") or [] if isinstance(doc, dict) else []:
        if not isinstance(c, dict):
            continue
        rc = c.get("root_cause")
        cid = rc.get("id") if isinstance(rc, dict) else c.get("id")
        if isinstance(cid, str):
            out.setdefault(cid, f)
    return out


def causes_known(artifacts: str, started: float, join: list[str]) -> dict[str, str]:
    """cause id -> where the user has seen it already: ``corpus/regressions``, campaigns that
    started in ``artifacts`` before ``started``, and the ``join``ed triage outputs."""
    out = causes_in_regressions()
    out.update(causes_in_campaigns(artifacts, started))
    for j in join:
        out.update(causes_in_triage(j))
    return out
