"""``pfndiff kernels compare``: the bundled corpus on every cached kernel and on this host, as a
matrix scenario × kernel → VMM-level outcome, differences marked and explained by spec id.

Why a report of its own: it answers "how do two real kernels differ, and is each difference an
intended change of the spec?" in one screen.  A difference between a legacy (≤ 6.12) and a
merged (≥ 6.13) kernel is explained by the known-divergence catalogue (``catalogue id → spec
id``) when an entry matches; otherwise it is marked uncatalogued and shown with the spec ids the
seed is tagged with.  Each kernel is also checked against its own generation's model
(``sim:g1``/``sim:g3``): a mismatch there is marked ``≠model``.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kvmsim.backend import Backend, BackendError, get_backend
from kvmsim.checkout import ROOT
from kvmsim.realised import Coverage, coverage
from kvmsim.scenario import Scenario, load_scenario
from kvmsim.trace import OpRecord, Trace
from oracles.catalogue import Catalogue, family, load_catalogue
from oracles.diff import compare as diff_traces
from oracles.normalise import VMM_LEVEL
from oracles.pair import compare_pair

from ..faultpath.rows import by_row, fault_status, format_rows
from ..quirks import explain_divergence

REPO = ROOT
SEEDS = os.path.join(REPO, "corpus", "seeds")


def seed_files() -> list[str]:
    return sorted(glob.glob(os.path.join(SEEDS, "*.yaml")))


def _unreal(vmm: dict[str, Any] | None) -> bool:
    return isinstance(vmm, dict) and ("not_realisable" in vmm or "skipped" in vmm)


def token(rec: OpRecord) -> str | None:
    """One VMM-level observation, short: ``ok``, ``ok=0xabc``, ``mmio.w``, ``efault``, ``dirty[0,2]``,
    ``n/r`` (this backend cannot realise it); None for ops a VMM does not see."""
    v = rec.vmm
    if v is None:
        return None
    if "not_realisable" in v:
        return "n/r"
    if "skipped" in v:
        return "-"
    if rec.op == "get_dirty_log":
        return f"dirty{v.get('dirty')}".replace(" ", "")
    if "outcome" in v:
        o = v["outcome"]
        if o == "ok" and v.get("data") is not None:
            return f"ok={v['data']:#x}" if isinstance(v["data"], int) else f"ok={v['data']}"
        if o == "mmio":
            return "mmio.w" if (v.get("mmio") or {}).get("is_write") else "mmio.r"
        return str(o)
    if "ret" in v:
        return "" if v["ret"] == 0 else str(v["ret"])
    return None


def cell(trace: Trace) -> str:
    toks = [t for t in (token(r) for r in trace.records) if t]
    return " ".join(toks) or "·"


def realisable_only(a: Trace, b: Trace) -> tuple[Trace, Trace]:
    """Both traces with the ops either side could not realise blanked out (not a difference)."""
    skip = {r.index for t in (a, b) for r in t.records if _unreal(r.vmm)}

    def strip(t: Trace) -> Trace:
        return Trace(t.backend, [OpRecord(r.index, r.op, r.api, None if r.index in skip else r.vmm, r.events)
                                 for r in t.records], t.meta)
    return strip(a), strip(b)


@dataclass
class Difference:
    left: str
    right: str
    op: int
    field: str
    left_value: Any
    right_value: Any
    entries: list[str]
    spec: list[str]
    known: bool

    def text(self, tags: list[str], equal: str = "") -> str:
        if tags:
            seed = f"seed tags: {','.join(tags)}"
        else:
            seed = f"the seed expects equal: {equal}" if equal else "no seed tags"
        why = (f"catalogued {','.join(self.entries)} = {','.join(self.spec)}" if self.known
               else f"uncatalogued ({seed})")
        return (f"{self.left} vs {self.right} op {self.op} {self.field}: "
                f"{_short(self.left_value)} / {_short(self.right_value)} — {why}")


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


@dataclass
class Row:
    file: str
    scenario: Scenario
    cells: dict[str, str] = field(default_factory=dict)
    model_mismatch: dict[str, list[str]] = field(default_factory=dict)     # backend -> fields
    model_quirks: dict[str, list[str]] = field(default_factory=dict)       # backend -> fields a named quirk explains
    fault: dict[str, str] = field(default_factory=dict)    # backend -> fault-path status (faultpath/rows.py)
    differences: list[Difference] = field(default_factory=list)

    @property
    def tags(self) -> list[str]:
        spec = self.scenario.tags.get("spec") or []
        return [str(s) for s in (spec if isinstance(spec, list) else [spec])]


def divergences(sc: Scenario, a: Trace, b: Trace, cat: Catalogue) -> list[Difference]:
    a, b = realisable_only(a, b)
    out = []
    for d in diff_traces(sc, a, b, cat, level=VMM_LEVEL, invariants=False):
        ids = [e.split(" (")[0] for e in d.entries]
        spec = sorted({cat.by_id[i].spec for i in ids if i in cat.by_id})
        out.append(Difference(a.backend, b.backend, d.index, d.field, d.left_obs.get(d.field),
                              d.right_obs.get(d.field), d.entries, spec, d.known))
    return out


def model_family(backend: str) -> str:
    """The generation whose model a backend is checked against (this host: by its release)."""
    if backend.startswith("host"):
        from kernel_shim.probe import probe
        return probe().generation or "host"
    return kernel_family(backend)


def kernel_family(backend: str) -> str:
    """``qemu:<name>``: the generation of the cached kernel it names (a kernel added with
    ``pfndiff kernels add`` has a name, not a version; its backend reports the generation the cache
    recorded); anything else as the catalogue says."""
    return family(backend)


@dataclass
class Matrix:
    columns: list[str]
    rows: list[Row]
    seconds: dict[str, float]
    boots: dict[str, list[float]]
    total_seconds: float = 0.0
    unavailable: dict[str, str] = field(default_factory=dict)
    compared: dict[tuple[str, str], Coverage] = field(default_factory=dict)    # (left, right) -> ops compared

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "seconds": self.seconds, "boots": self.boots,
                "total_seconds": self.total_seconds, "unavailable": self.unavailable,
                "compared": [{"left": a, "right": b, **c.to_dict()} for (a, b), c in self.compared.items()],
                "fault_path_rows": by_row(self.rows, self.columns),
                "rows": [{"scenario": os.path.basename(r.file), "spec": r.tags, "cells": r.cells,
                          "model_mismatch": r.model_mismatch, "fault_path": r.fault,
                          "differences": [vars(d) for d in r.differences]} for r in self.rows]}


def _run_all(b: Backend, scs: list[Scenario]) -> list[Trace]:
    many = getattr(b, "run_many", None)
    return many(scs) if many is not None else [b.run(sc) for sc in scs]


def _available(backends: list[str]) -> tuple[dict[str, Backend], dict[str, str]]:
    """The backends that can run here, and why each other one cannot."""
    live: dict[str, Backend] = {}
    unavailable: dict[str, str] = {}
    for n in backends:
        b = get_backend(n)
        why = b.available()
        if why is None:
            live[n] = b
        else:
            unavailable[n] = why
    return live, unavailable


def _run_live(live: dict[str, Backend], scs: list[Scenario], jobs: int,
              on_done: Callable[[str], None] | None) -> tuple[dict[str, list[Trace]], dict[str, float]]:
    """Every scenario on every live backend, ``jobs`` backends at a time; (traces, seconds) by backend."""
    traces: dict[str, list[Trace]] = {}
    seconds: dict[str, float] = {}

    def job(name: str) -> None:
        s = time.monotonic()
        try:
            traces[name] = _run_all(live[name], scs)
        finally:
            seconds[name] = round(time.monotonic() - s, 2)
            close = getattr(live[name], "close", None)
            if close is not None:
                close()
            if on_done is not None:
                on_done(name)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for fut in [pool.submit(job, n) for n in live]:
            fut.result()
    return traces, seconds


def _check_against_model(row: Row, name: str, t: Trace, fam: str, model: Trace, cat: Catalogue,
                         rerun: Callable[[str, Scenario], Trace],
                         compared: dict[tuple[str, str], Coverage]) -> None:
    """One kernel's trace of ``row``'s scenario against the trace of its own generation's model."""
    diffs, cov, _, _ = compare_pair(row.scenario, model, t, cat, rerun, level=VMM_LEVEL, explain=explain_divergence)
    compared.setdefault((f"sim:{fam}", name), Coverage()).add(cov)
    row.fault[name] = fault_status(diffs, cov.fault_fields)
    row.model_quirks[name] = [f"op{d.index}:{d.field} ({', '.join(d.entries)})" for d in diffs if d.known]
    if any(not d.known for d in diffs):
        row.model_mismatch[name] = [f"op{d.index}:{d.field}" for d in diffs if not d.known]


