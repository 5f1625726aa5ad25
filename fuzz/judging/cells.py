"""The decision-table cell an op record reached and the outcome an oracle gave: the semantic
features of an input (fuzz.corpus.features documents what a cell is made of).  Here, below the
targets, because the diff target feeds them to libFuzzer as coverage (semantic feedback).
"""

from __future__ import annotations

from kvmsim.scenario import Op
from kvmsim.trace import OpRecord
from oracles.diff import Divergence
from oracles.signature import event_class, op_class, value_class

TABLE_OPS = ("lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault", "access", "get_dirty_log")


def _refs(api: dict) -> str:
    parts = [value_class(api.get("held", {}) or {})]
    for key, label in (("leaked", "leak"), ("pinned", "pin"), ("pins_leaked", "pinleak")):
        v = api.get(key)
        if v:
            parts.append(label + value_class(v))
    return "/".join(parts)


def cell(op: Op, rec: OpRecord) -> str | None:
    """The decision-table cell one op record reached (None for ops that are not table rows)."""
    if op.kind not in TABLE_OPS:
        return None
    api = rec.api if isinstance(rec.api, dict) and "not_observable" not in rec.api else {}
    vmm = rec.vmm or {}
    k = op.kind
    wr: object = "-"
    path = ""
    if k == "lookup":
        result, wr, path = api.get("result"), api.get("writable"), api.get("call", "")
    elif k == "gfn_to_page":
        result, path = value_class(api.get("result")), api.get("call", "")
    elif k == "vcpu_map":
        result, path = api.get("ret"), api.get("method") or ""
    elif k == "vcpu_unmap":
        result = "released" if api.get("released") else "nothing"
    elif k == "x86_fault":
        result = f"{api.get('ret')}/{api.get('result')}"
        wr, path = api.get("map_writable"), "+".join(api.get("calls") or [])
    elif k == "access":
        result, wr = vmm.get("outcome"), op.args.get("write", False)
        path = "faults:" + value_class(api.get("faults") or [])
    else:
        result = "dirty" if vmm.get("dirty") else "clean"
    parts = [op_class(k, op.args), str(value_class(result) if not isinstance(result, str) else result),
             f"w={value_class(wr) if wr != '-' else '-'}"]
    if k not in ("access", "get_dirty_log", "vcpu_unmap") or api:
        parts.append("ref=" + _refs(api))
    if path:
        parts.append(path)
    ev = sorted({event_class(e) for e in rec.events})
    if ev:
        parts.append(",".join(ev))
    return " | ".join(parts)


def outcome(d: Divergence) -> str:
    if d.known:
        return "known:" + ",".join(e.split(" (")[0] for e in d.entries)
    return "new:" + " ".join(d.signature.split(" ")[2:])
