"""Compact scenario builders for the kvmsim tests.

Every scenario goes through the real loader (``loads_scenario`` on YAML text), so the tests also
exercise the scenario language.  The default world is one 4-page VMA ``ram`` behind memslot 0 at
gfn ``GFN``; ``host(state)`` names the host conditions the spec's outcome tables use.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kvmsim import get_backend, loads_scenario
from kvmsim.scenario import Scenario
from kvmsim.trace import OpRecord, Trace

GFN = 0x100
NPAGES = 4
GENERATIONS = ("sim:g1", "sim:g2", "sim:g2s", "sim:g2f", "sim:g3")

# Names the model gives pages (docs/traces.md "Pages are named").
ORIG = "ram+0#0"       # the page a present/resident normal VMA page starts with
COW = "ram+0#1"        # the next page allocated at that place (a COW copy, or the page after I/O)
ZERO = "zero"
FRAME = "ram.frame0"   # auto-created frame of a remapped VMA


def vma(name: str = "ram", pages: int = NPAGES, **kw: Any) -> dict[str, Any]:
    return {"name": name, "pages": pages, **kw}


def slot(id: int = 0, gfn: int = GFN, pages: int = NPAGES, vma: str = "ram", **kw: Any) -> dict[str, Any]:
    return {"id": id, "gfn": gfn, "pages": pages, "vma": vma, **kw}


def scenario_dict(ops: list[Any], vmas: list[dict] | None = None, memslots: list[dict] | None = None,
                  pages: list[dict] | None = None, **world: Any) -> dict[str, Any]:
    w: dict[str, Any] = dict(world)
    if pages:
        w["pages"] = pages
    w["vmas"] = vmas if vmas is not None else [vma()]
    w["memslots"] = memslots if memslots is not None else [slot()]
    return {"version": 1, "world": w, "ops": ops}


def build(ops: list[Any], **kw: Any) -> Scenario:
    """A scenario from ops (``{"lookup": {...}}`` mappings) and world keywords, via YAML text."""
    return loads_scenario(yaml.safe_dump(scenario_dict(ops, **kw), sort_keys=False))


def run(backend: str, sc: Scenario) -> Trace:
    return get_backend(backend).run(sc)


# --- host states used by the outcome tables ------------------------------------------------------

# named host state -> (page 0's VMA keywords, world keywords, pre ops); see host()
_STATES: dict[str, tuple[dict[str, Any], dict[str, Any], list[Any]]] = {
    "resident_shared": ({"shared": True, "page_states": {0: "resident"}}, {}, []),  # page cache, MAP_SHARED rw
    "needs_io_signal": ({"page_states": {0: "needs_io"}}, {"signal": "pending"}, []),
    "needs_io_fatal": ({"page_states": {0: "needs_io"}}, {"signal": "fatal"}, []),
    "unpopulated_fatal": ({"page_states": {0: "unpopulated"}}, {"signal": "fatal"}, []),
    # killable mmap-lock acquisition interrupted
    "eagain": ({"page_states": {0: "needs_io"}}, {"signal": "fatal", "mmap_lock_contended": True}, []),
    "no_vma": ({"page_states": {0: "present_rw"}}, {}, [{"munmap": {"vma": "ram"}}]),
    "ro_vma": ({"prot": "r", "page_states": {0: "present_ro"}}, {}, []),          # VMA without VM_WRITE
    "ro_vma_needs_io": ({"prot": "r", "page_states": {0: "needs_io"}}, {}, []),
    "none_vma": ({"prot": "none", "page_states": {0: "needs_io"}}, {}, []),        # PROT_NONE: no VM_READ
    # D19: PG_reserved page in a normal VMA
    "reserved_mixedmap": ({"remap": "mixedmap", "page_states": {0: {"state": "present_rw", "page": "rsv"}}},
                          {"pages": [{"name": "rsv", "kind": "reserved"}]}, []),
}
_NORMAL = {"present_rw", "present_ro", "unpopulated", "resident", "needs_io", "hwpoison"}


def _remap_vma(state: str) -> dict[str, Any]:
    """``remap:<frame kind>[:ro][:absent-<handler>]``: a VM_PFNMAP VMA of that frame kind."""
    parts = state.split(":")[1:]
    kind, rest = parts[0], parts[1:]
    pte: dict[str, Any] = {}
    if "ro" in rest:
        pte["writable"] = False
    for r in rest:
        if r.startswith("absent-"):
            pte["present"] = False
            pte["handler"] = r[len("absent-"):]
    v = vma(remap="pfnmap", frames=kind)
    if pte:
        v["ptes"] = {0: pte}
    return v


def host(state: str, ro_slot: bool = False) -> dict[str, Any]:
    """World keywords (vmas, memslots, pages, world flags) plus ``pre`` ops for a named host state
    at gfn ``GFN`` (page 0 of ``ram``)."""
    s = {"readonly": True} if ro_slot else {}
    out: dict[str, Any] = {"memslots": [slot(**s)], "pre": []}
    if state in _NORMAL:
        out["vmas"] = [vma(page_states={0: state})]
    elif state in _STATES:
        vma_kw, world, pre = copy.deepcopy(_STATES[state])
        out.update(world)
        out["vmas"] = [vma(**vma_kw)]
        out["pre"] = pre
    elif state.startswith("remap:"):
        out["vmas"] = [_remap_vma(state)]
    else:
        raise ValueError(state)
    return out


def host_scenario(state: str, ops: list[Any], ro_slot: bool = False, pre: list[Any] | None = None,
                  **world: Any) -> Scenario:
    h = host(state, ro_slot)
    pre = h.pop("pre") + list(pre or [])
    h.update(world)
    return build(pre + ops, **h)


def last(trace: Trace) -> OpRecord:
    return trace.records[-1]


def lookup(backend: str, state: str, ro_slot: bool = False, world: dict | None = None,
           pre: list[Any] | None = None, **args: Any) -> dict:
    """The ``api`` record of one lookup of ``GFN`` in a host state."""
    args.setdefault("gfn", GFN)
    t = run(backend, host_scenario(state, [{"lookup": args}], ro_slot, pre, **(world or {})))
    rec = last(t)
    assert not any(e.startswith("BUG:refcount_underflow") for e in rec.events), rec.events
    return rec.api
