"""The known-divergence catalogue (``catalogue.yaml``): one entry per intended behaviour change.

Why data, not code: a reviewer checks each entry against its spec row (D1…D28) without reading
Python, and the fuzzer counts matches instead of reporting them.  Bugs are never entries; the
loader refuses the sketch's bug rows so that they always surface as findings.

Entry fields::

    id: D4-remapped-ref          # unique
    spec: D4                     # the §7 row
    title: one line
    oracle: diff                 # diff (two traces) or inv:<name> (one trace)
    a: [g1, g2]                  # generation families on one side (diff) ...
    b: [g3]                      # ... and on the other; for inv:* only `a` (the trace's family)
    ops: [lookup]                # op kinds it applies to
    when: {op.write: true, ctx.vma: remapped, a.api.result: pfn}
    explains: {api.held: {a: {empty: false}, b: {}}, api.accessed: "*"}   # or explains: "*"
    ambient: true                # optional: a change that accompanies a whole class of ops
                                 # (A/D bookkeeping, pins) rather than one scenario
    taints: false                # optional: the change leaves no state behind (a return value
                                 # only), so later differences at the gfn are not its consequences
    expect: false                # optional: the entry only excuses (see below); say why in a comment
    expect: {ctx.vma: normal}    # ... or asserts only under these further conditions (where the spec
                                 # fixes the values; the entry still excuses wherever `when` holds)

The catalogue cuts both ways: an entry is also an assertion.  When its conditions (``ops``,
``when``) hold for a pair of its generations, every ``explains`` field that states a value for
both sides (``{a: ERR_FAULT, b: pfn}``, not ``"*"``) must show those values; if the two sides
show the same value instead, the expected divergence is missing, and ``oracles.diff`` reports a
divergence of its own kind, ``missing:<entry id>`` ("expected D6 missing").  Wildcards assert
nothing: keep them for fields that genuinely vary, with a comment saying why.

Conditions: a scalar/list/dict is compared for equality; ``"*"`` matches anything;
``{in: [...]}``, ``{not: x}``, ``{empty: bool}``, ``{has: prefix}`` (a list with an element
starting with prefix), ``{prefix: text}``.  ``when`` keys: ``op.<arg>``, ``ctx.<key>``
(oracles.context), ``a.<field>`` / ``b.<field>`` (normalised observations of a side).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from kvmsim.backend import BackendError, get_backend
from kvmsim.scenario import OP_SCHEMAS
from kvmsim.yamlsrc import MAX_YAML_BYTES, Node, ScenarioError, parse, plain, read_text

from .normalise import NA

FAMILIES = ("g1", "g2", "g2s", "g2f", "g3", "host")
# Bug rows of the spec and the sketch's literal bugs: never catalogued as known.
BUG_IDS = frozenset({"S2", "S4", "S5", "S6", "S8", "D12b", "D22", "D23", "D24"})
_SPEC_ID = re.compile(r"^D([1-9]|1[0-9]|2[0-8])b?$")
# The bundled catalogue, package data of ``oracles`` (pyproject.toml).
DEFAULT_PATH = str(resources.files("oracles").joinpath("catalogue.yaml"))


class CatalogueError(ScenarioError):
    """A malformed catalogue; ``str()`` is ``FILE:LINE: problem``."""


@dataclass(frozen=True)
class Entry:
    id: str
    spec: str
    title: str
    oracle: str
    a: frozenset[str]
    b: frozenset[str]
    ops: frozenset[str]
    when: tuple[tuple[str, Any], ...]
    explains: tuple[tuple[str, Any], ...] | None      # None: every differing field
    ambient: bool = False                             # accompanies whole op classes (A/D bookkeeping, pins)
    taints: bool = True                               # the generations' states differ afterwards
    line: int = 0
    expects: tuple[tuple[str, Any, Any], ...] = ()     # (field, a-side value, b-side value) the entry asserts
    expect_when: tuple[tuple[str, Any], ...] = ()      # further conditions under which it asserts them


def family(backend: str) -> str:
    """``sim:g2s-literal:S4`` -> ``g2s``; ``sim:g3`` -> ``g3``; ``qemu:<kernel>`` -> the generation its
    backend reports (a cached kernel's, read from its KVM's symbols: a kernel added under a name of
    its own has no version), else by the release in the name: ``qemu:6.1`` -> ``g1``, ``qemu:7.2`` ->
    ``g3`` (≤ 6.12 legacy, ≥ 6.13 merged); anything else -> ``host``."""
    if backend.startswith("qemu:"):               # a real kernel in QEMU
        reported = _reported_generation(backend)
        if reported is not None:
            return reported
        m = re.match(r"qemu:(\d+)\.(\d+)", backend)
        return ("g3" if (int(m[1]), int(m[2])) >= (6, 13) else "g1") if m else "host"
    if not backend.startswith("sim:"):
        return "host"
    return _sim_family(backend)


@lru_cache(maxsize=256)
def _sim_family(backend: str) -> str:
    """``family`` of a ``sim:`` backend: a function of the name alone, asked per pair and trace of
    every comparison."""
    return backend[4:].split(":")[0].split("-")[0]


def _reported_generation(backend: str) -> str | None:
    """``Backend.generation()`` of a backend registered from outside the model (none if not here)."""
    try:
        reported = get_backend(backend).generation()
    except BackendError:
        return None
    return reported if reported in FAMILIES else None


def cond(c: Any, v: Any) -> bool:
    """Does observed value v satisfy condition c?  (An unobserved value, ``NA``, satisfies any.)"""
    test = compile_cond(c)
    return test is None or test(v)


Test = Callable[[Any], bool]


def compile_cond(c: Any) -> Test | None:
    """``cond(c, ·)`` as one function of the value, or None where ``c`` holds for every value ("*").
    Why: the catalogue asks its conditions about a million times per 70k fuzzed inputs, and
    interpreting a condition's shape on each ask cost more than the comparison it guards."""
    if c == "*":
        return None
    if isinstance(c, dict) and len(c) == 1:
        (k, x), = c.items()
        if k == "in":
            return lambda v: v is NA or v in x
        if k == "not":
            return lambda v: v is NA or v != x
        if k == "empty":
            return lambda v: v is NA or (not v) == x
        if k == "has":
            return lambda v: v is NA or (isinstance(v, list) and any(isinstance(e, str) and e.startswith(x)
                                                                      for e in v))
        if k == "prefix":
            return lambda v: v is NA or (isinstance(v, str) and v.startswith(x))
    return lambda v: v is NA or v == c


