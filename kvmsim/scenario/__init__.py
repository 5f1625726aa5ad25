"""The scenario format (docs/scenarios.md): what a scenario is (schema, vocabulary), reading it
(load), checking it (validate, over the memslot/VMA life cycle ``replay`` gives) and writing it
back (dump).  It depends on no part of the simulator; re-exports only.
"""

from ..yamlsrc import ScenarioError
from .dump import HEX_FIELDS, HexInt, dump_scenario, scenario_to_dict
from .load import load_scenario, loads_scenario, scenario_from_node
from .replay import LiveSlot, LiveVma, MemoryMap, SlotTable, memory_at, replay
from .schema import (
    API_OPS,
    HOST_LEVELS,
    MAP_STATES,
    MAX_GFN,
    MAX_SLOT_PAGES,
    MAX_VMA_PAGES,
    OP_SCHEMAS,
    PROTS,
    REMAPS,
    SCENARIO_VERSION,
    SIGNALS,
    VMA_BASE,
    VMA_STRIDE,
    VMM_OPS,
    F,
    Op,
    PageSpec,
    PteSpec,
    Scenario,
    SlotSpec,
    VmaSpec,
    WorldSpec,
    make_op,
)
from .validate import valid_ops, validate

__all__ = [
    "ScenarioError", "HEX_FIELDS", "HexInt", "dump_scenario", "scenario_to_dict", "load_scenario",
    "loads_scenario", "scenario_from_node", "LiveSlot", "LiveVma", "MemoryMap", "SlotTable", "memory_at", "replay",
    "API_OPS", "HOST_LEVELS", "MAP_STATES", "MAX_GFN", "MAX_SLOT_PAGES", "MAX_VMA_PAGES", "OP_SCHEMAS", "PROTS",
    "REMAPS", "SCENARIO_VERSION", "SIGNALS", "VMA_BASE", "VMA_STRIDE", "VMM_OPS", "F", "Op", "PageSpec", "PteSpec",
    "Scenario", "SlotSpec", "VmaSpec", "WorldSpec", "make_op", "valid_ops", "validate",
]
