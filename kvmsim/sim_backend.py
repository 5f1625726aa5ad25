"""The simulated backends: one API generation on the shared world model."""

from __future__ import annotations

from typing import Any

from .backend import Backend, load_object
from .executor import run_generation
from .generation import Generation
from .scenario import Scenario
from .trace import Trace

MODEL_VERSION = "kvmsim-1"


class SimBackend(Backend):
    def __init__(self, name: str, generation: str, quirks: str | None = None) -> None:
        self.name = name
        cls = load_object(generation)
        if quirks is not None:
            self.gen: Generation = cls(frozenset(q.strip() for q in quirks.split(",") if q.strip()))
        else:
            self.gen = cls()
        self._version = f"{MODEL_VERSION}/{self.gen.name}"

    def description(self) -> str:
        return f"simulated {self.gen.title} (spec {self.gen.spec})"

    def version(self) -> str:
        return self._version

    def info(self) -> dict[str, Any]:
        return {"kind": "sim", "generation": self.gen.name, "spec": self.gen.spec,
                "quirks": sorted(getattr(self.gen, "quirks", ()))}

    def available(self) -> str | None:
        return None

    def run(self, scenario: Scenario) -> Trace:
        trace = run_generation(self.gen, scenario, self.name)
        trace.meta["version"] = self._version
        return trace
