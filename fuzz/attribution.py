"""Which spec rows explain a divergence: the catalogue entries that explain its fields, and, for the
literal sketch, the quirks it actually needs, found by ablation.

Why ablation: ``sim:g2s-literal`` enables five quirks at once, so "S2, S4, S5, S6, S8 were on" says
nothing about a finding.  Re-running the scenario with one quirk switched off
(``sim:g2s-literal:<the others>``) and checking whether the signature survives names the quirks it
depends on; spec §4.3/§7 then give the divergence row of each (S2 → D10, S4 → D23, S5 → D22,
S8 → D24; S6 has no row of its own).
"""

from __future__ import annotations

from kvmsim.scenario import Scenario
from oracles.catalogue import Catalogue
from oracles.diff import Divergence

from .engine import _quirks
from .judge import Judge, Pair

QUIRK_ROWS = {"S2": "D10", "S4": "D23", "S5": "D22", "S8": "D24"}
LITERAL = "sim:g2s-literal"


def _without(backend: str, quirk: str) -> str | None:
    if not backend.startswith(LITERAL):
        return None
    rest = [q for q in _quirks(backend) if q != quirk]
    return f"{LITERAL}:{','.join(rest)}" if rest else "sim:g2s"


def _rename(signature: str, old: str, new: str) -> str:
    words = signature.split(" ")
    if len(words) > 1:
        words[1] = "~".join(new if b == old else b for b in words[1].split("~"))
    return " ".join(words)


_JUDGES: dict[tuple[Pair, ...], Judge] = {}


def _judge(pairs: list[Pair], catalogue: Catalogue | None) -> Judge:
    key = tuple(pairs)
    if key not in _JUDGES or (catalogue is not None and _JUDGES[key].catalogue is not catalogue):
        _JUDGES[key] = Judge(list(pairs), catalogue)
    return _JUDGES[key]


def needed_quirks(sc: Scenario, pairs: list[Pair], signature: str, catalogue: Catalogue | None = None) -> list[str]:
    """The literal-sketch quirks without which ``signature`` no longer shows."""
    out: list[str] = []
    words = signature.split(" ")
    named = set(words[1].split("~")) if len(words) > 1 else set()
    for b in sorted(n for n in named if n.startswith(LITERAL)):
        for q in _quirks(b):
            alt = _without(b, q)
            if alt is None:
                continue
            alt_pairs = [tuple(alt if n == b else n for n in p) for p in pairs]
            try:
                j = _judge(alt_pairs, catalogue).judge(sc)                             # type: ignore[arg-type]
            except Exception:
                continue
            if _rename(signature, b, alt) not in j.signatures:
                out.append(q)
    return sorted(set(out))


def spec_rows(d: Divergence, quirks: list[str], catalogue_spec: dict[str, str]) -> list[str]:
    """Spec ids for a cluster: explaining catalogue rows, needed quirks and their D rows."""
    ids = {catalogue_spec[e.split(" (")[0]] for e in d.explained.values() if e.split(" (")[0] in catalogue_spec}
    ids |= set(quirks) | {QUIRK_ROWS[q] for q in quirks if q in QUIRK_ROWS}
    return sorted(ids, key=lambda s: (s[0], int("".join(c for c in s[1:] if c.isdigit()) or 0), s))
