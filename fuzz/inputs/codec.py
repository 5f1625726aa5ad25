"""The byte codec: a versioned opcode stream <-> a scenario (DESIGN principle 2).

Why a hand-written stream rather than, say, YAML bytes: libFuzzer mutates bytes, so every byte
string must decode (deterministically, in one forward pass) into a *valid*, *small* scenario,
and every scenario a person wrote must encode into bytes that decode back to it (``==``).

Layout: ``VERSION`` byte, then (version 2) an optional names record with a checksum (see
"names" below: names and descriptions never come from mutated bytes), then records.  A record is
one opcode byte followed by its fields.
Unknown opcodes are skipped (one byte), so opcode numbers leave gaps: a new op or a new field
layout gets a new number and old corpora keep decoding as before.  Reading past the end yields
zeros.  Field encodings:

* unsigned LEB128 varints for ints; ``optint`` is ``0`` (None) or ``v + 1``;
* all bools of a record packed into one varint bit mask (layout order);
* enums as a varint index (taken modulo the number of choices);
* strings as varint length + UTF-8 (at most ``MAX_STR`` bytes);
* references (an op's ``vma``, a pte's ``page``, ``vcpu_unmap.handle``) as an index into what
  was declared/opened before, so random bytes mostly produce consistent scenarios;
* ``access.gpa`` as gfn varint + page offset varint (small gfns stay one byte).

World records may appear anywhere; op records append to the op list.  A record that would make
the scenario invalid (duplicate name, overlapping memslot, op on a missing memslot...) or exceed
the bounds is dropped.  When a stream declares no pages, VMAs or memslots at all (and carries no
``EMPTY_WORLD`` marker), a small built-in world is used, so that fuzzing from an empty corpus
reaches the interesting states at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmsim.constants import INTERNAL_SLOT_IDS, KVM_USER_MEM_SLOTS
from kvmsim.scenario import (
    HOST_LEVELS,
    MAP_STATES,
    MAX_GFN,
    MAX_SLOT_PAGES,
    MAX_VMA_PAGES,
    OP_SCHEMAS,
    PROTS,
    REMAPS,
    SIGNALS,
    VMA_BASE,
    VMA_STRIDE,
    F,
    MemoryMap,
    Op,
    PageSpec,
    PteSpec,
    Scenario,
    SlotSpec,
    VmaSpec,
    WorldSpec,
    valid_ops,
)
from kvmsim.scenario.vocabulary import HANDLERS, PAGE_KINDS, ZERO
from kvmsim.yamlsrc import ScenarioError

VERSION = 2             # 2: names kept out of the mutated bytes (a checksummed names record); 1 still decodes
MAX_PAGES = 6
MAX_VMAS = 4
MAX_SLOTS = 4
MAX_ENTRIES = 16          # page_states + ptes entries over all VMAs
MAX_OPS = 16
MAX_STR = 64             # names and handles
MAX_TEXT = 4096          # scenario name and description

DECLARED_KINDS = tuple(k for k in PAGE_KINDS if k != ZERO)
INTERNAL_NAMES = tuple(INTERNAL_SLOT_IDS)
WORLD_BOOLS = ("allow_unsafe_mappings", "async_pf", "guest_mode", "smm", "apicv", "mmap_lock_contended")

# World records.
OP_NAMES = 0x01         # v2: the names of a scenario a person wrote, checksummed (first record only)
OP_META = 0x02
OP_EMPTY_WORLD = 0x03
OP_WORLD = 0x04
OP_PAGE = 0x08
OP_VMA = 0x0C
OP_VMA_STATE = 0x10
OP_VMA_PTE = 0x14
OP_SLOT = 0x18
_FIRST_OP = 0x40        # opcodes from here on are op records (``OP_LAYOUTS``)

# Op records: opcode -> (op kind, frozen field layout).  A schema field missing from a layout
# decodes as its default; a new field needs a new opcode (the encoder picks the newest layout).
OP_LAYOUTS: dict[int, tuple[str, tuple[str, ...]]] = {
    0x40: ("lookup", ("gfn", "write", "nowait", "interruptible", "atomic", "want_ref", "guarded", "pin",
                      "try_writable", "vcpu", "mmu_seq")),
    0x44: ("gfn_to_page", ("gfn", "write")),
    0x48: ("vcpu_map", ("gfn", "writable", "handle")),
    0x4C: ("vcpu_unmap", ("handle", "dirty")),
    0x50: ("x86_fault", ("gfn", "write", "prefetch", "race_invalidate")),
    0x60: ("access", ("gpa", "write", "value")),
    0x64: ("get_dirty_log", ("slot", "as_id")),
    0x80: ("madvise", ("vma", "page", "count")),
    0x84: ("mprotect", ("vma", "prot")),
    0x88: ("munmap", ("vma",)),
    0x8C: ("page_state", ("vma", "page", "state")),
    0x90: ("pte", ("vma", "page", "present", "writable", "handler")),
    0x94: ("invalidate_begin", ("vma", "page", "count")),
    0x98: ("invalidate_end", ()),
    0x9C: ("signal", ("kind",)),
    0xA0: ("mmap_lock", ("contended",)),
    0xA4: ("vcpu_state", ("guest_mode", "smm", "async_pf", "apicv")),
    0xC0: ("memslot_create", ("slot", "gfn", "pages", "vma", "offset", "readonly", "log_dirty", "as_id")),
    0xC4: ("memslot_delete", ("slot", "as_id")),
    0xC8: ("memslot_move", ("slot", "gfn", "as_id")),
    0xCC: ("memslot_flags", ("slot", "log_dirty", "as_id")),
    0xD0: ("memslot_invalidate", ("slot", "as_id")),
}
# The newest opcode of each kind is the one the encoder writes.
ENCODE_OPCODE: dict[str, int] = {}
for _code, (_kind, _) in sorted(OP_LAYOUTS.items()):
    ENCODE_OPCODE[_kind] = _code


class EncodeError(ValueError):
    """A scenario the codec cannot represent (too large, or internally inconsistent)."""


# --- default world -------------------------------------------------------------------------------

def default_world() -> WorldSpec:
    """The world used when a stream declares none: one of each memory kind the spec cares about,
    at gfns 0..17 (one varint byte away); gfn 17 is a needs-I/O page behind a read-only slot."""
    return WorldSpec(
        pages=[PageSpec("ttm", "refcount0"), PageSpec("rsv", "reserved"), PageSpec("bar", "none")],
        vmas=[
            VmaSpec("ram", 8, page_states={0: ("present_rw", None), 1: ("present_ro", None), 2: ("needs_io", None),
                                           3: ("hwpoison", None), 4: ("resident", None), 7: ("needs_io", None)}),
            VmaSpec("dev", 4, remap="pfnmap", frames="normal",
                    ptes={1: PteSpec("ttm"), 2: PteSpec("rsv", writable=False),
                          3: PteSpec("bar", present=False)}),
            VmaSpec("rom", 2, prot="r", page_states={0: ("present_ro", None)}),
        ],
        memslots=[SlotSpec(0, 0, 8, "ram"), SlotSpec(1, 8, 4, "dev"), SlotSpec(2, 12, 2, "rom"),
                  SlotSpec(3, 16, 2, "ram", offset=6, readonly=True, log_dirty=True)],
    )


# The default world's pages, VMAs and memslots, built once and shared by the scenarios that use it
# (in lists of their own): nothing edits a world's parts in place (the minimiser copies first).
# Why: building them was a fifth of building such a scenario.
_DEFAULT_WORLD = default_world()


def _world_is_empty(w: WorldSpec) -> bool:
    return not (w.pages or w.vmas or w.memslots)


# --- reading -------------------------------------------------------------------------------------

class _Reader:
    __slots__ = ("data", "pos", "n")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.n = data, 0, len(data)

    def byte(self) -> int:
        if self.pos >= self.n:
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        data, pos, n = self.data, self.pos, self.n
        v = shift = 0
        while shift < 70:
            if pos >= n:                  # past the end: 0, as ``byte`` reads it
                break
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        self.pos = pos
        return v & ((1 << 64) - 1)

    def varints(self, start: int, k: int) -> bytes | list[int]:
        """The ``k`` varints from ``start`` (the reader left after them).  Most are one byte each:
        then they are the slice itself (a byte string indexes as its ints)."""
        chunk = self.data[start:start + k]
        if len(chunk) == k and chunk.isascii():
            self.pos = start + k
            return chunk
        m = _VARINT_RUNS[k].match(self.data, start)
        assert m is not None                    # every part of the pattern may match nothing
        self.pos = m.end()
        return [v[0] & 0x7F if len(v) == 1 else _leb128(v) for v in m.groups()]

    def ints(self, k: int) -> bytes | list[int]:
        """The next ``k`` varints."""
        return self.varints(self.pos, k)

    def skip_string(self, limit: int = MAX_STR) -> None:
        """Past a string, as ``string`` reads it, without decoding it."""
        pos = self.pos
        if pos < self.n and self.data[pos] < 0x80:      # a one-byte length
            self.pos = pos + 1 + self.data[pos] % (limit + 1)
        else:
            n = self.varint() % (limit + 1)
            self.pos += n

    def enum(self, choices: tuple) -> str:
        return choices[self.varint() % len(choices)]

    def string(self, limit: int = MAX_STR) -> str:
        n = self.varint() % (limit + 1)
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        text = raw.decode("utf-8", errors="replace")
        while len(text.encode("utf-8")) > limit:     # U+FFFD takes 3 bytes: keep it re-encodable
            text = text[:-1]
        return text

    def optint(self) -> int | None:
        v = self.varint()
        return None if v == 0 else v - 1


class _Drop(Exception):
    """The record being decoded would make the scenario invalid: skip it."""


class _State:
    """What reading the records so far decided (a plain class with slots: one is made per input)."""
    __slots__ = ("pages", "vmas", "memslots", "data", "name", "description", "structural", "empty_marker",
                 "entries", "version", "names", "maps", "pending", "settings", "structure")

    def __init__(self, data: bytes, version: int = VERSION) -> None:
        self.pages: list[PageSpec] = []         # the world's parts declared so far (``WorldSpec`` is built
        self.vmas: list[VmaSpec] = []           # with the scenario)
        self.memslots: list[SlotSpec] = []
        self.data, self.version = data, version
        self.name = self.description = ""
        self.structural = False         # a page/vma/slot record was seen
        self.empty_marker = False
        self.entries = 0
        self.names: list[str] | None = None   # v2: the checked names record (name, description, pages, vmas, handles)
        self.maps = 0                   # vcpu_map ops kept (the maps a vcpu_unmap may name)
        self.pending: list[tuple[bytes, int, int]] = []   # kept ops: (record, offset, VMAs then)
        self.settings: tuple | None = None   # the last world record's values (``_world``): it sets every setting
        self.structure: list[bytes] = []     # the kept page, VMA, entry and memslot records (``_structure``)


def decode(data: bytes) -> Scenario:
    """Any byte string -> a valid, bounded scenario.  Never raises."""
    return parse(data).scenario()


@dataclass
class Parsed:
    """A byte string read into records, before the scenario is built and repaired.  ``key``
    determines the scenario: the version, the names record, the two flags that decide the default
    world, the values of the last world record (each one sets every setting) and the bytes of
    every other record that was kept (in order), but for those that only set a flag or are skipped
    (``EMPTY_WORLD``; ``META`` from version 2).  Why: two inputs with one key decode to equal
    scenarios, so a caller that remembers what it did with a key can skip building, repairing and
    comparing the scenario (most mutations only touch skipped bytes); leaving out what decides
    nothing made 16 % fewer distinct keys on a recorded libFuzzer stream."""
    key: tuple
    state: _State

    def scenario(self) -> Scenario:
        st = self.state
        ops = _build_ops(st)                # before the default world: ops name the VMAs declared
        if not st.structural and not st.empty_marker:
            dw = _DEFAULT_WORLD
            world = _world_spec(st.settings, list(dw.pages), list(dw.vmas), list(dw.memslots))
        else:
            world = _world_spec(st.settings, st.pages, st.vmas, st.memslots)
        if st.names is not None:
            st.name, st.description = st.names[0], st.names[1]
        return _repair(Scenario(world, ops, name=st.name, description=st.description, file="<bytes>"),
                       self._structure())

    def _structure(self) -> tuple:
        """What determines the world's pages, VMAs and memslots: the key without the op records and
        the records that set other parts of the world (settings, names of v1 scenarios)."""
        version, names, structural, empty, _, _ = self.key
        return version, names, structural, empty, tuple(self.state.structure)


def parse(data: bytes) -> Parsed:
    """Read every record of ``data`` (``decode`` without building the scenario).  Never raises.
    Why one loop with the op records inline: parsing runs on every input; one regex search finds
    the next record and, for an op record, its extent (``_RECORD``), so an op record costs no
    Python call of its own."""
    r, st = _begin(data)
    kept: list[bytes] = []
    ops, search, n, max_ops = _OP_RECORDS, _RECORD.search, r.n, MAX_OPS
    pending, vmas = st.pending, st.vmas
    pos = r.pos
    settings_at = -1
    while pos < n:
        m = search(data, pos)                     # unknown opcodes: skipped, one byte each
        if m is None:
            break
        start, pos = m.span()
        code = data[start]
        if code < _FIRST_OP:                      # a world record
            if code == OP_WORLD:                  # the pattern covers its fields; only the last one counts
                settings_at = start
            elif code == OP_EMPTY_WORLD:
                st.empty_marker = True
            else:
                pos = _world_record(r, st, start, kept)
            continue
        op = ops[code]
        if op is not None:                        # a reference that may name nothing, or a string
            pos = _op_end(r, st, op, start, pos)
            if pos < 0:
                pos = -pos
                continue
        if len(pending) >= max_ops:
            continue
        if op is not None:
            st.maps += op[2]
        record = data[start:pos]
        pending.append((record, start, len(vmas)))
        kept.append(record)
    return _parsed(r, st, settings_at, kept)


def _parsed(r: _Reader, st: _State, settings_at: int, kept: list[bytes]) -> Parsed:
    """``parse``'s result, once the last world settings record (at ``settings_at``; -1: none) is read."""
    if settings_at >= 0:
        r.pos = settings_at + 1
        _world(r, st)
    names = None if st.names is None else tuple(st.names)
    return Parsed((st.version, names, st.structural, st.empty_marker, st.settings, tuple(kept)), st)


