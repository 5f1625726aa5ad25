"""kvmsim: the simulated KVM host and every gfn→pfn API generation (re-exports only)."""

from .backend import Backend, BackendError, backend_names, get_backend, register
from .scenario import OP_SCHEMAS, Op, Scenario, dump_scenario, load_scenario, loads_scenario, make_op
from .trace import OpRecord, Trace
from .yamlsrc import ScenarioError

__all__ = [
    "Backend", "BackendError", "backend_names", "get_backend", "register",
    "OP_SCHEMAS", "Op", "Scenario", "dump_scenario", "load_scenario", "loads_scenario", "make_op",
    "OpRecord", "Trace", "ScenarioError",
]
