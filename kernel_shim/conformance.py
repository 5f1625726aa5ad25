"""Does the model match this kernel?  Compares two traces at VMM level only (``vmm`` fields).

This is deliberately small: the full oracle engine (normalisation, signatures, the known-
divergence catalogue) lives in ``oracles/``.  Here a difference is either explained by a named
host quirk (``kernel_shim/quirks.py``) or reported as unexplained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmsim.realised import Coverage, as_realised, coverage
from kvmsim.scenario import Scenario
from kvmsim.trace import Trace

from . import quirks

# Fields a VMM cannot observe, even if a trace carries them.
UNOBSERVABLE = ("emulated",)


@dataclass
class Difference:
    index: int
    op: str
    field: str
    left: Any
    right: Any
    quirk: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "field": self.field, "left": self.left,
                "right": self.right, "quirk": self.quirk}

    def __str__(self) -> str:
        q = f"  [quirk {self.quirk}]" if self.quirk else ""
        return f"op {self.index} {self.op}: {self.field}: {self.left!r} != {self.right!r}{q}"


@dataclass
class Report:
    compared: int
    unrealisable: int
    differences: list[Difference]
    coverage: Coverage | None = None             # ops each side observed, and compared

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if d.quirk is None]

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def status(self) -> str:
        if self.compared == 0:
            return "nothing compared"
        return "ok" if self.ok else f"{len(self.unexplained)} unexplained"


def _skip(vmm: dict[str, Any] | None) -> bool:
    return vmm is not None and ("not_realisable" in vmm or "skipped" in vmm)


def compare(left: Trace, right: Trace, sc: Scenario | None = None) -> Report:
    """Field-by-field comparison of ``vmm`` (left: usually sim, right: usually host)."""
    diffs: list[Difference] = []
    compared = unreal = 0
    rights = {r.index: r for r in right.records}
    ended = False
    for lr in left.records:
        rr = rights.get(lr.index)
        if rr is None or ended:
            continue
        lv, rv = lr.vmm, rr.vmm
        if _skip(lv) or _skip(rv):
            unreal += 1
            continue
        if lv is None and rv is None:
            continue
        compared += 1
        lv, rv = lv or {}, rv or {}
        if "killed" in (lv.get("outcome"), rv.get("outcome")):
            ended = True                         # the VMM is gone: nothing after it is comparable
            keys = ["outcome"]
        else:
            keys = sorted((set(lv) | set(rv)) - set(UNOBSERVABLE))
        for key in keys:
            if lv.get(key) != rv.get(key):
                d = Difference(lr.index, lr.op, key, lv.get(key), rv.get(key))
                if sc is not None:
                    d.quirk = quirks.explain(sc, d, lv, rv, right.meta.get("path", "native-cpl3"),
                                             realised="realised_as" in left.meta)
                diffs.append(d)
    return Report(compared, unreal, diffs, coverage(left, right, api=False))


def check(sc: Scenario, model: Any, host: Any) -> tuple[Report, Trace, Trace]:
    """``sc`` on the model and on the host (Backends), the model run over the ops the host
    realised (``kvmsim.realised``), and compared."""
    ht = host.run(sc)
    sim = as_realised(model.run(sc), ht, sc, model.run)
    return compare(sim, ht, sc), sim, ht


def unstable_ops(sc: Scenario, host: Any, runs: int = 3) -> list[int]:
    """DESIGN principle 4: a host run is re-run to measure reproducibility.  Returns the indices
    of ops whose VMM observation was not the same in every run."""
    traces = [host.run(sc) for _ in range(runs)]
    first = {r.index: r.vmm for r in traces[0].records}
    return sorted({r.index for t in traces[1:] for r in t.records if r.vmm != first.get(r.index)})
