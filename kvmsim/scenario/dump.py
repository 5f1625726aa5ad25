"""Writing a scenario back as YAML that ``loads_scenario`` reads to an equal scenario: defaults left
out, addresses and frame numbers in hex.
"""

from __future__ import annotations

from typing import Any

import yaml

from .schema import OP_SCHEMAS, SCENARIO_VERSION, Op, Scenario, SlotSpec, VmaSpec, WorldSpec
from .vocabulary import NO_STRUCT_PAGE, UNPOPULATED


def scenario_to_dict(sc: Scenario) -> dict[str, Any]:
    """A plain structure that ``loads_scenario`` reads back to an equal scenario."""
    out: dict[str, Any] = {"version": SCENARIO_VERSION}
    if sc.name:
        out["name"] = sc.name
    if sc.description:
        out["description"] = sc.description
    if sc.tags:
        out["tags"] = sc.tags
    out["world"] = _world_dict(sc.world)
    out["ops"] = [{op.kind: _op_dict(op)} for op in sc.ops]
    return out


def _world_dict(w: WorldSpec) -> dict[str, Any]:
    world: dict[str, Any] = {}
    d = WorldSpec()
    for key in ("allow_unsafe_mappings", "signal", "mmap_lock_contended"):
        if getattr(w, key) != getattr(d, key):
            world[key] = getattr(w, key)
    vcpu = {k: getattr(w, k) for k in ("async_pf", "guest_mode", "smm", "apicv") if getattr(w, k) != getattr(d, k)}
    if vcpu:
        world["vcpu"] = vcpu
    if w.seq or w.seq_bits != 64:
        world["notifier"] = {"seq": w.seq, "seq_bits": w.seq_bits}
    if w.pages:
        world["pages"] = [_compact({"name": p.name, "kind": p.kind, "pfn": None if p.pfn is None else HexInt(p.pfn),
                                    "memremap_ok": p.memremap_ok}, {"pfn": None, "memremap_ok": True})
                          for p in w.pages]
    if w.vmas:
        world["vmas"] = [_vma_dict(v) for v in w.vmas]
    if w.memslots:
        world["memslots"] = [_slot_dict(s) for s in w.memslots]
    return world


def _compact(d: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in defaults or defaults[k] != v}


def _vma_dict(v: VmaSpec) -> dict[str, Any]:
    d = _compact({"name": v.name, "start": v.start, "pages": v.pages, "prot": v.prot, "shared": v.shared,
                  "remap": v.remap, "host_level": v.host_level, "state": v.state, "frames": v.frames},
                 {"start": None, "prot": "rw", "shared": False, "remap": "none", "host_level": "4k",
                  "state": UNPOPULATED, "frames": NO_STRUCT_PAGE})
    if v.page_states:
        d["page_states"] = {i: (st if pg is None else {"state": st, "page": pg})
                            for i, (st, pg) in sorted(v.page_states.items())}
    if v.ptes:
        d["ptes"] = {i: _compact({"page": p.page, "present": p.present, "writable": p.writable, "handler": p.handler},
                                 {"page": None, "present": True, "writable": True, "handler": "populates"})
                     for i, p in sorted(v.ptes.items())}
    return d


def _slot_dict(s: SlotSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"internal": s.internal} if s.internal else {"id": s.id}
    d.update(_compact({"gfn": HexInt(s.gfn), "pages": s.pages, "vma": s.vma, "offset": s.offset, "readonly": s.readonly,
                       "log_dirty": s.log_dirty, "as_id": s.as_id},
                      {"offset": 0, "readonly": False, "log_dirty": False, "as_id": 0}))
    return d


def _op_dict(op: Op) -> dict[str, Any]:
    out = {}
    for f in OP_SCHEMAS[op.kind]:
        v = op.args[f.name]
        if f.required or v != f.default:
            out[f.name] = HexInt(v) if f.name in HEX_FIELDS and isinstance(v, int) and not isinstance(v, bool) else v
    return out                       # {} for an op without arguments, as the seeds write it


# Addresses and frame numbers are written in hex, as KVM developers read them.
HEX_FIELDS = frozenset({"gfn", "gpa", "hva", "pfn", "start", "data"})


class HexInt(int):
    """An int that ``dump_scenario`` writes in hex whatever its size."""


class _Dumper(yaml.SafeDumper):
    pass


def _hex_int(dumper: yaml.SafeDumper, value: int) -> yaml.ScalarNode:
    text = hex(value) if value >= 0x1000 else str(value)
    return dumper.represent_scalar("tag:yaml.org,2002:int", text)


_Dumper.add_representer(int, _hex_int)
_Dumper.add_representer(HexInt, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", hex(v)))
_Dumper.add_representer(type(None), lambda d, _: d.represent_scalar("tag:yaml.org,2002:null", ""))


def dump_scenario(sc: Scenario) -> str:
    return yaml.dump(scenario_to_dict(sc), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=110)
