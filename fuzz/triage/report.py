"""Human-readable pieces of triage: two traces side by side with the first differing op marked,
and the spec rows that explain (or fail to explain) a divergence.

Why plain text in fixed columns: the same rendering goes to the terminal (`pfndiff repro`) and,
inside a fenced block, into the Markdown reports, and reads the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from fuzz.judging.rootcause import QUIRK_ROWS, quirks_of
from kvmsim.scenario import OP_SCHEMAS, Scenario
from kvmsim.trace import OpRecord, Trace
from oracles.catalogue import Catalogue
from oracles.diff import Divergence

COL = 54
MARK = ">>"


HEX_KEYS = frozenset({"gfn", "gpa", "hva", "pfn", "data", "start", "addr", "si_addr"})


def kvm_view(v: Any, key: str = "") -> Any:
    """A trace value as a KVM developer reads it: gfns, gpas, hvas, pfns and data in hex."""
    if isinstance(v, dict):
        return {k: kvm_view(x, str(k)) for k, x in v.items()}
    if isinstance(v, list):
        return [kvm_view(x, key) for x in v]
    if key in HEX_KEYS and isinstance(v, int) and not isinstance(v, bool):
        return _Hex(v)
    return v


class _Hex(int):
    """Rendered as 0x… by ``_flow``."""


class _FlowDumper(yaml.SafeDumper):
    pass


_FlowDumper.add_representer(_Hex, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", hex(v)))


def _flow(v: Any) -> str:
    if isinstance(v, _Hex):
        return hex(v)
    if isinstance(v, (dict, list)):
        return yaml.dump(v, Dumper=_FlowDumper, default_flow_style=True, width=10**6, sort_keys=False).strip()
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


flow_text = _flow


def flatten(rec: OpRecord | None) -> dict[str, str]:
    """``api.result: pfn`` style lines of one record."""
    if rec is None:
        return {}
    out: dict[str, str] = {}
    for level in ("api", "vmm"):
        for k, v in (getattr(rec, level) or {}).items():
            out[f"{level}.{k}"] = _flow(kvm_view(v, k))
    if rec.events:
        out["events"] = _flow(rec.events)
    return out


def op_line(sc: Scenario, i: int) -> str:
    if i >= len(sc.ops):
        return "end of scenario"
    op = sc.ops[i]
    schema = {f.name: f for f in OP_SCHEMAS[op.kind]}
    args = {k: v for k, v in op.args.items() if k not in schema or schema[k].required or v != schema[k].default}
    if not args:
        return op.kind
    return f"{op.kind}: {{" + ", ".join(f"{k}: {_hex(v, k)}" for k, v in args.items()) + "}"


def _hex(v: Any, key: str = "") -> str:
    """Addresses and gfns as in the scenario files (always hex for gfns, gpas, hvas and data)."""
    if isinstance(v, int) and not isinstance(v, bool) and (v >= 0x1000 or key in HEX_KEYS):
        return hex(v)
    return _flow(v)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def side_by_side(sc: Scenario, left: Trace, right: Trace | None, mark: int, fields: Sequence[str] = (),
                 color: bool = False) -> str:
    """Every op with both records in two columns.  ``mark`` is the first differing op (``>>``);
    a ``*`` flags each line whose value differs between the two sides (or a divergence field)."""
    rname = right.backend if right else "(no second trace)"
    lines = [f"   {_cut(left.backend, COL):<{COL}} | {rname}", "   " + "-" * (COL * 2 + 3)]
    lrecs = {r.index: r for r in left.records}
    rrecs = {r.index: r for r in right.records} if right else {}
    hi, lo = ("\033[1;31m", "\033[0m") if color else ("", "")
    for i in range(len(sc.ops)):
        head = f"{MARK if i == mark else '  '} [{i}] {op_line(sc, i)}"
        lines.append(f"{hi}{head}{lo}" if i == mark else head)
        lf, rf = flatten(lrecs.get(i)), flatten(rrecs.get(i))
        for k in list(dict.fromkeys([*lf, *rf])):
            lv, rv = lf.get(k, "-"), rf.get(k, "-")
            differs = right is not None and lv != rv
            star = "*" if differs or (i == mark and k in fields) else " "
            text = f" {star} {_cut(f'{k}: {lv}', COL):<{COL}} | {_cut(f'{k}: {rv}', COL) if right else ''}"
            lines.append(f"{hi}{text}{lo}" if star == "*" and i == mark else text)
    if mark >= len(sc.ops):
        lines.append(f"{MARK} [end] " + ", ".join(f"{k}={_flow(v)}" for k, v in left.meta.items()
                                                   if k in ("refs_held_at_end", "pins_held_at_end")))
    return "\n".join(lines)


@dataclass
class SpecRow:
    id: str
    text: str


def explain(d: Divergence, cat: Catalogue, needed: list[str] | None = None,
            stated: tuple[str, ...] = ()) -> list[SpecRow]:
    """The spec rows that really apply to a divergence: catalogue entries whose conditions matched
    and that explain some of its fields, the literal sketch's quirks it needs (``needed``; all
    enabled ones when not computed), and the bug rows its root cause breaks (``stated``, e.g. an
    invariant's D12b).  Entries whose conditions do not match are not listed."""
    rows: list[SpecRow] = []
    seen: set[str] = set()
    for row in stated:
        seen.add(row)
        rows.append(SpecRow(row, f"the root cause breaks what the §7 {row} row states (a bug row, never catalogued)"))
    for f, eid in d.explained.items():
        e = cat.by_id.get(eid.split(" (")[0])
        if e is not None and e.id not in seen:
            seen.add(e.id)
            rows.append(SpecRow(e.spec, f"{e.id}: {e.title} (explains {f})"))
    for b in (d.left, d.right):
        for q in quirks_of(b) if b else []:
            if q in seen:
                continue
            seen.add(q)
            if needed is not None and q in needed:
                quirk_row = QUIRK_ROWS.get(q)
                where = f"spec §4.3, row {quirk_row}" if quirk_row else "spec §4.3"
                rows.insert(0, SpecRow(q, f"literal-sketch quirk {q} on {b}: without it the divergence disappears "
                                          f"({where}; a bug, never catalogued)"))
            elif needed is None:
                rows.append(SpecRow(q, f"literal-sketch quirk {q} is enabled on {b} "
                                       "(spec §4.3; a bug, never catalogued)"))
    if d.field == "events" and any(str(v).startswith(("[WARN", "[BUG", "[CORRUPT")) for v in
                                   (*d.left_obs.values(), *d.right_obs.values())):
        rows.append(SpecRow("-", "a WARN/BUG/CORRUPT event is never a known divergence (DESIGN: bugs are findings)"))
    return rows


def partner(backend: str, pairs: list[tuple[str, str]], traces: dict[str, Trace]) -> Trace | None:
    """The trace a single-trace divergence (an invariant) is shown next to: its pair's other side."""
    for a, b in pairs:
        if backend == a and b:
            return traces.get(b)
        if backend == b:
            return traces.get(a)
    return None


def view(d: Divergence, traces: dict[str, Trace], pairs: list[tuple[str, str]], cat: Catalogue,
         needed: list[str] | None, stated: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a reader needs to see one divergence again without re-running it (a real kernel
    cannot be re-run for a report): both traces, the first differing op, the fields, the spec
    rows.  Plain JSON; ``pfndiff triage`` stores it per cluster, ``pfndiff report`` draws it."""
    left = traces.get(d.left)
    right = traces.get(d.right) if d.right else partner(d.left, pairs, traces)
    return {"format": "pfndiff-view/1", "signature": d.signature, "known": d.known,
            "left": d.left, "right": right.backend if right is not None else "",
            "mark": d.index, "op": d.op, "fields": list(d.fields),
            "traces": [t.to_dict() for t in (left, right) if t is not None],
            "spec_rows": [[r.id, r.text] for r in explain(d, cat, needed, stated)]}
