"""The decision-table cell an op record reached and the outcome an oracle gave: the semantic
features of an input (fuzz.corpus.features documents what a cell is made of).  Here, below the
targets, because the diff target feeds them to libFuzzer as coverage (semantic feedback).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from kvmsim.scenario import Op
from kvmsim.trace import OpRecord, Trace
from oracles.diff import Divergence, RecordDiff
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


def op_key(op: Op) -> str:
    """What a cell reads of the op: its class, and an access's direction."""
    opc = op_class(op.kind, op.args)
    return opc + " " + value_class(op.args.get("write", False)) if op.kind == "access" else opc


Differing = dict[tuple[str, str], dict[int, RecordDiff]]    # pair -> op index -> its records' difference


def trace_cells(ops: list[Op], traces: dict[str, Trace],
                differing: Differing | None = None) -> list[tuple[str, str]]:
    """(backend, cell) for each op record of each trace that reached a table row, trace by trace.
    A record one of its pairs found different from the other side's (``differing``: the pairs'
    differences, as ``Judge.compare`` gives them for these traces) has its cell kept with that
    difference, which the judge remembers across judgements; a record equal to one an earlier trace
    showed at the same op (common: generations agree on most ops) reaches the same cell; any other
    is worked out."""
    out: list[tuple[str, str]] = []
    keys = [op_key(op) if op.kind in _TABLE_OPS else None for op in ops]
    n = len(ops)
    sides = _sides(differing or {})
    reached: dict[int, list[tuple[OpRecord, str]]] = {}       # op index -> (distinct record, its cell)
    for name, t in traces.items():
        mine = sides.get(name, ())
        for rec in t.records:
            i = rec.index
            key = keys[i] if i < n else None
            if key is None:
                continue
            seen = reached.get(i)
            if seen is None:
                seen = reached[i] = []
            c = (_kept(ops[i], rec, key, mine) if mine else None) or _seen(rec, seen)
            if c is None:
                c = cell(ops[i], rec)
                if c is None:
                    continue
                seen.append((rec, c))
            out.append((name, c))
    return out


def _sides(differing: Differing) -> dict[str, list[tuple[dict[int, RecordDiff], int]]]:
    """Per backend, the differences of its pairs with the side it is on (0: left, 1: right)."""
    out: dict[str, list[tuple[dict[int, RecordDiff], int]]] = {}
    for (left, right), by_op in differing.items():
        if by_op:
            out.setdefault(left, []).append((by_op, 0))
            out.setdefault(right, []).append((by_op, 1))
    return out


def _kept(op: Op, rec: OpRecord, key: str, mine: list[tuple[dict[int, RecordDiff], int]]) -> str | None:
    """The cell of ``rec`` kept with a difference one of its pairs found at its op (worked out and
    kept there on the first ask), or None if no pair found one there."""
    for by_op, side in mine:
        rd = by_op.get(rec.index)
        if rd is not None:
            got = rd.derived.get((_CELL, key, side))
            if got is None:
                got = rd.derived[(_CELL, key, side)] = cell(op, rec)
            return got
    return None


_CELL = "cell"                  # the kind of what trace_cells keeps in a RecordDiff's ``derived``


def _seen(rec: OpRecord, seen: list[tuple[OpRecord, str]]) -> str | None:
    """The cell of an equal record an earlier trace showed at the same op, if any."""
    for other, known in seen:
        if other.api == rec.api and other.vmm == rec.vmm and other.events == rec.events:
            return known
    return None


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
        return _known_outcome(tuple(d.entries))
    return _new_outcome(d.signature)


@lru_cache(maxsize=4096)
def _known_outcome(entries: tuple[str, ...]) -> str:
    """``outcome`` of a known divergence: a function of its entries, and the same few recur."""
    return "known:" + ",".join(e.split(" (")[0] for e in entries)


@lru_cache(maxsize=4096)
def _new_outcome(signature: str) -> str:
    """``outcome`` of an unknown divergence: a function of its signature."""
    return "new:" + " ".join(signature.split(" ")[2:])