def _op_end(r: _Reader, st: _State, op: tuple[bool | None, bool, bool, re.Pattern[bytes]], start: int,
            end: int) -> int:
    """Where the op record at ``start`` whose fields end at ``end`` ends: after its string, if it has
    one; negated if it is dropped for naming a VMA (or map) when none is declared (or open), when
    it ends right after that reference."""
    ref, text, _, fields = op
    if ref is not None and not (st.vmas if ref else st.maps):
        m = fields.match(r.data, start + 1)
        assert m is not None                      # every part of the pattern may match nothing
        return -m.end(1)
    if text:
        r.pos = end
        length = r.varint() % (MAX_STR + 1)
        end = r.pos + length
    return end


def _begin(data: bytes) -> tuple[_Reader, _State]:
    """A reader after the version byte and the names record, if any, and the state they give."""
    r = _Reader(data)
    version = r.byte() if r.n else VERSION
    st = _State(data, version=1 if version == 1 else VERSION)   # unknown: the current one
    if st.version >= 2 and r.pos < r.n and data[r.pos] == OP_NAMES:
        r.byte()
        st.names = _names_record(r, data)
    return r, st


def _world_record(r: _Reader, st: _State, start: int, kept: list[bytes]) -> int:
    """Read the world record at ``start`` (but a world settings record: ``parse`` reads the last
    one only); returns where the next record may start.  Only records that decide more than a flag
    already in the key are kept (``Parsed``)."""
    code = r.data[start]
    r.pos = start + 1
    try:
        _RECORDS[code](r, st)
    except _Drop:
        return r.pos
    if code >= OP_PAGE:
        record = r.data[start:r.pos]
        kept.append(record)
        st.structure.append(record)
    elif code == OP_META and st.version == 1:
        kept.append(r.data[start:r.pos])
    return r.pos


