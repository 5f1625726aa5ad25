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
from dataclasses import dataclass, field
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
        return {"nowait": bool(foll & FOLL_NOWAIT), "interruptible": bool(foll & FOLL_INTERRUPTIBLE), "result": None}
    nowait = _hex(kv.get("async", "0")) != 0
    return {"nowait": nowait, "interruptible": kv.get("intr", "0") not in ("0", "0x0"), "result": None}


@dataclass
class _Reader:
    """The state of one pass over a scenario's events (``fault_records``)."""
    sc: Scenario
    seen: dict[str, Any]
    layout: str
    bounded: bool
    out: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    batch: dict[int, int] = field(default_factory=dict)      # gfn -> op index, for the batch being read
    cur: dict[str, Any] | None = None                        # the fault being read
    cur_gfn: int = -1
    vmm: int = -1                   # the VMM's pid (its markers'): other processes' events are not ours

    def marker(self, e: Event) -> None:
        m = re.search(r"pfndiff op (\d+)", e.body)
        if not m:
            return
        i, self.vmm, self.batch, self.cur = int(m[1]), e.pid, {}, None
        ops = self.sc.ops
        while i < len(ops) and ops[i].kind == "access" and ops[i].args["gpa"] >> 12 not in self.batch:
            self.batch[ops[i].args["gpa"] >> 12] = i
            if self.bounded:
                self.out.setdefault(i, [])
            i += 1

    def start(self, gfn: int | None, write: Any) -> None:
        """A new fault on ``gfn`` (None: not one of the batch's accesses; its events are dropped)."""
        if gfn is None or gfn not in self.batch:
            self.cur = None
            return
        self.cur_gfn, self.cur = gfn, new_fault(write, self.seen)
        if self.bounded:
            self.out[self.batch[gfn]].append(self.cur)
        else:
            self.cur["count"] = NOT_OBSERVABLE
            self.out[self.batch[gfn]] = [self.cur]

    def detail(self, e: Event) -> None:
        """An event inside the current fault."""
        cur = self.cur
        assert cur is not None
        if e.name == "pfn_in" and cur["calls"] != NOT_OBSERVABLE:
            kv = dict(KV.findall(e.body))
            if "gfn" in kv and _hex(kv["gfn"]) == self.cur_gfn:
                cur["calls"].append(_call(e, self.layout))
        elif e.name == "pfn_out" and cur["calls"] != NOT_OBSERVABLE and cur["calls"]:
            kv = dict(KV.findall(e.body))
            cur["result"] = cur["calls"][-1]["result"] = pfn_class(_hex(kv.get("ret", "0")))
            if self.seen.get("map_writable"):
                cur["map_writable"] = kv.get("wr", "0") not in ("0", "0x0") if cur["result"] == "pfn" else None
        elif e.name == "kvm_mmu_set_spte" and cur["spte"] != NOT_OBSERVABLE:
            gfn, spte, level = _field(e.body, "gfn"), _field(e.body, "spte"), _field(e.body, "level")
            pages = LEVEL_PAGES.get(level or 1, 1)
            if gfn is not None and spte is not None and gfn <= self.cur_gfn < gfn + pages:
                cur["spte"] = {"writable": bool(spte & PT_WRITABLE), "level": pages}
        elif e.name == "mark_mmio_spte" and cur["mmio_spte"] != NOT_OBSERVABLE:
            cur["mmio_spte"] = cur["mmio_spte"] or _field(e.body, "gfn") == self.cur_gfn
        elif e.name in EVENT_VALUES and cur[EVENT_VALUES[e.name][0]] != NOT_OBSERVABLE:
            key, value = EVENT_VALUES[e.name]
            cur[key] = value


# Events that set one field of the current fault to one value.
EVENT_VALUES = {"kvm_emulate_insn": ("emulated", True), "kvm_try_async_get_page": ("async_pf", "queued"),
                "kvm_async_pf_repeated_fault": ("async_pf", "halt")}
SPTE_EVENTS = ("kvmmmu/kvm_mmu_set_spte", "kvmmmu/mark_mmio_spte")


def fault_records(text: str, sc: Scenario, info: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """op index -> the access's faults, for every access op a marker covered.

    Without the #NPF tracepoint (PVM) faults have no boundaries: an access gets one summary entry,
    built from the SPTE events on its gfn, and only when there is one (no event: no fault, or a
    fault that installed nothing, which cannot be told apart)."""
    seen = {tp: True for tp in info.get("tracepoints", [])}
    seen["entry_point"] = info.get("entry_point") is not None
    seen["map_writable"] = bool(info.get("map_writable"))
    bounded = "kvm/kvm_page_fault" in seen
    if not bounded:
        seen = {k: v for k, v in seen.items() if k in SPTE_EVENTS}
        if not seen:
            return {}
    r = _Reader(sc, seen, info.get("layout") or "", bounded)
    for e in events(text):
        if e.name == "tracing_mark_write":
            r.marker(e)
        elif e.pid != r.vmm:
            continue
        elif e.name == "kvm_page_fault":
            addr, code = _field(e.body, "address"), _field(e.body, "error_code")
            r.start(None if addr is None else addr >> 12, bool((code or 0) & PFERR_WRITE))
        else:
            if not bounded and "kvmmmu/" + e.name in seen:
                g = _field(e.body, "gfn")
                if g is not None and g in r.batch and (r.cur is None or r.cur_gfn != g):
                    r.start(g, NOT_OBSERVABLE)
            if r.cur is not None:
                r.detail(e)
    return r.out
