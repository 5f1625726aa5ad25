"""The one list of real parts: what it checks, and what a user who cannot install is told."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "tools" / "real_parts.py"
_spec = importlib.util.spec_from_file_location("real_parts", _path)
real_parts = importlib.util.module_from_spec(_spec)
sys.modules["real_parts"] = real_parts
_spec.loader.exec_module(real_parts)


def test_the_list_names_qemu_and_the_kernels_the_tests_boot():
    assert "qemu-system-x86" in [p.package for p in real_parts.APT_PARTS]
    assert real_parts.KERNEL_SUITES == ["bookworm", "trixie", "sid"]
    from kernel_shim.kernels.fetch import SPECS
    assert set(real_parts.KERNEL_SUITES) <= set(SPECS)


def test_present_parts_are_left_alone():
    present = real_parts.AptPart("coreutils", sys.executable, "present by construction")
    said: list[str] = []
    assert real_parts.install_apt([present], log=said.append) == [] and said == []


def test_without_root_the_exact_command_is_named(monkeypatch):
    monkeypatch.setattr(real_parts.os, "geteuid", lambda: 1000)
    gone = real_parts.AptPart("pfndiff-no-such-package", "/nonexistent/pfndiff-part", "never there")
    said: list[str] = []
    assert real_parts.install_apt([gone], log=said.append) == ["pfndiff-no-such-package"]
    assert said and "apt-get install -y --no-install-recommends pfndiff-no-such-package" in said[0]