# --- names: never from mutated bytes ------------------------------------------------------------
#
# Names and descriptions are for people, and a fuzzer that mutates them only produces unreadable
# reports ("8)\uFFFD\x03red...").  From version 2 the records carry no names: pages, VMAs and
# handles get names derived from the record (``page0``, ``vma1``, ``map0``), and the names of a
# scenario a person wrote travel in one OP_NAMES record right after the version byte, followed by
# a checksum of the whole byte string.  Any mutation anywhere breaks the checksum, so a mutated
# input decodes with derived names only, while a seed's bytes decode back to the seed exactly.
# Version-1 bytes (old corpora) decode as before, except that a name that is not a plain
# identifier (or a description with control characters) is replaced by the derived one.

_IDENT = re.compile(r"^[^\s\ufffd]{1,64}$")          # what a person writes: printable, no blanks
CHECKSUM_LEN = 4


def strip_names(data: bytes) -> bytes:
    """The bytes without their names record (what a mutated copy decodes like)."""
    if len(data) < 2 or data[0] == 1 or data[1] != OP_NAMES:
        return data
    r = _Reader(data)
    r.pos = 2
    count = min(r.varint(), 2 + MAX_PAGES + MAX_VMAS + MAX_OPS)
    for i in range(count):
        r.string(MAX_TEXT if i < 2 else MAX_STR)
    return data[:1] + data[r.pos + CHECKSUM_LEN:]


