"""The trace buffer's text -> one fault-path record per traced access (``kvmsim.fault_record``).

Attribution: the VMM writes ``pfndiff op <i>`` before op ``i`` (``marker.py``); the events up to
the next marker belong to the batch of accesses starting at ``i``, in which (while tracing) every
page occurs once, so a fault belongs to the access whose gfn it names.  Faults on other gfns (the
guest's own page tables) are not the scenario's and are dropped.  A field whose source was not
traced on this kernel is ``NOT_OBSERVABLE`` (never guessed); a traced source that did not fire
is a plain "no" (no SPTE, no async #PF...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kvmsim.constants import HPAGE_PAGES, pfn_class
from kvmsim.fault_record import NOT_OBSERVABLE
from kvmsim.scenario import Scenario

LINE = re.compile(r"^\s*.*?-(\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\].*?\s(\d+\.\d+): (\w+): (.*)$")
KV = re.compile(r"(\w+)=(\S+)")
PFERR_WRITE = 1 << 1
PT_WRITABLE = 1 << 1
# FOLL_* of ≥ 6.13 (include/linux/mm_types.h enum): the flags __kvm_faultin_pfn is called with.
FOLL_WRITE, FOLL_NOWAIT, FOLL_INTERRUPTIBLE = 1 << 0, 1 << 4, 1 << 11
LEVEL_PAGES = {1: 1, 2: HPAGE_PAGES, 3: HPAGE_PAGES * 512}


@dataclass(frozen=True)
class Event:
    pid: int
    name: str
    body: str


def events(text: str) -> list[Event]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = LINE.search(line)
        if m:
            out.append(Event(int(m[1]), m[3], m[4]))
    return out


def _hex(s: str) -> int:
    try:
        return int(s, 16)
    except ValueError:
        return -1


def _field(body: str, name: str) -> int | None:
    """``name 0x1f``, ``name 1f`` or ``name=0x1f`` (tracepoints print hex without 0x)."""
    m = re.search(rf"\b{name}[ =](?:0x)?([0-9a-fA-F]+)", body)
    return _hex(m[1]) if m else None


def new_fault(write: Any, seen: dict[str, Any]) -> dict[str, Any]:
    """A fault with every field either 'nothing happened' (its source is traced) or not observable."""
    def have(source: str, value: Any) -> Any:
        return value if seen.get(source) else NOT_OBSERVABLE
    entry = bool(seen.get("entry_point"))
    return {"write": write, "calls": [] if entry else NOT_OBSERVABLE,
            "result": None if entry else NOT_OBSERVABLE,
            "map_writable": None if entry and seen.get("map_writable") else NOT_OBSERVABLE,
            "async_pf": have("kvm/kvm_try_async_get_page", None),
            "spte": have("kvmmmu/kvm_mmu_set_spte", None),
            "mmio_spte": have("kvmmmu/mark_mmio_spte", False),
            "emulated": have("kvm/kvm_emulate_insn", False)}


def _call(e: Event, layout: str) -> dict[str, Any]:
    kv = dict(KV.findall(e.body))
    if layout == "merged":
        foll = _hex(kv.get("foll", "0"))
        return {"nowait": bool(foll & FOLL_NOWAIT), "interruptible": bool(foll & FOLL_INTERRUPTIBLE)}
    nowait = _hex(kv.get("async", "0")) != 0
    return {"nowait": nowait, "interruptible": kv.get("intr", "0") not in ("0", "0x0")}


def fault_records(text: str, sc: Scenario, info: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """op index -> the access's faults, for every access op a marker covered."""
    seen = {tp: True for tp in info.get("tracepoints", [])}
    seen["entry_point"] = info.get("entry_point") is not None
    seen["map_writable"] = bool(info.get("map_writable"))
    layout = info.get("layout") or ""
    # Without the #NPF tracepoint (PVM) faults have no boundaries: an access gets one summary entry,
    # built from the SPTE events on its gfn, and only when there is one (no event: no fault, or a
    # fault that installed nothing, which cannot be told apart).
    bounded = "kvm/kvm_page_fault" in seen
    if not bounded:
        seen = {k: v for k, v in seen.items() if k in ("kvmmmu/kvm_mmu_set_spte", "kvmmmu/mark_mmio_spte")}
        if not seen:
            return {}
    ops = sc.ops
    out: dict[int, list[dict[str, Any]]] = {}
    batch: dict[int, int] = {}              # gfn -> op index, for the batch being read
    cur: dict[str, Any] | None = None
    cur_gfn = -1
    vmm = -1                                # the VMM's pid (its markers'): other processes' events are not ours
    for e in events(text):
        if e.name == "tracing_mark_write":
            m = re.search(r"pfndiff op (\d+)", e.body)
            if not m:
                continue
            i, vmm = int(m[1]), e.pid
            batch = {}
            cur = None
            j = i
            while j < len(ops) and ops[j].kind == "access":
                g = ops[j].args["gpa"] >> 12
                if g in batch:
                    break
                batch[g] = j
                if bounded:
                    out.setdefault(j, [])
                j += 1
            continue
        if e.pid != vmm:
            continue
        if not bounded and "kvmmmu/" + e.name in seen:
            g = _field(e.body, "gfn")
            if g in batch and (cur is None or cur_gfn != g):
                cur_gfn, cur = g, new_fault(NOT_OBSERVABLE, seen)      # type: ignore[arg-type]
                cur["count"] = NOT_OBSERVABLE
                out[batch[g]] = [cur]
        if e.name == "kvm_page_fault":
            addr, code = _field(e.body, "address"), _field(e.body, "error_code")
            if addr is None or (addr >> 12) not in batch:
                cur = None
                continue
            cur_gfn = addr >> 12
            cur = new_fault(bool((code or 0) & PFERR_WRITE), seen)
            out.setdefault(batch[cur_gfn], []).append(cur)
            continue
        if cur is None:
            continue
        if e.name == "pfn_in":
            kv = dict(KV.findall(e.body))
            if "gfn" in kv and _hex(kv["gfn"]) == cur_gfn and cur["calls"] != NOT_OBSERVABLE:
                cur["calls"].append(_call(e, layout))
        elif e.name == "pfn_out":
            if cur["calls"] == NOT_OBSERVABLE or not cur["calls"]:
                continue
            kv = dict(KV.findall(e.body))
            ret = _hex(kv.get("ret", "0"))
            cur["result"] = pfn_class(ret)
            if seen["map_writable"]:
                cur["map_writable"] = kv.get("wr", "0") not in ("0", "0x0") if cur["result"] == "pfn" else None
        elif e.name == "kvm_mmu_set_spte" and cur["spte"] != NOT_OBSERVABLE:
            gfn, spte, level = _field(e.body, "gfn"), _field(e.body, "spte"), _field(e.body, "level")
            pages = LEVEL_PAGES.get(level or 1, 1)
            if gfn is not None and spte is not None and gfn <= cur_gfn < gfn + pages:
                cur["spte"] = {"writable": bool(spte & PT_WRITABLE), "level": pages}
        elif e.name == "mark_mmio_spte" and cur["mmio_spte"] != NOT_OBSERVABLE:
            if _field(e.body, "gfn") == cur_gfn:
                cur["mmio_spte"] = True
        elif e.name == "kvm_emulate_insn" and cur["emulated"] != NOT_OBSERVABLE:
            cur["emulated"] = True
        elif e.name == "kvm_try_async_get_page" and cur["async_pf"] != NOT_OBSERVABLE:
            cur["async_pf"] = "queued"
        elif e.name == "kvm_async_pf_repeated_fault" and cur["async_pf"] != NOT_OBSERVABLE:
            cur["async_pf"] = "halt"
        elif e.name == "fast_page_fault":
            cur["fast"] = True
    return out
