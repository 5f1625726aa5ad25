"""Fixtures for tests on the real /dev/kvm.  Every test here skips, saying why, on a host
without a usable /dev/kvm; nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_shim.probe import kvm_unusable


def pytest_collection_modifyitems(config, items):
    why = kvm_unusable()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.kvm)
            if why is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs a usable /dev/kvm: {why}"))


@pytest.fixture(scope="session")
def host():
    from kernel_shim.host_backend import HostBackend
    b = HostBackend(timeout=10.0)
    yield b
    b.close()


@pytest.fixture(scope="session")
def emulated():
    from kernel_shim.host_backend import HostBackend
    b = HostBackend(path="emulated", timeout=10.0)
    yield b
    b.close()