def _checksum(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()[:CHECKSUM_LEN]


def _names_record(r: _Reader, data: bytes) -> list[str] | None:
    """The names record (its opcode already read), if its checksum matches the rest of the input."""
    count = min(r.varint(), 2 + MAX_PAGES + MAX_VMAS + MAX_OPS)
    first = r.pos
    for i in range(count):                  # their text is read only if the checksum matches
        length = r.varint() % ((MAX_TEXT if i < 2 else MAX_STR) + 1)
        r.pos += length
    start = r.pos
    end = r.pos = min(r.pos + CHECKSUM_LEN, r.n)
    got = data[start:end]
    if count < 2 or len(got) < CHECKSUM_LEN or got != _checksum(data[1:start] + data[end:]):   # version may vary
        return None
    r.pos = first
    names = [r.string(MAX_TEXT if i < 2 else MAX_STR) for i in range(count)]
    r.pos = end
    if any(not _IDENT.match(n) or not n.isprintable() for n in names[2:] if n):
        return None
    return names


def _given_name(st: _State, index: int, body: str, derived: str) -> str:
    """The name of the index-th named thing (0-based over pages, then VMAs, then handles)."""
    if st.version >= 2:
        if st.names is not None and 2 + index < len(st.names) and st.names[2 + index]:
            return st.names[2 + index]
        return derived
    return body if body and _IDENT.match(body) and body.isprintable() else derived


def _printable(s: str) -> str:
    return s if all(c.isprintable() or c in "\n\t" for c in s) and "\ufffd" not in s else ""


# Structures (``Parsed._structure``) whose world passed validation, as ``_repair`` found, with
# the world's memory map (``MemoryMap.of_world``, shared read-only by ``valid_ops``); bounded:
# cleared when full.  Why: a world repeats across many inputs (three in four of the scenarios built
# while fuzzing have a structure seen before), and checking it was a fifth of building one.
_VALID_WORLDS: dict[tuple, MemoryMap] = {}
VALID_WORLDS_SIZE = 8192


def _repair(sc: Scenario, structure: tuple) -> Scenario:
    """The final safety net: drop every op ``validate`` rejects (``valid_ops``: each op checked
    once against the ops kept before it).  The record checks above make this rare; a world error
    leaves an empty scenario.  The world is checked once per structure (``_VALID_WORLDS``)."""
    memory = _VALID_WORLDS.get(structure)
    known = memory is not None
    if memory is None:
        memory = MemoryMap.of_world(sc.world)
    try:
        sc.ops = valid_ops(sc, world_valid=known, memory=memory)
    except ScenarioError:
        return Scenario(WorldSpec(), [], file="<bytes>")
    if not known:
        if len(_VALID_WORLDS) >= VALID_WORLDS_SIZE:
            _VALID_WORLDS.clear()
        _VALID_WORLDS[structure] = memory
    return sc


def _meta(r: _Reader, st: _State) -> None:
    if st.version == 1:
        name, description = r.string(MAX_TEXT), r.string(MAX_TEXT)
        st.name, st.description = _printable(name), _printable(description)
        return
    r.skip_string(MAX_TEXT)              # v2 takes them from the names record only: skip the text
    r.skip_string(MAX_TEXT)


def _empty(r: _Reader, st: _State) -> None:
    st.empty_marker = True


# The world records' fields are read a record at a time (``_Reader.ints``: mostly one slice), not
# a field at a time: world records were three varint calls in four of parsing a recorded stream.

def _world(r: _Reader, st: _State) -> None:
    """Every setting at once (so only the last world record counts): kept as values until the
    scenario is built (``_world_spec``)."""
    mask, signal, seq = r.ints(3)
    seq_bits = 32 if mask >> len(WORLD_BOOLS) & 1 else 64
    st.settings = (mask & ((1 << len(WORLD_BOOLS)) - 1), seq_bits, SIGNALS[signal % len(SIGNALS)],
                   seq & ((1 << seq_bits) - 1))


def _world_spec(settings: tuple | None, pages: list[PageSpec], vmas: list[VmaSpec],
                memslots: list[SlotSpec]) -> WorldSpec:
    """A world with these parts and the settings ``_world`` read (None: the defaults)."""
    if settings is None:
        return WorldSpec(pages=pages, vmas=vmas, memslots=memslots)
    mask, seq_bits, signal, seq = settings
    flags = {key: bool(mask >> i & 1) for i, key in enumerate(WORLD_BOOLS)}     # the mask's bits, in WORLD_BOOLS order
    return WorldSpec(signal=signal, seq=seq, seq_bits=seq_bits, pages=pages, vmas=vmas, memslots=memslots, **flags)


def _name_field(r: _Reader, st: _State) -> str:
    """A page's or VMA's name field: version 2 never reads it (``_given_name``)."""
    if st.version == 1:
        return r.string()
    r.skip_string()
    return ""


def _page(r: _Reader, st: _State) -> None:
    name = _name_field(r, st)
    kind_index, pfn1, memremap_ok = r.ints(3)
    kind, pfn = DECLARED_KINDS[kind_index % len(DECLARED_KINDS)], None if pfn1 == 0 else pfn1 - 1
    st.structural = True
    name = _given_name(st, len(st.pages), name, f"page{len(st.pages)}")
    if len(st.pages) >= MAX_PAGES or name == "zero" or any(p.name == name for p in st.pages):
        raise _Drop
    if pfn is not None and (not 0x100 <= pfn < 1 << 40 or any(p.pfn == pfn for p in st.pages)):
        raise _Drop
    st.pages.append(PageSpec(name, kind, pfn, bool(memremap_ok & 1)))


def _vma(r: _Reader, st: _State) -> None:
    name = _name_field(r, st)
    pages, start_pg, shared, prot, remap, level, state, frames = r.ints(8)
    st.structural = True
    name = _given_name(st, MAX_PAGES + len(st.vmas), name, f"vma{len(st.vmas)}")
    if len(st.vmas) >= MAX_VMAS or any(v.name == name for v in st.vmas) or not 1 <= pages <= MAX_VMA_PAGES:
        raise _Drop
    start = None if start_pg == 0 else (start_pg - 1) << 12
    if start is not None and not 0x10000 <= start <= (1 << 47) - 1:
        raise _Drop
    s = start if start is not None else VMA_BASE + len(st.vmas) * VMA_STRIDE
    e = s + (pages << 12)
    for i, v in enumerate(st.vmas):
        vs = v.start if v.start is not None else VMA_BASE + i * VMA_STRIDE
        if s < vs + (v.pages << 12) and vs < e:
            raise _Drop
    level_name = HOST_LEVELS[level % len(HOST_LEVELS)]
    if level_name == "2m" and s & ((1 << 21) - 1):
        raise _Drop
    st.vmas.append(VmaSpec(name, pages, start, PROTS[prot % len(PROTS)], bool(shared & 1), REMAPS[remap % len(REMAPS)],
                          level_name, MAP_STATES[state % len(MAP_STATES)],
                          frames=DECLARED_KINDS[frames % len(DECLARED_KINDS)]))


def _vmas_or_drop(r: _Reader, st: _State) -> list[VmaSpec]:
    """The VMAs a record's leading VMA reference indexes; none: the record is dropped after it."""
    vmas = st.vmas
    if not vmas:
        r.varint()
        raise _Drop
    return vmas


def _page_ref(idx: int, st: _State) -> str | None:
    """The page a page reference names (0: none); a reference with no page declared drops the record."""
    if idx == 0:
        return None
    if not st.pages:
        raise _Drop
    return st.pages[(idx - 1) % len(st.pages)].name


def _remapped(v: VmaSpec) -> bool:
    return v.remap in ("pfnmap", "io")


def _vma_state(r: _Reader, st: _State) -> None:
    vmas = _vmas_or_drop(r, st)
    vi, idx, state, pidx = r.ints(4)
    v = vmas[vi % len(vmas)]
    page = _page_ref(pidx, st)
    st.structural = True
    if _remapped(v) or st.entries >= MAX_ENTRIES:
        raise _Drop
    if page is not None:
        kind = next(p.kind for p in st.pages if p.name == page)
        if kind in ("refcount0", "none"):
            raise _Drop
    v.page_states[idx % v.pages] = (MAP_STATES[state % len(MAP_STATES)], page)
    st.entries += 1


def _vma_pte(r: _Reader, st: _State) -> None:
    vmas = _vmas_or_drop(r, st)
    vi, idx, pidx = r.ints(3)
    v = vmas[vi % len(vmas)]
    page = _page_ref(pidx, st)
    mask, handler = r.ints(2)
    st.structural = True
    if not _remapped(v) or st.entries >= MAX_ENTRIES:
        raise _Drop
    v.ptes[idx % v.pages] = PteSpec(page, bool(mask & 1), bool(mask & 2), HANDLERS[handler % len(HANDLERS)])
    st.entries += 1


def _slot(r: _Reader, st: _State) -> None:
    kind = r.varint() % (len(INTERNAL_NAMES) + 1)
    if kind == 0:
        sid, gfn, pages, vi = r.ints(4)
        internal = None
    else:
        internal = INTERNAL_NAMES[kind - 1]
        sid = INTERNAL_SLOT_IDS[internal]
        gfn, pages, vi = r.ints(3)
    vmas = st.vmas
    if not vmas:
        raise _Drop
    v = vmas[vi % len(vmas)]
    offset, mask = r.ints(2)
    readonly, log_dirty, as_id = bool(mask & 1), bool(mask & 2), mask >> 2 & 1
    st.structural = True
    if len(st.memslots) >= MAX_SLOTS or (kind == 0 and sid >= KVM_USER_MEM_SLOTS):
        raise _Drop
    if gfn > MAX_GFN or not 1 <= pages <= MAX_SLOT_PAGES or offset > MAX_VMA_PAGES or offset + pages > v.pages:
        raise _Drop
    for s in st.memslots:
        if s.as_id == as_id and (s.id == sid or (gfn < s.gfn + s.pages and s.gfn < gfn + pages)):
            raise _Drop
    st.memslots.append(SlotSpec(sid, gfn, pages, v.name, offset, readonly, log_dirty, as_id, internal))


def _layout(code: int) -> tuple[str, dict[str, Any], list[F], list[F]]:
    """(kind, default args, bool fields, other fields) of an opcode, in layout order."""
    kind, layout = OP_LAYOUTS[code]
    schema = {f.name: f for f in OP_SCHEMAS[kind]}
    fields = [schema[n] for n in layout if n in schema]
    return (kind, {f.name: f.default for f in OP_SCHEMAS[kind]},
            [f for f in fields if f.type == "bool"], [f for f in fields if f.type != "bool"])


def _op_record(code: int) -> tuple[bytes, tuple[bool | None, bool, bool, re.Pattern[bytes]]]:
    """How ``parse`` reads one op record: it advances over the fields and makes every drop decision
    ``_build_ops`` would (a ``vma`` with no VMA declared yet, a ``vcpu_unmap`` with no map open,
    more than ``MAX_OPS`` ops), but builds nothing: the op is queued as (opcode, offset, VMAs
    declared so far) and built only when the scenario is (``Parsed.scenario``).  Why: most inputs
    hit the checker's memo on ``Parsed.key`` and never read their ops.  Every field but a string is
    one varint (``gpa`` two), so the fields are one regex.  Returns the record's pattern up to its
    string (part of ``_RECORD``) and (reference: True for ``vma``, False for a map handle, None;
    whether a string follows; whether it opens a map; the fields' pattern, group 1 ending after
    the reference)."""
    kind, _, bools, others = _LAYOUTS[code]
    before = int(bool(bools))                   # varints up to and including the reference, if any
    ref: bool | None = None
    after = 0
    text = False
    for f in others:
        if text:
            raise ValueError(f"opcode {code:#x}: a string field must come last")
        width = 2 if f.name == "gpa" else 1
        if f.name == "vma" or (kind == "vcpu_unmap" and f.name == "handle"):
            before, ref = before + after + 1, f.name == "vma"
            after = 0
        elif f.type == "str":
            text = True                         # vcpu_map.handle, the layout's last field
        else:
            after += width
    fields = re.compile(b"(" + _VARINT * before + b")" + _VARINT * after)
    return re.escape(bytes([code])) + _VARINT * (before + after), (ref, text, kind == "vcpu_map", fields)


# One varint as ``_Reader.varint`` consumes it: up to ten bytes, the last one the first without
# the continuation bit (or the tenth); fewer at the end of the input.
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\xff]?"


