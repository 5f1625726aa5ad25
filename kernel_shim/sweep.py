"""A conformance sweep: random VMM-level scenarios limited to what this host can realise, run on
a model backend and on the host, with differences grouped by a short signature.

This is not the fuzzer (``fuzz/``) nor the oracle engine (``oracles/``); it is the quickest way to
ask "where does the model disagree with this kernel?" and to keep asking it in a test.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvmsim.scenario import Scenario, ScenarioError, loads_scenario

from .conformance import Difference, check
from .probe import probe

A, B, C, NOSLOT = 0x100, 0x200, 0x300, 0x500


def random_scenario(rng: random.Random, n_ops: int = 12, madvise_all: bool = True) -> Scenario | None:
    """One random scenario over three VMAs (normal, pfnmap, maybe hugetlb), or None if invalid."""
    have = probe().backings
    states = ["present_rw", "present_ro", "unpopulated"] + (["needs_io"] if have.get("userfaultfd") is None else [])
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
    gpas = [A << 12, (A + 1) << 12, (A + 3) << 12, B << 12, (B + 1) << 12, NOSLOT << 12, C << 12]
    if any(v["name"] == "c" for v in vmas):
        gpas += [0x400000, 0x410000]
    ops: list[dict[str, Any]] = []
    for _ in range(n_ops):
        r = rng.random()
        v = rng.choice(vmas)["name"]
        if r < 0.55:
            ops.append({"access": {"gpa": rng.choice(gpas) + 8 * rng.randint(0, 3), "write": rng.random() < 0.5,
                                   "value": rng.randint(1, 255)}})
        elif r < 0.62:
            ops.append({"madvise": {"vma": v if madvise_all else "a", "page": 0, "count": rng.randint(1, 4)}})
        elif r < 0.68:
            ops.append({"mprotect": {"vma": v, "prot": rng.choice(["rw", "r", "none"])}})
        elif r < 0.72:
            ops.append({"page_state": {"vma": "a", "page": rng.randint(0, 3), "state": rng.choice(states)}})
        elif r < 0.76:
            ops.append({"signal": {"kind": "fatal" if rng.random() < 0.03 else "pending"}})
        elif r < 0.82:
            ops.append({"get_dirty_log": {"slot": 0}})
        elif r < 0.86:
            ops.append({"memslot_move": {"slot": 0, "gfn": rng.choice([A, C])}})
        elif r < 0.90:
            ops.append({"memslot_flags": {"slot": 0, "log_dirty": rng.random() < 0.5}})
        elif r < 0.94:
            ops.append({"memslot_create": {"slot": 7, "gfn": 0x600, "pages": 2, "vma": "a", "offset": 2,
                                           "readonly": rng.random() < 0.3}})
        elif r < 0.97:
            ops.append({"memslot_delete": {"slot": 0}})
        else:
            ops.append({"munmap": {"vma": v}})
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