def _legacy_vs_merged(row: Row, traces: dict[str, Trace], cols: list[str], cat: Catalogue,
                      compared: dict[tuple[str, str], Coverage]) -> None:
    """Every legacy kernel's trace of ``row``'s scenario against every merged kernel's; one
    difference per (op, field), from the first pair naming it."""
    legacy = [n for n in cols if kernel_family(n) == "g1"]
    merged = [n for n in cols if kernel_family(n) == "g3"]
    seen: set[tuple[int, str]] = set()
    for a in legacy:
        for b in merged:
            compared.setdefault((a, b), Coverage()).add(coverage(traces[a], traces[b], api=False))
            for d in divergences(row.scenario, traces[a], traces[b], cat):
                if (d.op, d.field) not in seen:
                    seen.add((d.op, d.field))
                    row.differences.append(d)


def build_matrix(backends: list[str], files: list[str] | None = None, jobs: int = 2,
                 catalogue: Catalogue | None = None, on_done: Callable[[str], None] | None = None) -> Matrix:
    """Run every seed on every backend (each QEMU kernel in one boot, ``jobs`` at a time);
    ``on_done(backend)`` is called as each backend finishes (progress; from worker threads)."""
    t0 = time.monotonic()
    files = files or seed_files()
    scs = [load_scenario(f) for f in files]
    cat = catalogue or load_catalogue()
    live, unavailable = _available(backends)
    models = {f: get_backend(f"sim:{f}") for f in ("g1", "g3")}
    traces, seconds = _run_live(live, scs, jobs, on_done)
    model_traces = {f: [m.run(sc) for sc in scs] for f, m in models.items()}

    def rerun(b: str, s: Scenario) -> Trace:
        return models[b[4:]].run(s)

    cols = [n for n in backends if n in traces]
    rows = []
    compared: dict[tuple[str, str], Coverage] = {}
    for i, (path, sc) in enumerate(zip(files, scs)):
        row = Row(path, sc)
        for n in cols:
            row.cells[n] = cell(traces[n][i])
            fam = model_family(n)
            if fam in model_traces:                   # the model runs the ops this kernel ran
                _check_against_model(row, n, traces[n][i], fam, model_traces[fam][i], cat, rerun, compared)
        _legacy_vs_merged(row, {n: traces[n][i] for n in cols}, cols, cat, compared)
        rows.append(row)
    boots = {n: list(getattr(live[n], "boots", [])) for n in cols}
    return Matrix(cols, rows, seconds, boots, round(time.monotonic() - t0, 2), unavailable, compared)