_VARINT_RUNS = {k: re.compile((b"(" + _VARINT + b")") * k) for k in range(1, 13)}   # k varints, a group each


def _leb128(raw: bytes) -> int:
    """The value of one varint's bytes (as ``_Reader.varint`` reads them; none: 0)."""
    v = 0
    for i, b in enumerate(raw):
        v |= (b & 0x7F) << 7 * i
    return v & ((1 << 64) - 1)


def _build_ops(st: _State) -> list[Op]:
    """The ops queued by ``parse``, read again, now into ``Op``s.  A kept ``vma`` field names one of
    the VMAs declared before its record (``nvmas`` > 0: ``parse`` dropped the record otherwise);
    ``handles`` are the maps opened before it.  An op whose record names no VMA, map or handle is
    a function of the record's bytes alone: its fields are read once (``_OPS_BY_RECORD``)."""
    r = _Reader(st.data)
    ops: list[Op] = []
    handles: list[str] = []
    vmas = st.vmas
    known = _OPS_BY_RECORD
    for record, start, nvmas in st.pending:
        got = known.get(record)
        if got is not None:
            ops.append(Op(got[0], got[1].copy()))
            continue
        kind, by_mask, bits, fields, width, alone = _BUILDS[record[0]]
        vals = r.varints(start + 1, width)
        args = (by_mask[vals[0] & bits] if bits else by_mask[0]).copy()
        for name, tag, arg, i in fields:
            if tag is _INT:
                args[name] = vals[i]
            elif tag is _VMA:
                args[name] = vmas[vals[i] % nvmas].name
            elif tag is _ENUM:
                args[name] = arg[vals[i] % len(arg)]
            else:
                args[name] = _read_other(r, tag, vals, i, handles)
        if kind == "vcpu_map":
            _name_map(st, args, handles)
        if alone:
            if len(known) >= OPS_BY_RECORD_SIZE:
                known.clear()
            known[record] = kind, args.copy()
        ops.append(Op(kind, args))
    return ops