Conds = tuple[tuple[str, Test], ...]     # (key in the dict it reads, test of the value there)


def _never(v: Any) -> bool:
    return False


@dataclass(frozen=True)
class Conditions:
    """Conditions (``when``, ``expect``) compiled and grouped by what they read: the op's arguments
    and context (the same for both orientations of an entry, so asked once per op) and the two
    sides' observations.  ``holds_on_op(...) and holds_on_obs(...)`` is ``cond`` of every key."""
    op: Conds = ()
    ctx: Conds = ()
    a: Conds = ()
    b: Conds = ()

    @classmethod
    def of(cls, when: tuple[tuple[str, Any], ...]) -> Conditions:
        groups: dict[str, list[tuple[str, Test]]] = {"op": [], "ctx": [], "a": [], "b": []}
        for key, c in when:
            test = compile_cond(c)
            if key.startswith("op."):
                group, name = "op", key[3:]
            elif key.startswith(("ctx.", "a.", "b.")):
                group = key.split(".", 1)[0]
                name = key if group == "ctx" else key[2:]
            else:
                group, name, test = "op", key, _never        # an unknown source never holds
            if test is not None:
                groups[group].append((name, test))
        return cls(*(tuple(groups[g]) for g in ("op", "ctx", "a", "b")))

    def holds_on_op(self, args: dict[str, Any], ctx: dict[str, Any]) -> bool:
        return _hold(self.op, args) and _hold(self.ctx, ctx)

    def holds_on_obs(self, oa: dict[str, Any], ob: dict[str, Any]) -> bool:
        return _hold(self.a, oa) and _hold(self.b, ob)


def _hold(tests: Conds, values: dict[str, Any]) -> bool:
    """Every (name, test) holds on ``values[name]`` (a plain loop: this is the catalogue's hot path)."""
    for name, test in tests:
        if not test(values.get(name)):
            return False
    return True


@dataclass
class Match:
    """Which entry explained which field of one divergence."""
    explained: dict[str, str] = field(default_factory=dict)


FieldTests = tuple[Test | None, Test | None] | None     # an ``explains`` value: a- and b-side tests, None: "*"


