"""A conformance sweep: random VMM-level scenarios limited to what this host can realise, run on
a model backend and on the host, with differences grouped by a short signature.

This is not the fuzzer (``fuzz/``) nor the oracle engine (``oracles/``); it is the quickest way to
ask "where does the model disagree with this kernel?" and to keep asking it in a test.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvmsim.scenario import Scenario, ScenarioError, loads_scenario

from .conformance import Difference, check
from .probe import probe

A, B, C, NOSLOT = 0x100, 0x200, 0x300, 0x500


def _random_memory(rng: random.Random, have: dict[str, Any],
                   states: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The VMAs and memslots: a normal VMA always, a pfnmap and a 2 MiB hugetlb one where the host
    can back them.  ``states`` gains ``resident`` when the normal VMA is shared."""
    shared = rng.random() < 0.4
    if shared:
        states.append("resident")
    a: dict[str, Any] = {"name": "a", "pages": 4, "prot": rng.choice(["rw", "rw", "r", "none"]), "shared": shared,
                         "state": rng.choice(states),
                         "page_states": {i: rng.choice(states) for i in rng.sample(range(4), rng.randint(0, 3))}}
    vmas = [a]
    slots = [{"id": 0, "gfn": A, "pages": 4, "vma": "a", "readonly": rng.random() < 0.2,
              "log_dirty": rng.random() < 0.5}]
    if have.get("pfnmap_perf") is None:
        b: dict[str, Any] = {"name": "b", "pages": 2, "remap": "pfnmap", "prot": rng.choice(["rw", "rw", "r"])}
        if b["prot"] == "rw" and rng.random() < 0.5:
            b["ptes"] = {1: {"writable": False}}
        vmas.append(b)
        slots.append({"id": 1, "gfn": B, "pages": 2, "vma": "b", "readonly": rng.random() < 0.2})
    if have.get("hugetlb_2m") is None and rng.random() < 0.3:
        vmas.append({"name": "c", "pages": 512, "host_level": "2m", "state": rng.choice(["present_rw", "unpopulated"])})
        slots.append({"id": 2, "gfn": 0x400, "pages": 512, "vma": "c", "log_dirty": rng.random() < 0.5})
    return vmas, slots


@dataclass(frozen=True)
class _Draw:
    """What one random op is drawn from (after its kind's draw and the VMA's)."""
    rng: random.Random
    vma: str
    gpas: list[int]
    states: list[str]
    madvise_all: bool


# (upper bound of the kind's draw, the op); past the last bound: munmap of the drawn VMA
_OPS: list[tuple[float, Callable[[_Draw], dict[str, Any]]]] = [
    (0.55, lambda d: {"access": {"gpa": d.rng.choice(d.gpas) + 8 * d.rng.randint(0, 3),
                                 "write": d.rng.random() < 0.5, "value": d.rng.randint(1, 255)}}),
    (0.62, lambda d: {"madvise": {"vma": d.vma if d.madvise_all else "a", "page": 0, "count": d.rng.randint(1, 4)}}),
    (0.68, lambda d: {"mprotect": {"vma": d.vma, "prot": d.rng.choice(["rw", "r", "none"])}}),
    (0.72, lambda d: {"page_state": {"vma": "a", "page": d.rng.randint(0, 3), "state": d.rng.choice(d.states)}}),
    (0.76, lambda d: {"signal": {"kind": "fatal" if d.rng.random() < 0.03 else "pending"}}),
    (0.82, lambda d: {"get_dirty_log": {"slot": 0}}),
    (0.86, lambda d: {"memslot_move": {"slot": 0, "gfn": d.rng.choice([A, C])}}),
    (0.90, lambda d: {"memslot_flags": {"slot": 0, "log_dirty": d.rng.random() < 0.5}}),
    (0.94, lambda d: {"memslot_create": {"slot": 7, "gfn": 0x600, "pages": 2, "vma": "a", "offset": 2,
                                         "readonly": d.rng.random() < 0.3}}),
    (0.97, lambda d: {"memslot_delete": {"slot": 0}}),
]


def random_scenario(rng: random.Random, n_ops: int = 12, madvise_all: bool = True) -> Scenario | None:
    """One random scenario over three VMAs (normal, pfnmap, maybe hugetlb), or None if invalid."""
    have = probe().backings
    states = ["present_rw", "present_ro", "unpopulated"] + (["needs_io"] if have.get("userfaultfd") is None else [])
    vmas, slots = _random_memory(rng, have, states)
    gpas = [A << 12, (A + 1) << 12, (A + 3) << 12, B << 12, (B + 1) << 12, NOSLOT << 12, C << 12]
    if any(v["name"] == "c" for v in vmas):
        gpas += [0x400000, 0x410000]
    ops: list[dict[str, Any]] = []
    for _ in range(n_ops):
        r = rng.random()
        d = _Draw(rng, rng.choice(vmas)["name"], gpas, states, madvise_all)
        ops.append(next((make(d) for limit, make in _OPS if r < limit), {"munmap": {"vma": d.vma}}))
    world: dict[str, Any] = {"vmas": vmas, "memslots": slots}
    if rng.random() < 0.1:
        world["signal"] = "pending"
    text = yaml.safe_dump({"version": 1, "world": world, "ops": ops})
    try:
        return loads_scenario(text, "<sweep>")
    except ScenarioError:
        return None


def signature(sc: Scenario, d: Difference) -> str:
    op = sc.ops[d.index]
    what = op.kind
    if op.kind == "access":
        what += "/write" if op.args["write"] else "/read"
    return f"{what}: {d.field} model={_short(d.left)} host={_short(d.right)}"


def _short(v: Any) -> str:
    """A value for a signature: MMIO records reduced to their direction, no data or addresses."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {v[k]!r}" for k in ("is_write",) if k in v) + "}"
    return repr(v)


@dataclass
class SweepResult:
    runs: int = 0
    compared: int = 0
    groups: Counter = field(default_factory=Counter)
    examples: dict[str, Scenario] = field(default_factory=dict)


def sweep(n: int, seed: int, model: str = "sim:g3", host: Any = None, all_diffs: bool = False,
          madvise_all: bool = True, on_run: Any = None) -> SweepResult:
    """``madvise_all=False`` keeps madvise to the normal VMA (hides the known pfnmap/hugetlb case);
    ``on_run()`` is called after each scenario (progress)."""
    from kvmsim.backend import get_backend
    rng = random.Random(seed)
    m = get_backend(model)
    h = host if host is not None else get_backend("host")
    out = SweepResult()
    while out.runs < n:
        sc = random_scenario(rng, madvise_all=madvise_all)
        if sc is None:
            continue
        out.runs += 1
        rep = check(sc, m, h)[0]
        out.compared += rep.compared
        for d in rep.unexplained:
            sig = signature(sc, d)
            out.groups[sig] += 1
            out.examples.setdefault(sig, sc)
            if not all_diffs:
                break                          # the first difference of a run; later ones may follow from it
        if on_run is not None:
            on_run()
    return out