# The kind and fields of ops whose records name nothing declared, by the record's bytes (each op
# built from them is a new ``Op`` with its own ``args``: a caller may edit a decoded scenario's ops).
# Why: building the ops was a third of building a scenario, and the records of ops repeat across a
# fuzzer's inputs.  Bounded: cleared when full.
OPS_BY_RECORD_SIZE = 1 << 14
_OPS_BY_RECORD: dict[bytes, tuple[str, dict[str, Any]]] = {}


def _name_map(st: _State, args: dict[str, Any], handles: list[str]) -> None:
    """A vcpu_map's handle: its given name if it differs from the derived ``mapN``, else ""."""
    n = len(handles)
    given = _given_name(st, MAX_PAGES + MAX_VMAS + n, args["handle"], "")
    args["handle"] = given if given != f"map{n}" else ""
    handles.append(args["handle"] or f"map{n}")


# How ``_build_ops`` reads an op's field (one tag per field of a layout, fixed per opcode).
_INT, _VMA, _ENUM, _OPTINT, _GPA, _OPTBOOL, _HANDLE, _STR = ("int", "vma", "enum", "optint", "gpa", "optbool",
                                                            "handle", "str")


def _read_other(r: _Reader, tag: str, vals: bytes | list[int], i: int, handles: list[str]) -> Any:
    """A field of the rarer tags from its varint(s) ``vals[i]`` (a string: from the reader)."""
    if tag is _OPTINT:
        return None if vals[i] == 0 else vals[i] - 1
    if tag is _GPA:
        return (vals[i] << 12) | (vals[i + 1] & 0xFFF)
    if tag is _OPTBOOL:
        return (None, False, True)[vals[i] % 3]
    if tag is _HANDLE:
        return handles[vals[i] % len(handles)]
    return r.string()                       # the layout's last field: it follows the varints


def _field_tag(kind: str, f: F) -> str:
    if f.name == "gpa":
        return _GPA
    by_type = {_INT: _INT, _OPTINT: _OPTINT, _OPTBOOL: _OPTBOOL, _ENUM: _ENUM}   # ``is``: these objects
    if f.type in by_type:
        return by_type[f.type]
    if f.name == "vma":
        return _VMA
    if kind == "vcpu_unmap" and f.name == "handle":
        return _HANDLE
    return _STR


