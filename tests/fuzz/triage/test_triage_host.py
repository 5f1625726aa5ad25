"""Triage on the real host backend: an artifact is re-run N times and the reliability reported.
Skips (saying why) without a usable /dev/kvm; nothing is mocked."""

from __future__ import annotations

import json

import pytest
from findings import D10, find, seed

from fuzz.cli import main

try:
    from kernel_shim.probe import kvm_unusable
    WHY = kvm_unusable()
except Exception as e:                       # the shim itself cannot load here
    WHY = f"kernel_shim unavailable: {e}"

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(WHY is not None, reason=f"needs a usable /dev/kvm: {WHY}")]

# The literal sketch's WARN at mmu_seq == 0 (D10/S2) fails the first guest access with -EFAULT; a real
# kernel completes it.  A bug row, so never catalogued: this pair always diverges.
PAIR = ("sim:g2s-literal", "host")


def test_host_artifacts_are_rerun_n_times_and_the_reliability_reported(tmp_path, capsys):
    paths = find(tmp_path / "c", [PAIR], [seed(D10)])
    assert paths, "the literal sketch no longer differs from this host on the D10 seed"
    rc = main(["triage", str(tmp_path / "c"), "-o", str(tmp_path / "out"), "--runs", "3", "--no-minimize"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads((tmp_path / "out" / "triage.json").read_text())
    for c in doc["clusters"]:
        r = c["reproducibility"]
        assert r["runs"] == 3 * c["count"] and not r["deterministic"]
        assert c["status"] in ("reproduced", "flaky", "unreproduced")
        assert "host" in c["backends"]
    md = (tmp_path / "out" / "clusters" / doc["clusters"][0]["id"] / "report.md").read_text()
    assert "/3 runs" in md and "host kernel" in md
