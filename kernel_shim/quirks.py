"""Named, documented differences between this host and the model (see docs/host.md)."""

from __future__ import annotations

from kvmsim.scenario import Scenario

QUIRKS: dict[str, str] = {}


def applicable(sc: Scenario) -> list[str]:
    return []