def _build(code: int) -> tuple[str, list[dict[str, Any]], int, tuple[tuple[str, str, tuple, int], ...], int, bool]:
    """What ``_build_ops`` reads a record of an opcode with: (kind, the args every value of the
    bools' mask starts from, the mask's bits, the other fields, the number of varints, whether the
    op is a function of its record alone: it names no VMA, map or handle).  The record
    is its varints (the bools' mask first, if any; ``gpa`` takes two), then at most one string; each
    other field is (name, tag, enum choices, index of its varint).  Why a table: reading the bools
    one by one was a fifth of building a lookup, and a layout has at most 9 of them (512 masks)."""
    kind, defaults, bools, others = _LAYOUTS[code]
    by_mask = [{**defaults, **{f.name: bool(mask >> bit & 1) for bit, f in enumerate(bools)}}
               for mask in range(1 << len(bools))]
    fields: list[tuple[str, str, tuple, int]] = []
    width = int(bool(bools))
    for f in others:
        tag = _field_tag(kind, f)
        fields.append((f.name, tag, f.choices, width))
        width += 2 if tag is _GPA else 0 if tag is _STR else 1
    alone = kind != "vcpu_map" and not any(tag in (_VMA, _HANDLE, _STR) for _, tag, _, _ in fields)
    return kind, by_mask, (1 << len(bools)) - 1, tuple(fields), width, alone


_LAYOUTS = {code: _layout(code) for code in OP_LAYOUTS}      # built once: decoding is the hot path
_BUILDS = {code: _build(code) for code in OP_LAYOUTS}

_RECORDS: dict[int, Callable[[_Reader, _State], None]] = {
    OP_META: _meta, OP_EMPTY_WORLD: _empty, OP_WORLD: _world, OP_PAGE: _page, OP_VMA: _vma,
    OP_VMA_STATE: _vma_state, OP_VMA_PTE: _vma_pte, OP_SLOT: _slot,
}


# Every op record's reading (``_op_record``), and a pattern finding the next record: a world
# record's opcode, or an op record's opcode and fields (decoding is the hot path of fuzzing: bytes
# between records are skipped without a Python step each).
_OP_PATTERNS = {c: _op_record(c) for c in OP_LAYOUTS}
# (None for an op whose record the pattern covers and that names nothing: the most common ones)
_OP_RECORDS = {c: None if reading[0] is None and not reading[1] and not reading[2] else reading
               for c, (_, reading) in _OP_PATTERNS.items()}
_RECORD = re.compile(b"|".join([re.escape(bytes([c])) + (_VARINT * 3 if c == OP_WORLD else b"")   # its 3 fields
                                for c in sorted(_RECORDS)]
                               + [pattern for _, (pattern, _) in sorted(_OP_PATTERNS.items())]))


# --- writing -------------------------------------------------------------------------------------

class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def byte(self, b: int) -> None:
        self.out.append(b)

    def varint(self, v: int) -> None:
        if v < 0 or v >= 1 << 64:
            raise EncodeError(f"integer {v} out of range")
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.out.append(b | 0x80)
            else:
                self.out.append(b)
                return

    def enum(self, value: str, choices: tuple) -> None:
        if value not in choices:
            raise EncodeError(f"{value!r} is not one of {choices}")
        self.varint(choices.index(value))

    def string(self, s: str, limit: int = MAX_STR) -> None:
        raw = s.encode("utf-8")
        if len(raw) > limit:
            raise EncodeError(f"string {s[:20]!r}... longer than {limit} bytes")
        self.varint(len(raw))
        self.out += raw

    def optint(self, v: int | None) -> None:
        self.varint(0 if v is None else v + 1)


def encode(sc: Scenario) -> bytes:
    """A scenario -> bytes with ``decode(encode(sc)) == sc``; raises EncodeError if the scenario
    exceeds the codec's bounds or cannot be represented."""
    _check_bounds(sc)
    w = sc.world
    out = _Writer()
    out.byte(VERSION)
    _write_world_settings(out, w)
    if _world_is_empty(w):
        out.byte(OP_EMPTY_WORLD)
    _write_pages(out, w)
    _write_vmas(out, w)
    _write_vma_entries(out, w)
    _write_memslots(out, w)
    vmas = [v.name for v in w.vmas]
    handles: list[str] = []
    for op in sc.ops:
        _write_op(out, op, vmas, handles)
    return _with_names(bytes(out.out), sc)


def _check_bounds(sc: Scenario) -> None:
    w = sc.world
    if len(w.pages) > MAX_PAGES or len(w.vmas) > MAX_VMAS or len(w.memslots) > MAX_SLOTS or len(sc.ops) > MAX_OPS:
        raise EncodeError(f"scenario too large for the codec (at most {MAX_PAGES} pages, {MAX_VMAS} vmas, "
                          f"{MAX_SLOTS} memslots, {MAX_OPS} ops)")
    if sum(len(v.page_states) + len(v.ptes) for v in w.vmas) > MAX_ENTRIES:
        raise EncodeError(f"more than {MAX_ENTRIES} page_states/ptes entries")


def _write_world_settings(out: _Writer, w: WorldSpec) -> None:
    """The world record, only when a setting differs from its default."""
    d = WorldSpec()
    if not any(getattr(w, k) != getattr(d, k) for k in (*WORLD_BOOLS, "signal", "seq", "seq_bits")):
        return
    out.byte(OP_WORLD)
    mask = sum(1 << i for i, k in enumerate(WORLD_BOOLS) if getattr(w, k))
    if w.seq_bits not in (32, 64):
        raise EncodeError("seq_bits must be 32 or 64")
    out.varint(mask | (1 << len(WORLD_BOOLS) if w.seq_bits == 32 else 0))
    out.enum(w.signal, SIGNALS)
    out.varint(w.seq)


def _write_pages(out: _Writer, w: WorldSpec) -> None:
    for p in w.pages:
        out.byte(OP_PAGE)
        out.string("")                                  # names travel in the names record
        out.enum(p.kind, DECLARED_KINDS)
        out.optint(p.pfn)
        out.varint(int(p.memremap_ok))


def _write_vmas(out: _Writer, w: WorldSpec) -> None:
    for v in w.vmas:
        out.byte(OP_VMA)
        out.string("")
        out.varint(v.pages)
        if v.start is not None and v.start & 0xFFF:
            raise EncodeError("vma.start must be page aligned")
        out.optint(None if v.start is None else v.start >> 12)
        out.varint(int(v.shared))
        out.enum(v.prot, PROTS)
        out.enum(v.remap, REMAPS)
        out.enum(v.host_level, HOST_LEVELS)
        out.enum(v.state, MAP_STATES)
        out.enum(v.frames, DECLARED_KINDS)


