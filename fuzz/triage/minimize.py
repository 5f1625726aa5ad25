"""Minimisation that keeps the signature: op-level delta debugging on the decoded scenario, then
byte-level shrinking of its encoded form.

Why both: the scenario level removes whole ops, memslots, VMAs, pages and flag settings that a
byte mutator would only hit by chance, and every candidate is a valid scenario; the byte level
then drops what the scenario level cannot express (e.g. a world the default world can replace).
Every step re-runs the backends and keeps a candidate only if the *same* signature, with the same
known/unknown status, still shows.  Sim backends are deterministic, so one run per check.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

from fuzz.inputs.codec import EncodeError, decode, encode
from fuzz.judging.judge import Judge
from kvmsim.scenario import OP_SCHEMAS, Op, PteSpec, Scenario, VmaSpec, WorldSpec, validate
from kvmsim.yamlsrc import ScenarioError

Predicate = Callable[[Scenario], bool]
MAX_CHECKS = 4000                     # a bound per minimisation (each check: one run per backend)


@dataclass
class MinResult:
    scenario: Scenario
    data: bytes                      # empty if the scenario exceeds the codec's bounds
    signature: str
    ops_before: int
    ops_after: int
    bytes_before: int
    bytes_after: int
    checks: int = 0
    steps: list[str] = field(default_factory=list)


def shows_signature(judge: Judge, signature: str, known: bool = False) -> Predicate:
    """Does a candidate still show ``signature`` (with the same known/unknown status)?"""
    def pred(sc: Scenario) -> bool:
        try:
            validate(sc)
        except ScenarioError:
            return False
        j = judge.judge(sc)
        return j.signatures.get(signature) is known
    return pred


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during minimisation; ``result`` is the smallest input found until then."""

    def __init__(self, result: MinResult) -> None:
        super().__init__()
        self.result = result


class _Budget:
    """Counts checks; after ``limit`` checks, or a Ctrl-C, every candidate is refused, so the
    passes end at once with the smallest input found so far."""

    def __init__(self, pred: Predicate, limit: int, on_check: Callable[[int], None] | None = None) -> None:
        self.pred, self.limit, self.used, self.on_check = pred, limit, 0, on_check
        self.interrupted = False

    def __call__(self, sc: Scenario) -> bool:
        if self.used >= self.limit or self.interrupted:
            return False
        self.used += 1
        if self.on_check is not None:
            self.on_check(self.used)
        try:
            return self.pred(sc)
        except KeyboardInterrupt:
            self.interrupted = True
            return False


def minimize(sc: Scenario, judge: Judge, signature: str, known: bool = False, data: bytes | None = None,
             limit: int = MAX_CHECKS, on_check: Callable[[int], None] | None = None) -> MinResult:
    """The smallest scenario (then byte string) found that still shows ``signature``.
    Raises ValueError if the input itself does not show it."""
    pred = _Budget(shows_signature(judge, signature, known), limit, on_check)     # on_check: progress
    sc = _clean(sc)
    if not pred(sc):
        raise ValueError(f"the input does not show {signature!r}")
    try:
        before = len(data) if data is not None else len(encode(sc))
    except EncodeError:
        before = 0
    ops_before = len(sc.ops)
    steps: list[str] = []
    cur = sc
    changed = True
    while changed and pred.used < limit:
        changed = False
        for name, step in _STEPS:
            nxt = step(cur, pred)
            if nxt is not None:
                cur, changed = nxt, True
                steps.append(name)
    try:
        best = encode(cur)
    except EncodeError:                 # larger than the codec's bounds even now: no byte form
        return _done(pred, MinResult(cur, b"", signature, ops_before, len(cur.ops), before, 0, pred.used, steps))
    limit_size = _size(cur)
    best = shrink_bytes(best, lambda b: _not_larger(_size(decode(b)), limit_size) and pred(decode(b)))
    final = decode(best)
    return _done(pred, MinResult(final, best, signature, ops_before, len(final.ops), before, len(best), pred.used,
                                 steps))


def _done(pred: _Budget, res: MinResult) -> MinResult:
    if pred.interrupted:
        raise Interrupted(res)
    return res


def _size(sc: Scenario) -> tuple[int, int]:
    """(ops, world items): a byte candidate may not grow either, so the bytes never trade a small
    world for the codec's larger default world (the YAML reproducer stays readable)."""
    w = sc.world
    items = len(w.pages) + len(w.vmas) + len(w.memslots) + sum(len(v.page_states) + len(v.ptes) for v in w.vmas)
    return len(sc.ops), items