@dataclass(frozen=True)
class Compiled:
    """One entry's conditions and ``explains`` compiled (``compile_cond``), made once per catalogue."""
    entry: Entry
    when: Conditions
    expect_when: Conditions
    explains: dict[str, FieldTests] | None                # None: every differing field
    taints_on_op: bool = False         # conditions on the op alone, and tainting: ``applies`` may name it
    expects: tuple[tuple[str, Test | None, Test | None], ...] = ()     # Entry.expects compiled

    @classmethod
    def of(cls, e: Entry) -> Compiled:
        explains = None if e.explains is None else {
            f: None if c == "*" else (compile_cond(c.get("a", "*")), compile_cond(c.get("b", "*")))
            for f, c in e.explains}
        taints_on_op = bool(e.when) and e.taints and not any(k.startswith(("a.", "b.")) for k, _ in e.when)
        expects = tuple((f, compile_cond(ca), compile_cond(cb)) for f, ca, cb in e.expects)
        return cls(e, Conditions.of(e.when), Conditions.of(e.expect_when), explains, taints_on_op, expects)

    def explains_field(self, f: str, oa: dict[str, Any], ob: dict[str, Any]) -> bool:
        """Does the entry state the values both sides show for field ``f`` (or every field)?"""
        if self.explains is None:
            return True
        if f not in self.explains:
            return False
        tests = self.explains[f]
        if tests is None:
            return True
        ta, tb = tests
        return (ta is None or ta(oa.get(f))) and (tb is None or tb(ob.get(f)))


Oriented = tuple[tuple[Compiled, tuple[int, ...]], ...]     # entries with the orientations they have for a pair


@dataclass(frozen=True)
class AtOp:
    """What the catalogue says about one op of one pair before looking at observations: the entries
    whose conditions on the op and its context hold (``explain``), those of them that assert values
    there (``missing``: ``expect`` conditions on the op hold too), and the entry whose conditions
    taint the op's gfn (``applies``).  Why one object: ``explain``, ``missing`` and ``applies`` ask the
    same op-level conditions, and the answer is a function of the values those conditions read."""
    holding: Oriented
    asserting: Oriented
    taint: str | None

    @staticmethod
    def of(oriented: Oriented, args: dict[str, Any], ctx: dict[str, Any]) -> AtOp:
        holding = tuple((c, sides) for c, sides in oriented if c.when.holds_on_op(args, ctx))
        asserting = tuple((c, sides) for c, sides in holding
                          if c.entry.expects and c.expect_when.holds_on_op(args, ctx))
        taint = next((c.entry.id for c, _ in holding if c.taints_on_op), None)
        return AtOp(holding, asserting, taint)


NOTHING = AtOp((), (), None)


@dataclass(frozen=True, slots=True)
class Asks:
    """For one op kind and pair: could some entry assert a divergence there (``expecting``), taint
    the op's gfn on its op conditions alone (``tainting``), or apply at all (``any``: else ``at`` is
    ``NOTHING`` whatever the op's context).  Why: a comparison then works out an op's context
    (oracles.context) only where some entry could read it."""
    expecting: bool
    tainting: bool
    any: bool
# Op views remembered per catalogue (``Catalogue.at``); a bound on memory, not a tuning knob: the
# values op conditions read (flags, kinds, states) take few distinct combinations.
AT_MEMO_SIZE = 1 << 14


@dataclass(frozen=True)
class _Reads:
    """The entries of one (oracle, op kind, pair) with their orientations, and every op argument and
    context key their op-level conditions read (the memo key of ``Catalogue.at``)."""
    oriented: Oriented
    op_names: tuple[str, ...]
    ctx_names: tuple[str, ...]

    @classmethod
    def of(cls, oriented: Oriented) -> _Reads:
        op_names: dict[str, None] = {}
        ctx_names: dict[str, None] = {}
        for c, _ in oriented:
            for conds in (c.when, c.expect_when):
                op_names.update((n, None) for n, _ in conds.op)
                ctx_names.update((n, None) for n, _ in conds.ctx)
        return cls(oriented, tuple(op_names), tuple(ctx_names))


