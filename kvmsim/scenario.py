"""The scenario language: a world (memslots, host mappings, page states, task, notifier and module
state) plus an ordered list of ops.  See docs/scenarios.md for the format, one example per op.

Ops are described by schemas (``OP_SCHEMAS``) rather than one class each, so that validation,
YAML dumping and the byte codec all walk the same field lists.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import yaml

from .constants import INTERNAL_SLOT_IDS, KVM_USER_MEM_SLOTS, PAGE_SHIFT
from .mm import HANDLERS, PAGE_STATES, UNPOPULATED
from .pfndb import NO_STRUCT_PAGE, PAGE_KINDS, REFCOUNT0, ZERO
from .yamlsrc import MAX_YAML_BYTES, Node, ScenarioError, parse, plain, read_text, show

SCENARIO_VERSION = 1
VMA_BASE = 0x7F00_0000_0000
VMA_STRIDE = 0x1_0000_0000
MAX_VMA_PAGES = 4096
MAX_SLOT_PAGES = 1 << 20
MAX_GFN = (1 << 40) - 1
PROTS = ("none", "r", "rw")
REMAPS = ("none", "pfnmap", "io", "mixedmap")
SIGNALS = ("none", "pending", "fatal")
HOST_LEVELS = ("4k", "2m")
MAP_STATES = PAGE_STATES


# --- world -------------------------------------------------------------------------------------

@dataclass
class PageSpec:
    name: str
    kind: str
    pfn: int | None = None
    memremap_ok: bool = True
    line: int = field(default=0, compare=False)


@dataclass
class PteSpec:
    page: str | None
    present: bool = True
    writable: bool = True
    handler: str = "populates"


@dataclass
class VmaSpec:
    name: str
    pages: int
    start: int | None = None
    prot: str = "rw"
    shared: bool = False
    remap: str = "none"
    host_level: str = "4k"
    state: str = UNPOPULATED
    page_states: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    frames: str = NO_STRUCT_PAGE           # remapped VMAs: kind of the auto-created frame per page
    ptes: dict[int, PteSpec] = field(default_factory=dict)
    line: int = field(default=0, compare=False)
    entry_lines: dict[int, int] = field(default_factory=dict, compare=False)  # page index -> line


@dataclass
class SlotSpec:
    id: int
    gfn: int
    pages: int
    vma: str
    offset: int = 0
    readonly: bool = False
    log_dirty: bool = False
    as_id: int = 0
    internal: str | None = None             # tss | apic_access | identity_map
    line: int = field(default=0, compare=False)


@dataclass
class WorldSpec:
    allow_unsafe_mappings: bool = False
    async_pf: bool = False
    guest_mode: bool = False
    smm: bool = False
    apicv: bool = True
    signal: str = "none"
    mmap_lock_contended: bool = False
    seq: int = 0
    seq_bits: int = 64
    pages: list[PageSpec] = field(default_factory=list)
    vmas: list[VmaSpec] = field(default_factory=list)
    memslots: list[SlotSpec] = field(default_factory=list)


# --- ops ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class F:
    """One op field: name, type ('int' | 'bool' | 'str' | 'enum' | 'optint'), default, choices."""
    name: str
    type: str
    default: Any = None
    choices: tuple = ()
    required: bool = False


def _r(name: str, type_: str, choices: tuple = ()) -> F:
    return F(name, type_, None, choices, True)


OP_SCHEMAS: dict[str, tuple[F, ...]] = {
    # API level ---------------------------------------------------------------------------
    "lookup": (_r("gfn", "int"), F("write", "bool", False), F("nowait", "bool", False),
               F("interruptible", "bool", False), F("atomic", "bool", False), F("want_ref", "bool", True),
               F("guarded", "bool", False), F("pin", "bool", False), F("try_writable", "bool", True),
               F("vcpu", "bool", False), F("mmu_seq", "optint", None)),
    "gfn_to_page": (_r("gfn", "int"), F("write", "bool", True)),
    "vcpu_map": (_r("gfn", "int"), F("writable", "bool", True), F("handle", "str", "")),
    "vcpu_unmap": (_r("handle", "str"), F("dirty", "bool", False)),
    "x86_fault": (_r("gfn", "int"), F("write", "bool", False), F("prefetch", "bool", False),
                  F("race_invalidate", "bool", False)),
    # VMM level ---------------------------------------------------------------------------
    "access": (_r("gpa", "int"), F("write", "bool", False), F("value", "int", 0)),
    "get_dirty_log": (_r("slot", "int"), F("as_id", "int", 0)),
    # host events -------------------------------------------------------------------------
    "madvise": (_r("vma", "str"), F("page", "int", 0), F("count", "int", 1)),
    "mprotect": (_r("vma", "str"), _r("prot", "enum", PROTS)),
    "munmap": (_r("vma", "str"),),
    "page_state": (_r("vma", "str"), _r("page", "int"), _r("state", "enum", MAP_STATES)),
    "pte": (_r("vma", "str"), _r("page", "int"), F("present", "bool", True), F("writable", "bool", True),
            F("handler", "enum", "populates", HANDLERS)),
    "invalidate_begin": (_r("vma", "str"), F("page", "int", 0), F("count", "int", 1)),
    "invalidate_end": (),
    "signal": (F("kind", "enum", "pending", SIGNALS),),
    "mmap_lock": (F("contended", "bool", True),),
    "vcpu_state": (F("guest_mode", "optbool"), F("smm", "optbool"), F("async_pf", "optbool"),
                   F("apicv", "optbool")),
    # memslot events ----------------------------------------------------------------------
    "memslot_create": (_r("slot", "int"), _r("gfn", "int"), _r("pages", "int"), _r("vma", "str"),
                       F("offset", "int", 0), F("readonly", "bool", False), F("log_dirty", "bool", False),
                       F("as_id", "int", 0)),
    "memslot_delete": (_r("slot", "int"), F("as_id", "int", 0)),
    "memslot_move": (_r("slot", "int"), _r("gfn", "int"), F("as_id", "int", 0)),
    "memslot_flags": (_r("slot", "int"), F("log_dirty", "bool", False), F("as_id", "int", 0)),
    "memslot_invalidate": (_r("slot", "int"), F("as_id", "int", 0)),
}
API_OPS = ("lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault")
VMM_OPS = ("access", "get_dirty_log")


@dataclass
class Op:
    kind: str
    args: dict[str, Any]
    line: int = field(default=0, compare=False)

    def __getattr__(self, name: str) -> Any:
        args = self.__dict__.get("args")            # absent while unpickling: no recursion
        if args is None or name not in args:
            raise AttributeError(name)
        return args[name]


@dataclass
class Scenario:
    world: WorldSpec
    ops: list[Op]
    name: str = ""
    description: str = ""
    tags: dict[str, Any] = field(default_factory=dict, compare=False)
    file: str = field(default="<scenario>", compare=False)

    def vma_start(self, v: VmaSpec) -> int:
        if v.start is not None:
            return v.start
        i = self._position(v)
        return VMA_BASE + (i if i is not None else self.world.vmas.index(v)) * VMA_STRIDE

    def vma_named(self, name: str) -> VmaSpec:
        """The world's VMA of that name (the first, should names repeat); KeyError if none."""
        cache = self.__dict__.get("_vma_names")
        v = cache.get(name) if cache is not None else None
        if v is None or v.name != name or self._position(v) is None:
            cache = {}
            for x in self.world.vmas:
                cache.setdefault(x.name, x)
            self.__dict__["_vma_names"] = cache
            v = cache[name]
        return v

    def _position(self, v: VmaSpec) -> int | None:
        """``world.vmas.index(v)`` by identity, from a cache checked on every use (the list may
        be edited, e.g. by the minimiser), so that placing every VMA is linear, not quadratic."""
        vmas = self.world.vmas
        cache = self.__dict__.get("_vma_pos")
        i = cache.get(id(v)) if cache is not None else None
        if i is not None and i < len(vmas) and vmas[i] is v:
            return i
        cache = {id(x): n for n, x in reversed(list(enumerate(vmas)))}
        self.__dict__["_vma_pos"] = cache
        return cache.get(id(v))


