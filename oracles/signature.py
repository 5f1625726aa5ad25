"""Stable divergence signatures, for deduplication (DESIGN "divergence").

A signature is ``oracle`` + backend pair + op class + first differing field + the *class* of
both values (of the one value, for a single-trace invariant).  Value classes keep what identifies
a behaviour in the words of the trace (``ERR_FAULT``, ``efault``, a WARN site, a page's name such
as ``rsv`` or ``ram+0#0``, "a reference was held": ``{+1}``) and drop what varies from input to
input without changing the behaviour (hvas, data values, counts, the pages a delta is about).
Signatures are the fine key; clusters are root causes (``fuzz.judging.rootcause``).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

_TOKEN = re.compile(r"^-?[A-Z][A-Z0-9_]*$")
_WORDS = {"pfn", "ok", "mmio", "efault", "sigbus", "killed", "lapic", "stall", "errno", "kmap", "memremap",
          "queued", "halt", "NULL", "n/a"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}(\+\d+(#\d+)?)?$")
_SKIPPED = re.compile(r"^(?:the )?execution ended at op \d+ \((\w+)\)$|^kernel (BUG) earlier")
_STRUCT_KEYS = {"writable", "level", "gpa", "len", "is_write", "data"}


def value_class(v: Any) -> str:
    """The part of an observed value that a signature keeps."""
    if isinstance(v, str):                # the common case first (a str is none of the types below)
        return _string_class(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return "0" if v == 0 else ("neg" if v < 0 else "int")
    if isinstance(v, dict):
        if v and all(k in _STRUCT_KEYS for k in v):
            return "{" + ",".join(f"{k}={value_class(x)}" for k, x in sorted(v.items())) + "}"
        deltas = sorted({f"{'+' if x > 0 else ''}{x}" if isinstance(x, int) else value_class(x) for x in v.values()})
        return "{" + ",".join(deltas) + "}"
    if isinstance(v, (list, tuple)):
        items: list[str] = []
        for x in v:
            c = value_class(x)
            if not items or items[-1] != c:
                items.append(c)
        return "[" + ",".join(items) + "]"
    return repr(v)


@lru_cache(maxsize=4096)
def _string_class(v: str) -> str:
    """A result word or token as it is, an event by its class, a page by the word ``page``.
    Remembered: a pure function of the string, and the same few hundred strings recur in every trace."""
    if v in _WORDS or _TOKEN.match(v):
        return v
    if v.startswith(("WARN:", "BUG:", "CORRUPT:")):
        return event_class(v)
    m = _SKIPPED.match(v)
    if m:                                 # "the execution ended at op 3 (killed)" -> after-killed
        return "after-" + (m.group(1) or m.group(2) or "end").split("(")[0].split(":")[0].strip()
    if v.startswith("<") and v.endswith(">"):
        return v[1:-1]                    # <uninitialised>: an out-parameter never written (D26)
    return v if _NAME.match(v) else "page"          # a page as the trace names it


def event_class(e: str) -> str:
    """``BUG:refcount_underflow:ram+0#0`` -> ``BUG:refcount_underflow``; sites are kept."""
    parts = e.split(":")
    if parts[0] == "BUG" and len(parts) > 2 and parts[1] == "refcount_underflow":
        return "BUG:refcount_underflow"
    return e


def events_delta(left: list[str], right: list[str]) -> tuple[str, str]:
    """Value classes of two event lists, keeping only the events not on both sides."""
    lc = sorted({event_class(e) for e in left})
    rc = sorted({event_class(e) for e in right})
    return "[" + ",".join(x for x in lc if x not in rc) + "]", "[" + ",".join(x for x in rc if x not in lc) + "]"


def op_class(kind: str, args: dict[str, Any]) -> str:
    """The op kind, with the one mode that selects a different entry point."""
    if kind == "lookup":
        mode = "atomic" if args.get("atomic") else "pin" if args.get("pin") else \
            "ref" if args.get("want_ref", True) else "noref"
        return f"lookup[{mode}]"
    if kind == "vcpu_map":
        return "vcpu_map[rw]" if args.get("writable", True) else "vcpu_map[ro]"
    return kind


def make_signature(oracle: str, left: str, right: str, opc: str, field: str, lval: Any, rval: Any) -> str:
    """``ORACLE LEFT~RIGHT OPCLASS FIELD LEFTVALUE>RIGHTVALUE``; a single-trace invariant
    (``right`` empty) has one value: ``ORACLE BACKEND OPCLASS FIELD VALUE``."""
    if not right:
        v = lval
        if field == "events" and isinstance(v, list):
            return f"{oracle} {left} {opc} {field} [{','.join(sorted({event_class(e) for e in v}))}]"
        return f"{oracle} {left} {opc} {field} {value_class(v)}"
    if field == "events":
        lc, rc = events_delta(lval if isinstance(lval, list) else [], rval if isinstance(rval, list) else [])
    else:
        lc, rc = value_class(lval), value_class(rval)
    return f"{oracle} {left}~{right} {opc} {field} {lc}>{rc}"


def signature_id(sig: str) -> str:
    """A short, file-name-safe id of a signature."""
    return hashlib.sha1(sig.encode()).hexdigest()[:12]
