"""``pfndiff kernels compare``'s fault-path view: per spec §7 row (the seeds' ``tags.spec``), does
each kernel show it at the fault-path level (a seed of the row ran accesses whose fault-path
records were compared with the model), and does it agree with the model of its generation?"""

from __future__ import annotations

from typing import Any

NOT_SHOWN = "-"


def fault_status(divs: list[Any], fault_fields: int) -> str:
    """One seed on one kernel: ``=model``, ``=model (quirk …)``, ``≠model`` or ``-`` (no access of
    the seed reached this kernel's traced fault path)."""
    if not fault_fields:
        return NOT_SHOWN
    fault = [d for d in divs if d.oracle == "diff:fault"]
    if any(not d.known for d in fault):
        return "≠model"
    quirks = sorted({q.removeprefix("quirk:") for d in fault for q in d.explained.values()})
    return f"=model ({', '.join(quirks)})" if quirks else "=model"


def by_row(rows: list[Any], columns: list[str]) -> dict[str, dict[str, str]]:
    """spec row (D1…) -> kernel -> what the row's seeds showed there: ``≠model`` if any seed
    differs, else the quirks that explain differences (``=model (…)``), else ``=model``, else
    not shown."""
    seen: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        for tag in r.tags:
            if tag.startswith("D"):
                for c in columns:
                    seen.setdefault(tag, {}).setdefault(c, set()).add(r.fault.get(c, NOT_SHOWN))
    out: dict[str, dict[str, str]] = {}
    for tag, cells in seen.items():
        for c, st in cells.items():
            quirked = sorted(s for s in st if s.startswith("=model ("))
            out.setdefault(tag, {})[c] = ("≠model" if "≠model" in st else "; ".join(quirked) if quirked
                                          else "=model" if "=model" in st else NOT_SHOWN)
    return dict(sorted(out.items(), key=lambda kv: _row_key(kv[0])))


def _row_key(tag: str) -> tuple[int, str]:
    digits = "".join(ch for ch in tag[1:] if ch.isdigit())
    return (int(digits) if digits else 0, tag)


def format_rows(table: dict[str, dict[str, str]], columns: list[str]) -> list[str]:
    lines = ["fault path per spec §7 row (its seeds' accesses, traced on each kernel, vs the model of its "
             "generation; - = no access of the row's seeds reached the fault path there):"]
    for tag, cells in table.items():
        lines.append(f"  {tag:<5} " + "  ".join(f"{c}: {cells.get(c, NOT_SHOWN)}" for c in columns))
    shown = {c: sorted((t for t, cells in table.items() if cells.get(c, NOT_SHOWN).startswith("=model")), key=_row_key)
             for c in columns}
    for c in columns:
        lines.append(f"  agrees with the model at the fault path on {c}: {', '.join(shown[c]) or 'none'}")
    return lines
