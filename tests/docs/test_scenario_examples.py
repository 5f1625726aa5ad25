"""Every fenced yaml block of docs/scenarios.md is a complete scenario that loads and runs on
every simulated backend (the doc's promise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmsim import OP_SCHEMAS, get_backend, loads_scenario

DOC = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
SIM = ("sim:g1", "sim:g2", "sim:g2s", "sim:g2s-literal", "sim:g2f", "sim:g3")


def test_every_op_has_an_example() -> None:
    used = {op.kind for text in BLOCKS for op in loads_scenario(text, "docs/scenarios.md").ops}
    assert used == set(OP_SCHEMAS)


@pytest.mark.parametrize("text", BLOCKS, ids=[re.search(r"name: (\S+)", b).group(1) for b in BLOCKS])
@pytest.mark.parametrize("backend", SIM)
def test_example_runs(text: str, backend: str) -> None:
    sc = loads_scenario(text, "docs/scenarios.md")
    trace = get_backend(backend).run(sc)
    assert len(trace.records) == len(sc.ops)
    assert not any("oops" in (r.api or {}) for r in trace.records)