def _write_vma_entries(out: _Writer, w: WorldSpec) -> None:
    """Each VMA's per-page states, then its PTEs, VMA by VMA."""
    pages = [p.name for p in w.pages]
    for i, v in enumerate(w.vmas):
        for idx, (state, page) in v.page_states.items():
            out.byte(OP_VMA_STATE)
            out.varint(i)
            out.varint(idx)
            out.enum(state, MAP_STATES)
            out.varint(0 if page is None else _index(pages, page, "page") + 1)
        for idx, pte in v.ptes.items():
            out.byte(OP_VMA_PTE)
            out.varint(i)
            out.varint(idx)
            out.varint(0 if pte.page is None else _index(pages, pte.page, "page") + 1)
            out.varint(int(pte.present) | int(pte.writable) << 1)
            out.enum(pte.handler, HANDLERS)


def _write_memslots(out: _Writer, w: WorldSpec) -> None:
    vmas = [v.name for v in w.vmas]
    for s in w.memslots:
        out.byte(OP_SLOT)
        if s.internal is not None:
            out.varint(INTERNAL_NAMES.index(s.internal) + 1)
        else:
            out.varint(0)
            out.varint(s.id)
        out.varint(s.gfn)
        out.varint(s.pages)
        out.varint(_index(vmas, s.vma, "vma"))
        out.varint(s.offset)
        out.varint(int(s.readonly) | int(s.log_dirty) << 1 | (s.as_id & 1) << 2)


def _write_op(out: _Writer, op: Op, vmas: list[str], handles: list[str]) -> None:
    """One op record in its kind's newest layout; ``handles`` grows by the maps written so far."""
    code = ENCODE_OPCODE.get(op.kind)
    if code is None:
        raise EncodeError(f"op {op.kind!r} has no opcode")
    _, layout = OP_LAYOUTS[code]
    schema = OP_SCHEMAS[op.kind]
    for f in schema:
        if f.name not in layout and op.args.get(f.name) != f.default:
            raise EncodeError(f"op {op.kind}.{f.name} has no place in opcode {code:#x}")
    out.byte(code)
    fields = [f for n in layout for f in schema if f.name == n]
    bools = [f for f in fields if f.type == "bool"]
    if bools:
        out.varint(sum(1 << i for i, f in enumerate(bools) if op.args[f.name]))
    for f in fields:
        if f.type != "bool":
            _write_field(out, op, f, vmas, handles)
    if op.kind == "vcpu_map":
        handles.append(op.args["handle"] or f"map{len(handles)}")


def _with_names(body: bytes, sc: Scenario) -> bytes:
    """Insert the checksummed names record when the scenario has names the decoder would not derive."""
    w = sc.world
    names = [sc.name, sc.description] + [""] * (MAX_PAGES + MAX_VMAS)
    for i, p in enumerate(w.pages):
        names[2 + i] = "" if p.name == f"page{i}" else p.name
    for i, v in enumerate(w.vmas):
        names[2 + MAX_PAGES + i] = "" if v.name == f"vma{i}" else v.name
    for n, op in enumerate(o for o in sc.ops if o.kind == "vcpu_map"):
        h = op.args["handle"]
        names.append("" if h in ("", f"map{n}") else h)
    for x in names[2:]:
        if x and not _IDENT.match(x):
            raise EncodeError(f"name {x!r} is not printable without blanks")
    while len(names) > 2 and not names[-1]:
        names.pop()
    if not any(names):
        return body
    rec = _Writer()
    rec.byte(OP_NAMES)
    rec.varint(len(names))
    for i, x in enumerate(names):
        rec.string(x, MAX_TEXT if i < 2 else MAX_STR)
    return body[:1] + bytes(rec.out) + _checksum(bytes(rec.out) + body[1:]) + body[1:]


def _index(names: list[str], name: str, what: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise EncodeError(f"unknown {what} {name!r}") from None


def _write_field(out: _Writer, op: Op, f: F, vmas: list[str], handles: list[str]) -> None:
    v = op.args[f.name]
    t = f.type
    if f.name == "gpa":
        out.varint(v >> 12)
        out.varint(v & 0xFFF)
    elif t == "int":
        out.varint(v)
    elif t == "optint":
        out.optint(v)
    elif t == "optbool":
        out.varint({None: 0, False: 1, True: 2}[v])
    elif t == "enum":
        out.enum(v, f.choices)
    elif f.name == "vma":
        out.varint(_index(vmas, v, "vma"))
    elif op.kind == "vcpu_unmap" and f.name == "handle":
        if v not in handles:
            raise EncodeError(f"vcpu_unmap of unknown handle {v!r}")
        out.varint(len(handles) - 1 - handles[::-1].index(v))
    elif op.kind == "vcpu_map" and f.name == "handle":
        out.string("")                                  # in the names record
    else:
        out.string(v)


def dictionary_entries() -> list[bytes]:
    """Tokens for libFuzzer's ``-dict``: every opcode, and one complete default record of each
    world kind, so mutation from an empty corpus builds worlds quickly."""
    tokens = [bytes([c]) for c in (*_RECORDS, *OP_LAYOUTS)]
    tokens += [bytes([OP_VMA, 0, 4, 0, 0, 2, 0, 0, 0, 0]), bytes([OP_VMA, 0, 2, 0, 0, 2, 1, 0, 0, 0]),
               bytes([OP_SLOT, 0, 0, 0, 4, 0, 0, 0]), bytes([OP_PAGE, 0, 0, 0, 1])]
    return tokens


def libfuzzer_dictionary() -> str:
    """The dictionary in libFuzzer's format (one quoted, hex-escaped token per line)."""
    return "".join('"' + "".join(f"\\x{c:02x}" for c in t) + '"\n' for t in dictionary_entries())