def format_matrix(m: Matrix, width: int = 28) -> str:
    name_w = max([len(os.path.basename(r.file)[:-5]) for r in m.rows] + [8])
    head = (f"{'scenario':<{name_w}}  " + "  ".join(f"{c:<{width}}" for c in m.columns)
            + "  difference (legacy vs merged)")
    lines = [head, "-" * len(head)]
    ndiff = nmodel = 0
    for r in m.rows:
        cells = []
        for c in m.columns:
            mark = "*" if any(d.left == c or d.right == c for d in r.differences) else " "
            txt = r.cells[c] + (" ≠model" if c in r.model_mismatch else "")
            cells.append(f"{mark}{txt[:width - 1]:<{width - 1}}")
        note = "; ".join(d.text(r.tags, str(r.scenario.tags.get("equal") or "")) for d in r.differences) or ""
        ndiff += bool(r.differences)
        nmodel += bool(r.model_mismatch)
        lines.append(f"{os.path.basename(r.file)[:-5]:<{name_w}}  " + "  ".join(cells) + ("  " + note if note else ""))
    lines.append("")
    lines.append("cells: VMM-level outcome of each VMM-visible op (ok[=data read], mmio.r/w, efault, dirty[...], "
                 "n/r = cannot be realised on that backend); * = differs between a legacy and a merged kernel; "
                 "≠model = differs from sim:g1/sim:g3 of its own generation")
    for r in m.rows:
        for c, fields in r.model_mismatch.items():
            lines.append(f"  ≠model {os.path.basename(r.file)[:-5]} on {c}: {', '.join(fields)}")
        for c, fields in r.model_quirks.items():
            if fields:
                lines.append(f"  =model but for a named quirk: {os.path.basename(r.file)[:-5]} on {c}: "
                             f"{', '.join(fields)}")
    lines.append(f"{len(m.rows)} scenarios; {ndiff} with legacy/merged differences; {nmodel} with a kernel that "
                 f"differs from its model")
    blank = sum(1 for r in m.rows if all(v == "·" for v in r.cells.values()))
    lines.append(f"{blank} of {len(m.rows)} scenarios have API-level ops only (·): nothing compared there")
    for (a, b), cov in m.compared.items():
        lines.append(f"  {a} vs {b}: {cov.summary(a, b)}")
    lines.extend(format_rows(by_row(m.rows, m.columns), m.columns))
    for c in m.columns:
        boots = ", ".join(f"{b:.1f}s" for b in m.boots.get(c, [])) or "-"
        lines.append(f"  {c}: {m.seconds.get(c, 0):.1f}s (boots: {boots})")
    for n, why in m.unavailable.items():
        lines.append(f"  {n}: not run: {why}")
    lines.append(f"total {m.total_seconds:.1f}s")
    return "\n".join(lines)


def kernel_backends(include_host: bool = True) -> list[str]:
    from .cache import cached_kernels
    names = []
    for e in cached_kernels():
        if f"qemu:{e.name}" not in names:
            names.append(f"qemu:{e.name}")
    if include_host:
        names.append("host")
    return names


__all__ = ["BackendError", "Matrix", "build_matrix", "format_matrix", "kernel_backends", "seed_files"]