def make_op(kind: str, **args: Any) -> Op:
    """An op with defaults filled in (for tests and the codec)."""
    schema = OP_SCHEMAS[kind]
    full = {f.name: args.pop(f.name, f.default) for f in schema}
    if args:
        raise TypeError(f"unknown fields for {kind}: {sorted(args)}")
    return Op(kind, full)


# --- loading -----------------------------------------------------------------------------------

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
        kind = r.enum(pm["kind"], "page.kind", tuple(k for k in PAGE_KINDS if k != ZERO))
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
    v.frames = r.field(m, "frames", "enum", NO_STRUCT_PAGE, "vma", choices=tuple(k for k in PAGE_KINDS if k != ZERO))
    if "page_states" in m:
        ps = m["page_states"]
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
    if "ptes" in m:
        pt = m["ptes"]
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
    return v


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
    return SlotSpec(sid, r.int_(m["gfn"], "memslot.gfn", 0, MAX_GFN), r.int_(m["pages"], "memslot.pages", 1, MAX_SLOT_PAGES),
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
        if fn is None:
            if f.required:
                raise r.err(f"op {kind} needs {f.name!r}", n.line)
            args[f.name] = f.default
            continue
        label = f"{kind}.{f.name}"
        if f.type == "int":
            args[f.name] = r.int_(fn, label)
        elif f.type == "optint":
            args[f.name] = None if fn.value is None else r.int_(fn, label)
        elif f.type == "bool":
            args[f.name] = r.bool_(fn, label)
        elif f.type == "optbool":
            args[f.name] = None if fn.value is None else r.bool_(fn, label)
        elif f.type == "str":
            args[f.name] = r.str_(fn, label)
        else:
            args[f.name] = r.enum(fn, label, f.choices)
    return Op(kind, args, n.line)


# --- structural validation (a dry run of the ops that change structure) -----------------------

class _Intervals:
    """Disjoint half-open ranges kept sorted by start: adding one checks only its neighbours, so
    validating n VMAs or memslots costs O(n log n) instead of O(n^2)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.items: list[tuple[int, int, Any]] = []          # (start, end, name)

    def add(self, start: int, end: int, name: Any) -> Any:
        """Insert [start, end); returns the name of a range it overlaps (and inserts nothing)."""
        i = bisect_right(self.starts, start)
        if i > 0 and self.items[i - 1][1] > start:
            return self.items[i - 1][2]
        if i < len(self.items) and self.items[i][0] < end:
            return self.items[i][2]
        self.starts.insert(i, start)
        self.items.insert(i, (start, end, name))
        return None

    def remove(self, start: int, name: Any) -> None:
        i = bisect_left(self.starts, start)
        while self.items[i][2] != name:
            i += 1
        del self.starts[i], self.items[i]


def validate(sc: Scenario) -> None:
    """Reject inconsistent scenarios: unknown names, memslots outside their VMA or overlapping,
    ops on missing memslots/VMAs/maps, unbalanced notifier ends, frames in the wrong VMA kind."""
    w, f = sc.world, sc.file

    def err(msg: str, line: int = 0) -> ScenarioError:
        return ScenarioError(msg, line, f)

    names = set()
    pfns = set()
    for p in w.pages:
        if p.name in names or p.name == "zero":
            raise err(f"duplicate page name {p.name!r}", p.line)
        names.add(p.name)
        if p.pfn is not None:
            if p.pfn in pfns:
                raise err(f"duplicate pfn {p.pfn:#x} (page {p.name!r})", p.line)
            pfns.add(p.pfn)
    kinds = {p.name: p.kind for p in w.pages}
    vmas: dict[str, VmaSpec] = {}
    spans = _Intervals()
    for v in w.vmas:
        if v.name in vmas:
            raise err(f"duplicate vma name {v.name!r}", v.line)
        vmas[v.name] = v
        start = sc.vma_start(v)
        other = spans.add(start, start + (v.pages << PAGE_SHIFT), v.name)
        if other is not None:
            raise err(f"vma {v.name!r} overlaps vma {other!r}", v.line)
        if v.host_level == "2m" and start & ((1 << 21) - 1):
            raise err(f"vma {v.name!r} has host_level 2m but is not 2 MiB aligned", v.line)
        remapped = v.remap in ("pfnmap", "io")
        if remapped and v.page_states:
            raise err(f"vma {v.name!r} is remapped (VM_IO/VM_PFNMAP): use 'ptes', not 'page_states'", v.line)
        if not remapped and v.ptes:
            raise err(f"vma {v.name!r} is not remapped: use 'page_states', not 'ptes'", v.line)
        for i, (_, pname) in v.page_states.items():     # errors name the entry's own line
            if pname is not None:
                if pname not in kinds:
                    raise err(f"vma {v.name!r} names unknown page {pname!r}", v.entry_lines.get(i, v.line))
                if kinds[pname] in (REFCOUNT0, NO_STRUCT_PAGE):
                    raise err(f"page {pname!r} ({kinds[pname]}) can only be mapped by a VM_IO/VM_PFNMAP vma",
                              v.entry_lines.get(i, v.line))
        for i, pte in v.ptes.items():
            if pte.page is not None and pte.page not in kinds:
                raise err(f"vma {v.name!r} names unknown page {pte.page!r}", v.entry_lines.get(i, v.line))
    slots: dict[tuple[int, int], tuple[int, int]] = {}
    gfns: defaultdict[int, _Intervals] = defaultdict(_Intervals)          # per address space
    live_vmas = set(vmas)

    def add_slot(as_id: int, sid: int, gfn: int, pages: int, vma: str, offset: int, line: int) -> None:
        if vma not in vmas:
            raise err(f"memslot {sid} names unknown vma {vma!r}", line)
        if offset + pages > vmas[vma].pages:
            raise err(f"memslot {sid} (offset {offset}, {pages} pages) extends past vma {vma!r} "
                      f"({vmas[vma].pages} pages)", line)
        if (as_id, sid) in slots:
            raise err(f"memslot {sid} already exists in address space {as_id}", line)
        other = gfns[as_id].add(gfn, gfn + pages, sid)
        if other is not None:
            raise err(f"memslot {sid} (gfns {gfn:#x}+{pages}) overlaps memslot {other}", line)
        slots[(as_id, sid)] = (gfn, pages)

    for s in w.memslots:
        add_slot(s.as_id, s.id, s.gfn, s.pages, s.vma, s.offset, s.line)
    open_ranges = 0
    handles: set[str] = set()
    nmaps = 0
    for op in sc.ops:
        a, line = op.args, op.line
        if "vma" in a and op.kind != "memslot_create":
            if a["vma"] not in live_vmas:
                raise err(f"op {op.kind} names unknown or unmapped vma {a['vma']!r}", line)
            v = vmas[a["vma"]]
            if "page" in a and not 0 <= a["page"] < v.pages:
                raise err(f"page {a['page']} is not within vma {v.name!r} (0..{v.pages - 1})", line)
            if op.kind == "pte" and v.remap not in ("pfnmap", "io"):
                raise err(f"op pte needs a VM_IO/VM_PFNMAP vma; {v.name!r} is not remapped", line)
            if op.kind == "page_state" and v.remap in ("pfnmap", "io"):
                raise err(f"op page_state needs a normal vma; {v.name!r} is remapped (use op pte)", line)
        if op.kind == "munmap":
            live_vmas.discard(a["vma"])
        elif op.kind == "memslot_create":
            if a["vma"] not in live_vmas:
                raise err(f"memslot_create names unknown or unmapped vma {a['vma']!r}", line)
            if a["slot"] >= KVM_USER_MEM_SLOTS or a["gfn"] > MAX_GFN or not 1 <= a["pages"] <= MAX_SLOT_PAGES:
                raise err("memslot_create: slot, gfn or pages out of range", line)
            add_slot(a["as_id"], a["slot"], a["gfn"], a["pages"], a["vma"], a["offset"], line)
        elif op.kind in ("memslot_delete", "memslot_move", "memslot_flags", "memslot_invalidate", "get_dirty_log"):
            key = (a["as_id"], a["slot"])
            if key not in slots:
                raise err(f"op {op.kind}: no memslot {a['slot']} in address space {a['as_id']}", line)
            if op.kind == "memslot_delete":
                gfns[key[0]].remove(slots.pop(key)[0], a["slot"])
            elif op.kind == "memslot_move":
                g, n = slots.pop(key)
                gfns[key[0]].remove(g, a["slot"])
                if a["gfn"] > MAX_GFN:
                    raise err("memslot_move: gfn out of range", line)
                other = gfns[key[0]].add(a["gfn"], a["gfn"] + n, a["slot"])
                if other is not None:
                    raise err(f"memslot_move: memslot {a['slot']} would overlap memslot {other}", line)
                slots[key] = (a["gfn"], n)
        elif op.kind == "invalidate_begin":
            open_ranges += 1
        elif op.kind == "invalidate_end":
            if open_ranges == 0:
                raise err("invalidate_end without a matching invalidate_begin", line)
            open_ranges -= 1
        elif op.kind == "vcpu_map":
            h = a["handle"] or f"map{nmaps}"
            nmaps += 1
            if h in handles:
                raise err(f"vcpu_map handle {h!r} is already in use", line)
            handles.add(h)
        elif op.kind == "vcpu_unmap":
            if a["handle"] not in handles:
                raise err(f"vcpu_unmap: no open map {a['handle']!r}", line)
            handles.discard(a["handle"])
        for k in ("gfn",):
            if k in a and a[k] > MAX_GFN:
                raise err(f"{op.kind}.gfn {a[k]:#x} is out of range", line)
        if op.kind == "access":
            if a["gpa"] >> PAGE_SHIFT > MAX_GFN:
                raise err(f"access.gpa {a['gpa']:#x} is out of range", line)
            if a["gpa"] & 7:
                raise err(f"access.gpa {a['gpa']:#x} is not 8-byte aligned (accesses are 8-byte loads/stores)", line)


# --- dumping -----------------------------------------------------------------------------------

def scenario_to_dict(sc: Scenario) -> dict[str, Any]:
    """A plain structure that ``loads_scenario`` reads back to an equal scenario."""
    w = sc.world
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
    out: dict[str, Any] = {"version": SCENARIO_VERSION}
    if sc.name:
        out["name"] = sc.name
    if sc.description:
        out["description"] = sc.description
    if sc.tags:
        out["tags"] = sc.tags
    out["world"] = world
    out["ops"] = [{op.kind: _op_dict(op)} for op in sc.ops]
    return out


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