class Catalogue:
    def __init__(self, entries: list[Entry], path: str = "") -> None:
        self.entries = entries
        self.path = path
        self.by_id = {e.id: e for e in entries}
        compiled = {e.id: Compiled.of(e) for e in entries}
        self._by_op: dict[tuple[str, str], list[Compiled]] = {}      # (oracle, op kind) -> entries, in order
        for e in entries:
            for op in e.ops:
                self._by_op.setdefault((e.oracle, op), []).append(compiled[e.id])
        # Per (oracle, op kind, families): the entries that can apply with their orientations, in
        # order, and what their op-level conditions read.  Why: every compared op asks, and the
        # answer depends on those three alone (entries are frozen), so it is worked out once.
        self._reads_memo: dict[tuple[str, str, tuple[str, str]], _Reads] = {}
        self._at_memo: dict[tuple[Any, ...], AtOp] = {}
        self._asks_memo: dict[tuple[str, tuple[str, str]], Asks] = {}

    def _reads(self, oracle: str, op_kind: str, fams: tuple[str, str]) -> _Reads:
        """The entries of ``oracle`` and ``op_kind`` that have an orientation for ``fams`` (none when
        both sides are one family: a family never diverges from itself by intent, and the literal
        sketch's differences are bugs)."""
        key = (oracle, op_kind, fams)
        got = self._reads_memo.get(key)
        if got is None:
            oriented = () if fams[0] == fams[1] else tuple(
                (c, tuple(sides)) for c in self._by_op.get((oracle, op_kind), ())
                if (sides := self._orientations(c.entry, fams)))
            got = self._reads_memo[key] = _Reads.of(oriented)
        return got

    def at(self, oracle: str, op_kind: str, fams: tuple[str, str], args: dict[str, Any], ctx: dict[str, Any]) -> AtOp:
        """The catalogue's view of one op of a pair (``AtOp``), remembered by the values its entries'
        op conditions read: a compiled condition is a function of the value alone, and values equal
        as dict keys satisfy the same conditions (they compare equal and are of one kind)."""
        reads = self._reads(oracle, op_kind, fams)
        if not reads.oriented:
            return NOTHING
        key = (oracle, op_kind, fams, tuple(map(args.get, reads.op_names)), tuple(map(ctx.get, reads.ctx_names)))
        try:
            got = self._at_memo.get(key)
        except TypeError:                          # an unhashable value: work it out
            return AtOp.of(reads.oriented, args, ctx)
        if got is None:
            if len(self._at_memo) >= AT_MEMO_SIZE:
                self._at_memo.clear()
            got = self._at_memo[key] = AtOp.of(reads.oriented, args, ctx)
        return got

    def explain(self, oracle: str, op_kind: str, fams: tuple[str, str], fields: list[str],
                obs: tuple[dict[str, Any], dict[str, Any]], args: dict[str, Any],
                ctx: dict[str, Any]) -> dict[str, str]:
        """field -> entry id for every differing field some applicable entry explains."""
        return self.explain_at(self.at(oracle, op_kind, fams, args, ctx), fields, obs)

    def explain_at(self, at: AtOp, fields: list[str], obs: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, str]:
        """``explain`` for the op ``at`` describes."""
        out: dict[str, str] = {}
        for c, sides in at.holding:
            for side in sides:
                oa, ob = obs[side], obs[1 - side]
                if c.when.holds_on_obs(oa, ob):
                    self._explain_fields(c, fields, oa, ob, out)
        return out

    @staticmethod
    def _explain_fields(c: Compiled, fields: list[str], oa: dict[str, Any], ob: dict[str, Any],
                        out: dict[str, str]) -> None:
        """Credit the entry with each field not yet explained whose values it states (or all, for '*')."""
        for f in fields:
            if f not in out and c.explains_field(f, oa, ob):
                out[f] = c.entry.id

    def asks(self, op_kind: str, fams: tuple[str, str]) -> Asks:
        """What a diff of this op kind and pair can ask of the op's context (``Asks``)."""
        got = self._asks_memo.get((op_kind, fams))
        if got is None:
            oriented = self._reads("diff", op_kind, fams).oriented
            got = self._asks_memo[(op_kind, fams)] = Asks(
                any(c.entry.expects for c, _ in oriented), any(c.taints_on_op for c, _ in oriented), bool(oriented))
        return got

    def expecting(self, op_kind: str, fams: tuple[str, str]) -> bool:
        """Could some entry assert a divergence for this op and pair (cheap pre-check)?"""
        return self.asks(op_kind, fams).expecting

    def missing(self, op_kind: str, fams: tuple[str, str], obs: tuple[dict[str, Any], dict[str, Any]],
                args: dict[str, Any], ctx: dict[str, Any]) -> list[tuple[Entry, str]]:
        """The catalogue cuts both ways: (entry, field) for every entry whose conditions hold here
        and that states different values for a field on the two sides, where the two sides show
        the same value instead (the expected divergence did not appear)."""
        return self.missing_at(self.at("diff", op_kind, fams, args, ctx), obs)

    @staticmethod
    def missing_at(at: AtOp, obs: tuple[dict[str, Any], dict[str, Any]]) -> list[tuple[Entry, str]]:
        """``missing`` for the op ``at`` describes."""
        out: list[tuple[Entry, str]] = []
        for c, sides in at.asserting:
            for side in sides:
                oa, ob = obs[side], obs[1 - side]
                if not c.when.holds_on_obs(oa, ob) or not c.expect_when.holds_on_obs(oa, ob):
                    continue
                for f, ta, tb in c.expects:
                    va, vb = oa.get(f, NA), ob.get(f, NA)
                    if va is NA or vb is NA or va != vb:
                        continue                  # not observed at this level, or it did differ
                    if not ((ta is None or ta(va)) and (tb is None or tb(vb))):
                        out.append((c.entry, f))
                break
        return out

    def applies(self, op_kind: str, fams: tuple[str, str], args: dict[str, Any], ctx: dict[str, Any]) -> str | None:
        """An entry whose conditions on the op and its context (not on observations) hold here:
        the two generations behave differently at this gfn even when this op's observations agree
        (e.g. a read vs a write fault-in), so later differences there are its consequences."""
        return self.at("diff", op_kind, fams, args, ctx).taint

    @staticmethod
    def _orientations(e: Entry, fams: tuple[str, str]) -> list[int]:
        left, right = fams
        sides = []
        if left in e.a and (right in e.b or not e.b):
            sides.append(0)
        if e.b and right in e.a and left in e.b:
            sides.append(1)
        return sides


