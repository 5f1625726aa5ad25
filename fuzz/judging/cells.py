"""The decision-table cell an op record reached and the outcome an oracle gave: the semantic
features of an input (fuzz.corpus.features documents what a cell is made of).  Here, below the
targets, because the diff target feeds them to libFuzzer as coverage (semantic feedback).
"""

from __future__ import annotations

import marshal
from typing import Any

from kvmsim.scenario import Op
from kvmsim.trace import OpRecord, Trace
from oracles.diff import Divergence
from oracles.signature import event_class, op_class, value_class

TABLE_OPS = ("lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault", "access", "get_dirty_log")
_TABLE_OPS = frozenset(TABLE_OPS)


def _refs(api: dict) -> str:
    held = api.get("held")
    parts = [value_class(held) if held else "{}"]          # value_class({}) without the walk
    for key, label in (("leaked", "leak"), ("pinned", "pin"), ("pins_leaked", "pinleak")):
        v = api.get(key)
        if v:
            parts.append(label + value_class(v))
    return "/".join(parts)


def cell(op: Op, rec: OpRecord) -> str | None:
    """The decision-table cell one op record reached (None for ops that are not table rows)."""
    if op.kind not in _TABLE_OPS:
        return None
    api = rec.api if isinstance(rec.api, dict) and "not_observable" not in rec.api else {}
    vmm = rec.vmm or {}
    k = op.kind
    result, wr, path = _reached(op, api, vmm)
    parts = [op_class(k, op.args), str(value_class(result) if not isinstance(result, str) else result),
             f"w={value_class(wr) if wr != '-' else '-'}"]
    if k not in ("access", "get_dirty_log", "vcpu_unmap") or api:
        parts.append("ref=" + _refs(api))
    if path:
        parts.append(path)
    if rec.events:
        parts.append(",".join(sorted({event_class(e) for e in rec.events})))
    return " | ".join(parts)


# Cells ``RememberedCells`` keeps; a bound on memory (a few hundred bytes each), not a tuning knob.
CELLS_MEMO_SIZE = 1 << 14


class RememberedCells:
    """``cell(op, rec)``, remembered across judgements by what it reads: the op's class (and an
    access's direction: ``op_key``) and the ``marshal`` form (version 2: no back-references, so
    equal bytes are equal values of the same types) of the record's observations.  Why: fuzzed
    scenarios repeat the same op records over and over, and writing a record's form costs a
    fraction of its cell.  A record marshal cannot write is worked out afresh."""

    def __init__(self) -> None:
        self._got: dict[tuple[str, bytes], str] = {}

    @staticmethod
    def op_key(op: Op) -> str:
        """What a cell reads of the op (its class, and an access's direction)."""
        opc = op_class(op.kind, op.args)
        return opc + " " + value_class(op.args.get("write", False)) if op.kind == "access" else opc

    def __call__(self, op: Op, rec: OpRecord, key: str | None = None) -> str | None:
        """The cell of a table op's record (``key``: ``op_key(op)``, if the caller has it)."""
        try:
            form = marshal.dumps((rec.api, rec.vmm, rec.events), 2)
        except ValueError:
            return cell(op, rec)
        k = (key or self.op_key(op), form)
        got = self._got.get(k)
        if got is None:
            c = cell(op, rec)
            if c is None:
                return None
            if len(self._got) >= CELLS_MEMO_SIZE:
                del self._got[next(iter(self._got))]
            got = self._got[k] = c
        return got


REMEMBERED = RememberedCells()  # the cells every trace_cells call shares (cell is a pure function)


def trace_cells(ops: list[Op], traces: dict[str, Trace],
                cells: RememberedCells = REMEMBERED) -> list[tuple[str, str]]:
    """(backend, cell) for each op record of each trace that reached a table row, trace by trace.
    A record equal to one an earlier trace showed at the same op (common: generations agree on most
    ops) reaches the same cell, so each distinct record's cell is looked up once (in ``cells``)."""
    out: list[tuple[str, str]] = []
    keys = [cells.op_key(op) if op.kind in _TABLE_OPS else None for op in ops]
    n = len(ops)
    reached: dict[int, list[tuple[OpRecord, str]]] = {}       # op index -> (distinct record, its cell)
    for name, t in traces.items():
        for rec in t.records:
            i = rec.index
            key = keys[i] if i < n else None
            if key is None:
                continue
            seen = reached.get(i)
            if seen is None:
                seen = reached[i] = []
            c = None
            for other, known in seen:
                if other.api == rec.api and other.vmm == rec.vmm and other.events == rec.events:
                    c = known
                    break
            if c is None:
                c = cells(ops[i], rec, key)
                if c is None:
                    continue
                seen.append((rec, c))
            out.append((name, c))
    return out


def _reached(op: Op, api: dict[str, Any], vmm: dict[str, Any]) -> tuple[object, object, str]:
    """What the op's table row keys on: (result, writable or "-", the kernel path taken)."""
    k = op.kind
    if k == "lookup":
        return api.get("result"), api.get("writable"), api.get("call", "")
    if k == "gfn_to_page":
        return value_class(api.get("result")), "-", api.get("call", "")
    if k == "vcpu_map":
        return api.get("ret"), "-", api.get("method") or ""
    if k == "vcpu_unmap":
        return ("released" if api.get("released") else "nothing"), "-", ""
    if k == "x86_fault":
        calls = "+".join(api.get("calls") or [])
        return f"{api.get('ret')}/{api.get('result')}", api.get("map_writable"), calls
    if k == "access":
        faults = "faults:" + value_class(api.get("faults") or [])
        return vmm.get("outcome"), op.args.get("write", False), faults
    return ("dirty" if vmm.get("dirty") else "clean"), "-", ""


def outcome(d: Divergence) -> str:
    if d.known:
        return "known:" + ",".join(e.split(" (")[0] for e in d.entries)
    return "new:" + " ".join(d.signature.split(" ")[2:])