def _not_larger(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[0] and a[1] <= b[1]


def _clean(sc: Scenario) -> Scenario:
    return Scenario(copy.deepcopy(sc.world), [Op(o.kind, dict(o.args)) for o in sc.ops])


def _copy(sc: Scenario) -> Scenario:
    """A deep copy (``copy.deepcopy`` cannot copy ``Op``: its ``__getattr__`` reads ``args``)."""
    return Scenario(copy.deepcopy(sc.world), [Op(o.kind, dict(o.args)) for o in sc.ops], sc.name,
                    sc.description, dict(sc.tags), sc.file)


# --- scenario-level steps ------------------------------------------------------------------------
# Each takes the current scenario and the predicate and returns a smaller scenario that still
# shows the signature, or None.

def _ddmin_ops(sc: Scenario, pred: Predicate) -> Scenario | None:
    """Classic chunked removal: halves, quarters, ... single ops."""
    ops = list(sc.ops)
    improved = False
    n = max(1, len(ops) // 2)
    while ops and n >= 1:
        i, removed = 0, False
        while i < len(ops):
            cand = _with(sc, ops=ops[:i] + ops[i + n:])
            if pred(cand):
                ops, removed, improved = cand.ops, True, True
            else:
                i += n
        if not removed:
            n //= 2
    return _with(sc, ops=ops) if improved else None


def _first_success(cands: Iterator[Scenario], pred: Predicate) -> Scenario | None:
    for c in cands:
        if pred(c):
            return c
    return None


def _greedy(gen: Callable[[Scenario], Iterator[Scenario]]) -> Callable[[Scenario, Predicate], Scenario | None]:
    """Apply the first successful candidate of ``gen`` repeatedly until none succeeds."""
    def step(sc: Scenario, pred: Predicate) -> Scenario | None:
        out = None
        while True:
            nxt = _first_success(gen(sc), pred)
            if nxt is None:
                return out
            sc = out = nxt
    return step


def _drop_world_items(sc: Scenario) -> Iterator[Scenario]:
    w = sc.world
    for i in range(len(w.memslots)):
        yield _with(sc, memslots=w.memslots[:i] + w.memslots[i + 1:])
    for i, v in enumerate(w.vmas):
        vmas = w.vmas[:i] + w.vmas[i + 1:]
        slots = [s for s in w.memslots if s.vma != v.name]
        ops = [o for o in sc.ops if o.args.get("vma") != v.name]
        yield _with(sc, vmas=vmas, memslots=slots, ops=ops)
    for i, p in enumerate(w.pages):
        vmas = [_unref_page(v, p.name) for v in w.vmas]
        yield _with(sc, pages=w.pages[:i] + w.pages[i + 1:], vmas=vmas)
    for i, v in enumerate(w.vmas):
        for k in sorted(v.page_states):
            yield _with_vma(sc, i, page_states={j: x for j, x in v.page_states.items() if j != k})
        for k in sorted(v.ptes):
            yield _with_vma(sc, i, ptes={j: x for j, x in v.ptes.items() if j != k})


def _unref_page(v: VmaSpec, name: str) -> VmaSpec:
    v = copy.deepcopy(v)
    v.page_states = {k: (st, None if p == name else p) for k, (st, p) in v.page_states.items()}
    v.ptes = {k: (PteSpec(None, x.present, x.writable, x.handler) if x.page == name else x) for k, x in v.ptes.items()}
    return v


_WORLD_DEFAULTS = WorldSpec()
_VMA_DEFAULTS = {"start": None, "prot": "rw", "shared": False, "remap": "none", "host_level": "4k",
                 "state": "unpopulated", "frames": "none"}


def _simplify_world(sc: Scenario) -> Iterator[Scenario]:
    """Each world setting back to its default, in order: globals, VMAs, memslots, pages."""
    yield from _simplify_world_globals(sc)
    for i in range(len(sc.world.vmas)):
        yield from _simplify_vma(sc, i)
    for i in range(len(sc.world.memslots)):
        yield from _simplify_memslot(sc, i)
    yield from _simplify_pages(sc)


def _simplify_world_globals(sc: Scenario) -> Iterator[Scenario]:
    for f in fields(WorldSpec):
        if f.name in ("pages", "vmas", "memslots"):
            continue
        default = getattr(_WORLD_DEFAULTS, f.name)
        if getattr(sc.world, f.name) != default:
            c = _copy(sc)
            setattr(c.world, f.name, default)
            yield c


def _simplify_vma(sc: Scenario, i: int) -> Iterator[Scenario]:
    """Settings to defaults, the size down to what memslots and per-page records use, page
    states without their pfns, PTEs to plain present+writable."""
    v = sc.world.vmas[i]
    for key, default in _VMA_DEFAULTS.items():
        if getattr(v, key) != default:
            yield _with_vma(sc, i, **{key: default})
    need = max([s.offset + s.pages for s in sc.world.memslots if s.vma == v.name]
               + [n + 1 for n in (*v.page_states, *v.ptes)] + [1])
    if need < v.pages:
        yield _with_vma(sc, i, pages=need)
    for n, (state, pfn) in v.page_states.items():
        if pfn is not None:
            yield _with_vma(sc, i, page_states={**v.page_states, n: (state, None)})
    for n, pte in v.ptes.items():
        if not pte.present or not pte.writable or pte.handler != "populates":
            yield _with_vma(sc, i, ptes={**v.ptes, n: PteSpec(pte.page)})


def _simplify_memslot(sc: Scenario, i: int) -> Iterator[Scenario]:
    slot = sc.world.memslots[i]
    for flag in ("readonly", "log_dirty"):
        if getattr(slot, flag):
            c = _copy(sc)
            setattr(c.world.memslots[i], flag, False)
            yield c
    if slot.pages > 1:
        c = _copy(sc)
        c.world.memslots[i].pages = 1
        yield c


def _simplify_pages(sc: Scenario) -> Iterator[Scenario]:
    for i, page in enumerate(sc.world.pages):
        if page.pfn is not None or not page.memremap_ok:
            c = _copy(sc)
            c.world.pages[i].pfn, c.world.pages[i].memremap_ok = None, True
            yield c


def _simplify_ops(sc: Scenario) -> Iterator[Scenario]:
    """Each optional field back to its default; ints towards 0."""
    for i, op in enumerate(sc.ops):
        for f in OP_SCHEMAS[op.kind]:
            v = op.args.get(f.name)
            if not f.required and v != f.default:
                yield _with_op(sc, i, f.name, f.default)
            if f.name in ("value", "count") and isinstance(v, int) and v > 1:
                yield _with_op(sc, i, f.name, 1 if f.name == "count" else 0)


def _with_op(sc: Scenario, i: int, key: str, value: object) -> Scenario:
    ops = list(sc.ops)
    ops[i] = Op(ops[i].kind, {**ops[i].args, key: value})
    return _with(sc, ops=ops)


def _with(sc: Scenario, ops: list[Op] | None = None, **world: object) -> Scenario:
    w = copy.copy(sc.world)
    for k, v in world.items():
        setattr(w, k, v)
    return Scenario(w, list(sc.ops if ops is None else ops), sc.name, sc.description, dict(sc.tags), sc.file)


def _with_vma(sc: Scenario, i: int, **changes: object) -> Scenario:
    vmas = list(sc.world.vmas)
    v = copy.deepcopy(vmas[i])
    for k, x in changes.items():
        setattr(v, k, x)
    vmas[i] = v
    return _with(sc, vmas=vmas)


_STEPS: list[tuple[str, Callable[[Scenario, Predicate], Scenario | None]]] = [
    ("drop ops", _ddmin_ops),
    ("drop world items", _greedy(_drop_world_items)),
    ("simplify world", _greedy(_simplify_world)),
    ("simplify ops", _greedy(_simplify_ops)),
]


# --- byte level -------------------------------------------------------------------------------------

def shrink_bytes(data: bytes, pred: Callable[[bytes], bool]) -> bytes:
    """Remove byte runs (halving sizes, as ddmin) while ``pred`` holds.  Byte 0 (the codec
    version) is kept."""
    best = data
    n = max(1, (len(best) - 1) // 2)
    while n >= 1:
        i, removed = 1, False
        while i < len(best):
            cand = best[:i] + best[i + n:]
            if pred(cand):
                best, removed = cand, True
            else:
                i += n
        if not removed:
            n //= 2
    return best


def minimised_size(data: bytes, pair: tuple[str, str], signature: str) -> int:
    """The size ``data`` shrinks to keeping ``signature`` on ``pair`` (a campaign's findings table)."""
    return minimize(decode(data), Judge([pair]), signature, data=data, limit=300).bytes_after
