"""Reading a scenario: the bounded, line-annotated YAML document (``kvmsim.yamlsrc``) checked field
by field against the schema, every problem one ``ScenarioError`` naming FILE:LINE, then the whole
scenario validated (``validate``).
"""

from __future__ import annotations

from typing import Any

from ..constants import INTERNAL_SLOT_IDS, KVM_USER_MEM_SLOTS
from ..yamlsrc import MAX_YAML_BYTES, Node, ScenarioError, parse, plain, read_text, show
from .schema import (
    HOST_LEVELS,
    MAP_STATES,
    MAX_GFN,
    MAX_SLOT_PAGES,
    MAX_VMA_PAGES,
    OP_SCHEMAS,
    PROTS,
    REMAPS,
    SCENARIO_VERSION,
    SIGNALS,
    F,
    Op,
    PageSpec,
    PteSpec,
    Scenario,
    SlotSpec,
    VmaSpec,
    WorldSpec,
)
from .validate import validate
from .vocabulary import DECLARABLE_KINDS, HANDLERS, NO_STRUCT_PAGE, UNPOPULATED


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file

    def err(self, problem: str, line: int) -> ScenarioError:
        return ScenarioError(problem, line, self.file)

    def mapping(self, n: Node, what: str, allowed: tuple[str, ...]) -> dict[str, Node]:
        if not isinstance(n.value, dict):
            raise self.err(f"{what} must be a mapping", n.line)
        for k, v in n.value.items():
            if k not in allowed:
                raise self.err(f"unknown field {show(k)} in {what} (expected one of: {', '.join(allowed)})", v.line)
        return n.value

    def int_(self, n: Node, what: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        v = n.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(f"{what} must be an integer, got {show(v)}", n.line)
        if not lo <= v <= hi:
            raise self.err(f"{what} = {v:#x} is out of range [{lo:#x}, {hi:#x}]", n.line)
        return v

    def bool_(self, n: Node, what: str) -> bool:
        if not isinstance(n.value, bool):
            raise self.err(f"{what} must be true or false, got {show(n.value)}", n.line)
        return n.value

    def str_(self, n: Node, what: str) -> str:
        if not isinstance(n.value, str) or not n.value:
            raise self.err(f"{what} must be a non-empty string, got {show(n.value)}", n.line)
        return n.value

    def enum(self, n: Node, what: str, choices: tuple) -> str:
        v = n.value
        if v is False and "none" in choices:     # YAML 1.1 reads a bare `none`-like `no` as false
            v = "none"
        if v not in choices:
            raise self.err(f"{what} must be one of {', '.join(map(str, choices))}, got {show(v)}", n.line)
        return v

    def field(self, m: dict[str, Node], key: str, kind: str, default: Any, what: str, **kw: Any) -> Any:
        n = m.get(key)
        if n is None:
            return default
        label = f"{what}.{key}"
        if kind == "int":
            return self.int_(n, label, **kw)
        if kind == "bool":
            return self.bool_(n, label)
        if kind == "str":
            return self.str_(n, label)
        if kind == "enum":
            return self.enum(n, label, kw["choices"])
        raise AssertionError(kind)


def load_scenario(path: str) -> Scenario:
    """Read and validate a scenario file; raises ScenarioError naming FILE:LINE."""
    return loads_scenario(read_text(path, MAX_YAML_BYTES, "scenario"), path)


def loads_scenario(text: str, file: str = "<scenario>") -> Scenario:
    return scenario_from_node(parse(text, file), file)


def scenario_from_node(root: Node, file: str = "<scenario>") -> Scenario:
    """A scenario from an already parsed (bounded, line-annotated) YAML document."""
    r = _Reader(file)
    top = r.mapping(root, "scenario", ("version", "name", "description", "tags", "world", "ops"))
    if "version" in top:
        ver = r.int_(top["version"], "version")
        if ver != SCENARIO_VERSION:
            raise r.err(f"unsupported scenario version {ver} (this pfndiff reads version {SCENARIO_VERSION})",
                        top["version"].line)
    world = _read_world(r, top.get("world"), root.line)
    ops_node = top.get("ops")
    if ops_node is None:
        raise r.err("missing 'ops' list", root.line)
    if not isinstance(ops_node.value, list):
        raise r.err("'ops' must be a list", ops_node.line)
    ops = [_read_op(r, n) for n in ops_node.value]
    tags: dict[str, Any] = {}
    if "tags" in top:
        tags = plain(top["tags"])
        if not isinstance(tags, dict):
            raise r.err("'tags' must be a mapping", top["tags"].line)
    sc = Scenario(world, ops, name=str(plain(top["name"])) if "name" in top else "",
                  description=str(plain(top["description"])) if "description" in top else "",
                  tags=tags, file=file)
    validate(sc)
    return sc


def _read_world(r: _Reader, n: Node | None, line: int) -> WorldSpec:
    if n is None:
        raise r.err("missing 'world'", line)
    m = r.mapping(n, "world", ("allow_unsafe_mappings", "vcpu", "signal", "mmap_lock_contended", "notifier",
                               "pages", "vmas", "memslots"))
    w = WorldSpec()
    w.allow_unsafe_mappings = r.field(m, "allow_unsafe_mappings", "bool", False, "world")
    w.signal = r.field(m, "signal", "enum", "none", "world", choices=SIGNALS)
    w.mmap_lock_contended = r.field(m, "mmap_lock_contended", "bool", False, "world")
    if "vcpu" in m:
        v = r.mapping(m["vcpu"], "world.vcpu", ("async_pf", "guest_mode", "smm", "apicv"))
        w.async_pf = r.field(v, "async_pf", "bool", False, "vcpu")
        w.guest_mode = r.field(v, "guest_mode", "bool", False, "vcpu")
        w.smm = r.field(v, "smm", "bool", False, "vcpu")
        w.apicv = r.field(v, "apicv", "bool", True, "vcpu")
    if "notifier" in m:
        nm = r.mapping(m["notifier"], "world.notifier", ("seq", "seq_bits"))
        w.seq_bits = r.field(nm, "seq_bits", "int", 64, "notifier", lo=32, hi=64)
        if w.seq_bits not in (32, 64):
            raise r.err("notifier.seq_bits must be 32 or 64", nm["seq_bits"].line)
        w.seq = r.field(nm, "seq", "int", 0, "notifier", hi=(1 << w.seq_bits) - 1)
    for pn in _list(r, m.get("pages"), "world.pages"):
        pm = r.mapping(pn, "page", ("name", "kind", "pfn", "memremap_ok"))
        if "name" not in pm or "kind" not in pm:
            raise r.err("a page needs 'name' and 'kind'", pn.line)
        kind = r.enum(pm["kind"], "page.kind", DECLARABLE_KINDS)
        w.pages.append(PageSpec(r.str_(pm["name"], "page.name"), kind,
                                r.field(pm, "pfn", "int", None, "page", lo=0x100, hi=(1 << 40) - 1),
                                r.field(pm, "memremap_ok", "bool", True, "page"), pn.line))
    for vn in _list(r, m.get("vmas"), "world.vmas"):
        w.vmas.append(_read_vma(r, vn))
    for sn in _list(r, m.get("memslots"), "world.memslots"):
        w.memslots.append(_read_slot(r, sn))
    return w


def _list(r: _Reader, n: Node | None, what: str) -> list[Node]:
    if n is None:
        return []
    if not isinstance(n.value, list):
        raise r.err(f"{what} must be a list", n.line)
    return n.value


def _read_vma(r: _Reader, n: Node) -> VmaSpec:
    m = r.mapping(n, "vma", ("name", "start", "pages", "prot", "shared", "remap", "host_level", "state",
                             "page_states", "frames", "ptes"))
    if "name" not in m or "pages" not in m:
        raise r.err("a vma needs 'name' and 'pages'", n.line)
    v = VmaSpec(r.str_(m["name"], "vma.name"), r.int_(m["pages"], "vma.pages", 1, MAX_VMA_PAGES), line=n.line)
    if "start" in m:
        v.start = r.int_(m["start"], "vma.start", 0x10000, (1 << 47) - 1)
        if v.start & 0xFFF:
            raise r.err("vma.start must be page aligned", m["start"].line)
    v.prot = r.field(m, "prot", "enum", "rw", "vma", choices=PROTS)
    v.shared = r.field(m, "shared", "bool", False, "vma")
    v.remap = r.field(m, "remap", "enum", "none", "vma", choices=REMAPS)
    v.host_level = r.field(m, "host_level", "enum", "4k", "vma", choices=HOST_LEVELS)
    v.state = r.field(m, "state", "enum", UNPOPULATED, "vma", choices=MAP_STATES)
    v.frames = r.field(m, "frames", "enum", NO_STRUCT_PAGE, "vma", choices=DECLARABLE_KINDS)
    if "page_states" in m:
        _read_page_states(r, m["page_states"], v)
    if "ptes" in m:
        _read_ptes(r, m["ptes"], v)
    return v


def _read_page_states(r: _Reader, ps: Node, v: VmaSpec) -> None:
    if not isinstance(ps.value, dict):
        raise r.err("vma.page_states must be a mapping of page index to state", ps.line)
    for k, sn in ps.value.items():
        idx = _index(r, k, v, sn.line)
        v.entry_lines[idx] = sn.line
        if isinstance(sn.value, dict):
            sm = r.mapping(sn, "page state", ("state", "page"))
            st = r.enum(sm["state"], "state", MAP_STATES) if "state" in sm else v.state
            v.page_states[idx] = (st, r.field(sm, "page", "str", None, "page state"))
        else:
            v.page_states[idx] = (r.enum(sn, "page state", MAP_STATES), None)


def _read_ptes(r: _Reader, pt: Node, v: VmaSpec) -> None:
    if not isinstance(pt.value, dict):
        raise r.err("vma.ptes must be a mapping of page index to PTE", pt.line)
    for k, pn in pt.value.items():
        idx = _index(r, k, v, pn.line)
        v.entry_lines[idx] = pn.line
        pm = r.mapping(pn, "pte", ("page", "present", "writable", "handler"))
        v.ptes[idx] = PteSpec(r.field(pm, "page", "str", None, "pte"),
                              r.field(pm, "present", "bool", True, "pte"),
                              r.field(pm, "writable", "bool", True, "pte"),
                              r.field(pm, "handler", "enum", "populates", "pte", choices=HANDLERS))


def _index(r: _Reader, k: Any, v: VmaSpec, line: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < v.pages:
        raise r.err(f"page index {show(k)} is not within vma {v.name!r} (0..{v.pages - 1})", line)
    return k


def _read_slot(r: _Reader, n: Node) -> SlotSpec:
    m = r.mapping(n, "memslot", ("id", "gfn", "pages", "vma", "offset", "readonly", "log_dirty", "as_id",
                                 "internal"))
    for req in ("gfn", "pages", "vma"):
        if req not in m:
            raise r.err(f"a memslot needs {req!r}", n.line)
    internal = r.field(m, "internal", "enum", None, "memslot", choices=tuple(INTERNAL_SLOT_IDS))
    if internal is not None:
        sid = INTERNAL_SLOT_IDS[internal]
    elif "id" in m:
        sid = r.int_(m["id"], "memslot.id", 0, KVM_USER_MEM_SLOTS - 1)
    else:
        raise r.err("a memslot needs 'id' (or 'internal')", n.line)
    return SlotSpec(sid, r.int_(m["gfn"], "memslot.gfn", 0, MAX_GFN),
                    r.int_(m["pages"], "memslot.pages", 1, MAX_SLOT_PAGES),
                    r.str_(m["vma"], "memslot.vma"), r.field(m, "offset", "int", 0, "memslot", hi=MAX_VMA_PAGES),
                    r.field(m, "readonly", "bool", False, "memslot"), r.field(m, "log_dirty", "bool", False, "memslot"),
                    r.field(m, "as_id", "int", 0, "memslot", hi=1), internal, n.line)


def _read_op(r: _Reader, n: Node) -> Op:
    if not isinstance(n.value, dict) or len(n.value) != 1:
        raise r.err("each op must be a mapping with exactly one key, the op name", n.line)
    (kind, body), = n.value.items()
    if kind not in OP_SCHEMAS:
        raise r.err(f"unknown op {show(kind)}", n.line)
    schema = OP_SCHEMAS[kind]
    if body.value is None:
        body = Node({}, body.line)
    m = r.mapping(body, kind, tuple(f.name for f in schema))
    args: dict[str, Any] = {}
    for f in schema:
        fn = m.get(f.name)
        if fn is None and f.required:
            raise r.err(f"op {kind} needs {f.name!r}", n.line)
        args[f.name] = f.default if fn is None else _op_field(r, f, fn, f"{kind}.{f.name}")
    return Op(kind, args, n.line)


def _op_field(r: _Reader, f: F, n: Node, label: str) -> Any:
    """One op field's value, read as its schema type says (``opt*``: null allowed)."""
    if f.type.startswith("opt") and n.value is None:
        return None
    if f.type in ("int", "optint"):
        return r.int_(n, label)
    if f.type in ("bool", "optbool"):
        return r.bool_(n, label)
    if f.type == "str":
        return r.str_(n, label)
    return r.enum(n, label, f.choices)
