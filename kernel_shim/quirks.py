"""Named, documented differences between this host and the model (see docs/host.md)."""

from __future__ import annotations

from typing import Any

from kvmsim.scenario import Scenario

QUIRKS: dict[str, str] = {}


def applicable(sc: Scenario) -> list[str]:
    return []


def explain(sc: Scenario, d: Any, lv: dict, rv: dict) -> str | None:
    return None
