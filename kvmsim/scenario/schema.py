"""What a scenario is: a world (memslots, host mappings, page states, task, notifier and module
state) plus an ordered list of ops.  See docs/scenarios.md for the format, one example per op.

Ops are described by schemas (``OP_SCHEMAS``) rather than one class each, so that validation,
YAML dumping and the byte codec all walk the same field lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .vocabulary import HANDLERS, NO_STRUCT_PAGE, PAGE_STATES, UNPOPULATED

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

    def repr_key(self) -> tuple:
        """A value equal for two scenarios iff their ``repr`` are, at about half the cost of repr
        and its hash: every field of every part (the lines and the fields ``==`` ignores too),
        dicts as their items in order.  "Iff" holds for values of the types the fields declare
        (what loading and decoding build), as ``1 == True`` is not so in repr.  Why: the checker
        remembers judgements by scenario, and repr was a tenth of judging a new input."""
        w = self.world
        return (w.allow_unsafe_mappings, w.async_pf, w.guest_mode, w.smm, w.apicv, w.signal, w.mmap_lock_contended,
                w.seq, w.seq_bits, tuple([(p.name, p.kind, p.pfn, p.memremap_ok, p.line) for p in w.pages]),
                tuple([_vma_key(v) for v in w.vmas]),
                tuple([(s.id, s.gfn, s.pages, s.vma, s.offset, s.readonly, s.log_dirty, s.as_id, s.internal, s.line)
                       for s in w.memslots]),
                tuple([(op.kind, tuple(op.args.items()), op.line) for op in self.ops]), self.name, self.description,
                repr(self.tags) if self.tags else None, self.file)

    def vma_start(self, v: VmaSpec) -> int:
        if v.start is not None:
            return v.start
        i = self._position(v)
        return _placed(v, i if i is not None else self.world.vmas.index(v))

    def vma_starts(self) -> list[int]:
        """``vma_start`` of every world VMA, in one pass (building a world places them all)."""
        first: dict[int, int] = {}
        return [_placed(v, first.setdefault(id(v), n)) for n, v in enumerate(self.world.vmas)]

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


def _placed(v: VmaSpec, position: int) -> int:
    """Where a VMA is mapped: its own ``start``, else the slot of its position in the world's list
    (the first position of that VmaSpec object)."""
    return v.start if v.start is not None else VMA_BASE + position * VMA_STRIDE


def _vma_key(v: VmaSpec) -> tuple:
    return (v.name, v.pages, v.start, v.prot, v.shared, v.remap, v.host_level, v.state, tuple(v.page_states.items()),
            v.frames, tuple([(i, p.page, p.present, p.writable, p.handler) for i, p in v.ptes.items()]), v.line,
            tuple(v.entry_lines.items()))


def make_op(kind: str, **args: Any) -> Op:
    """An op with defaults filled in (for tests and the codec)."""
    schema = OP_SCHEMAS[kind]
    full = {f.name: args.pop(f.name, f.default) for f in schema}
    if args:
        raise TypeError(f"unknown fields for {kind}: {sorted(args)}")
    return Op(kind, full)