_COND_TYPES = {"in": list, "empty": bool, "has": str, "prefix": str}


def _bad_cond(c: Any) -> str | None:
    """What is wrong with a condition's shape (``cond`` would fail on it at comparison time)."""
    if isinstance(c, dict) and len(c) == 1:
        (k, x), = c.items()
        want = _COND_TYPES.get(k)
        if want is not None and not isinstance(x, want):
            return f"{{{k}: …}} needs a {want.__name__}, got {type(x).__name__}"
    return None


_ENTRY_FIELDS = {"id", "spec", "title", "oracle", "a", "b", "ops", "when", "explains", "note", "ambient", "taints",
                 "expect"}
_Err = Callable[[str, int], CatalogueError]


def load_catalogue(path: str = DEFAULT_PATH) -> Catalogue:
    """Read and check the catalogue; raises CatalogueError naming FILE:LINE."""
    try:
        root = parse(read_text(path, MAX_YAML_BYTES, "catalogue"), path)
    except ScenarioError as e:
        raise CatalogueError(e.problem, e.line, path) from None

    def err(msg: str, line: int) -> CatalogueError:
        return CatalogueError(msg, line, path)

    if not isinstance(root.value, dict) or "entries" not in root.value:
        raise err("the catalogue must be a mapping with an 'entries' list", root.line)
    items = root.value["entries"]
    if not isinstance(items.value, list):
        raise err("'entries' must be a list", items.line)
    entries: list[Entry] = []
    seen: set[str] = set()
    for n in items.value:
        entries.append(_entry(n, seen, err))
    return Catalogue(entries, path)


def _entry(n: Node, seen: set[str], err: _Err) -> Entry:
    """One checked entry; the checks run in the order the fields are documented."""
    m = _entry_fields(n, err)
    eid = str(m["id"].value)
    if eid in seen:
        raise err(f"duplicate entry id {eid!r}", m["id"].line)
    seen.add(eid)
    spec = _spec(m, eid, err)
    oracle = str(m["oracle"].value) if "oracle" in m else "diff"
    if oracle != "diff" and not oracle.startswith("inv:"):
        raise err(f"entry {eid}: oracle must be 'diff' or 'inv:<name>'", m["oracle"].line)
    fams = _families(m, eid, err)
    if oracle == "diff" and not fams[1]:
        raise err(f"entry {eid}: a diff entry needs both sides 'a' and 'b'", n.line)
    ops = _ops(m, eid, err)
    when = _when(m, eid, err)
    if "explains" not in m:
        raise err(f"entry {eid}: needs 'explains' (a mapping, or '*')", n.line)
    explains = _explains(m, eid, err)
    expect = _expect(m, eid, err)
    expects = tuple((f, c["a"], c["b"]) for f, c in (explains or ()) if expect is not False and oracle == "diff"
                    and isinstance(c, dict) and "a" in c and "b" in c and "*" not in (c["a"], c["b"]))
    expect_when = tuple(expect.items()) if isinstance(expect, dict) else ()
    return Entry(eid, spec, str(m["title"].value), oracle, fams[0], fams[1], frozenset(ops),
                 tuple(when.items()), explains, bool(m["ambient"].value) if "ambient" in m else False,
                 bool(m["taints"].value) if "taints" in m else True, n.line, expects, expect_when)


def _entry_fields(n: Node, err: _Err) -> dict[str, Node]:
    if not isinstance(n.value, dict):
        raise err("each entry must be a mapping", n.line)
    m = n.value
    for k, v in m.items():
        if k not in _ENTRY_FIELDS:
            raise err(f"unknown field {k!r} in entry (expected one of: {', '.join(sorted(_ENTRY_FIELDS))})", v.line)
    for req in ("id", "spec", "title", "a", "ops"):
        if req not in m:
            raise err(f"entry needs {req!r}", n.line)
    return m


def _spec(m: dict[str, Node], eid: str, err: _Err) -> str:
    spec = str(m["spec"].value)
    if spec in BUG_IDS:
        raise err(f"entry {eid}: {spec} is a bug, never a known divergence", m["spec"].line)
    if not _SPEC_ID.match(spec):
        raise err(f"entry {eid}: spec must be a §7 row D1..D28, got {spec!r}", m["spec"].line)
    return spec


def _families(m: dict[str, Node], eid: str, err: _Err) -> list[frozenset[str]]:
    fams: list[frozenset[str]] = []
    for side in ("a", "b"):
        vals = plain(m[side]) if side in m else []
        if not isinstance(vals, list) or any(v not in FAMILIES for v in vals):
            raise err(f"entry {eid}: {side} must be a list of {', '.join(FAMILIES)}", m[side].line)
        fams.append(frozenset(vals))
    return fams


def _ops(m: dict[str, Node], eid: str, err: _Err) -> list[str]:
    ops = plain(m["ops"])
    if ops == "*":
        ops = list(OP_SCHEMAS)
    if not isinstance(ops, list) or any(not isinstance(o, str) or o not in OP_SCHEMAS for o in ops):
        raise err(f"entry {eid}: ops must be a list of op kinds", m["ops"].line)
    return ops


def _when(m: dict[str, Node], eid: str, err: _Err) -> dict[str, Any]:
    when = plain(m["when"]) if "when" in m else {}
    if not isinstance(when, dict) or any(not str(k).startswith(("op.", "ctx.", "a.", "b.")) for k in when):
        raise err(f"entry {eid}: when keys must start with op., ctx., a. or b.", m["when"].line)
    for k, c in when.items():
        if (bad := _bad_cond(c)) is not None:
            raise err(f"entry {eid}: when.{k}: {bad}", m["when"].line)
    return when


def _explains(m: dict[str, Node], eid: str, err: _Err) -> tuple[tuple[str, Any], ...] | None:
    """None for ``explains: '*'`` (every differing field)."""
    ex = plain(m["explains"])
    if ex == "*":
        return None
    line = m["explains"].line
    if not isinstance(ex, dict):
        raise err(f"entry {eid}: explains must be a mapping of field to condition, or '*'", line)
    for f, c in ex.items():
        if not (f == "events" or str(f).startswith(("api.", "vmm."))):
            raise err(f"entry {eid}: unknown field {f!r} in explains", line)
        if c != "*" and not (isinstance(c, dict) and set(c) <= {"a", "b"}):
            raise err(f"entry {eid}: explains.{f} must be '*' or {{a: cond, b: cond}}", line)
        for side, sc in (c.items() if isinstance(c, dict) else ()):
            if (bad := _bad_cond(sc)) is not None:
                raise err(f"entry {eid}: explains.{f}.{side}: {bad}", line)
    return tuple(ex.items())


def _expect(m: dict[str, Node], eid: str, err: _Err) -> bool | dict[str, Any]:
    expect = plain(m["expect"]) if "expect" in m else True
    if not isinstance(expect, (bool, dict)) or (isinstance(expect, dict) and any(
            not k.startswith(("op.", "ctx.", "a.", "b.")) for k in expect)):
        raise err(f"entry {eid}: expect must be true, false, or a mapping of further conditions "
                  "(op., ctx., a., b.)", m["expect"].line)
    return expect
