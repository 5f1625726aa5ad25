"""``pfndiff kernels add``: a kernel given as loose files (the ``vmlinux`` and modules a fetched
Debian kernel is made of, under a new name) becomes ``qemu:<name>``, checked for what the guest
needs, and runs scenarios like a fetched kernel.  Nothing is mocked: the files are the real ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_kernels import HANDFUL

from kernel_shim.kernels.cache import KernelEntry, cached_kernels, find_kernel
from kernel_shim.kernels.compare import kernel_family, realisable_only
from kernel_shim.kernels.local import AddError, add_kernel, remove_kernel
from kernel_shim.kernels.qemu import qemu_missing
from kvmsim.backend import get_backend
from kvmsim.scenario import loads_scenario
from oracles.catalogue import family, load_catalogue
from oracles.diff import compare
from oracles.normalise import VMM_LEVEL

PFNDIFF = os.path.join(os.path.dirname(sys.executable), "pfndiff")


def _fetched(suite: str) -> KernelEntry:
    hits = [e for e in cached_kernels() if e.suite == suite]
    if not hits:
        pytest.skip(f"no {suite} kernel cached; `pfndiff kernels fetch --suite {suite}` fetches it")
    return hits[-1]


@pytest.fixture
def name():
    n = f"loose-{os.getpid()}"
    yield n
    remove_kernel(n)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PFNDIFF, "kernels", *args], capture_output=True, text=True, timeout=300)


def test_lacks_are_one_line_and_exit_2(tmp_path, name):
    k = _fetched("trixie")
    not_a_kernel = tmp_path / "bzImage"
    not_a_kernel.write_bytes(b"MZ" + os.urandom(4096))
    r = _cli("add", str(not_a_kernel), "--name", name)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no compressed ELF image" in r.stderr
    r = _cli("add", str(Path(k.directory) / "vmlinux"), "--name", name)         # no modules: no KVM
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "lacks KVM" in r.stderr, r.stderr
    mods = tmp_path / "mods"
    shutil.copytree(Path(k.directory) / "modules", mods)
    (mods / "kvm_amd.ko").unlink()
    with pytest.raises(AddError, match="lacks AMD SVM support"):
        add_kernel(str(Path(k.directory) / "vmlinux"), name, str(mods), log=lambda m: None)
    (mods / "kvm_amd.ko").write_bytes((Path(k.directory) / "modules" / "kvm_amd.ko").read_bytes())
    (mods / "9pnet_virtio.ko").unlink()
    with pytest.raises(AddError, match="lacks 9p over virtio"):
        add_kernel(str(Path(k.directory) / "vmlinux"), name, str(mods), log=lambda m: None)
    other = _fetched("sid")
    with pytest.raises(AddError, match="built for .*the image is"):        # another kernel's modules
        add_kernel(str(Path(other.directory) / "vmlinux"), name, str(Path(k.directory) / "modules"),
                   log=lambda m: None)
    with pytest.raises(AddError, match="fetched kernel"):
        add_kernel(str(Path(k.directory) / "vmlinux"), k.name, str(Path(k.directory) / "modules"), log=lambda m: None)
    assert find_kernel(name) is None, "nothing is cached when a check fails"


@pytest.mark.parametrize("suite", ["trixie", "sid"])
def test_generation_comes_from_the_symbols(tmp_path, name, suite):
    k = _fetched(suite)
    e = add_kernel(str(Path(k.directory) / "vmlinux"), name, str(Path(k.directory) / "modules"), log=lambda m: None)
    assert (e.name, e.release, e.suite, e.generation) == (name, k.release, "local", k.generation)
    assert e.api == ("__gfn_to_pfn_memslot" if k.generation == "g1" else "__kvm_faultin_pfn")
    assert find_kernel(name) == e and find_kernel(k.name).suite == suite     # the fetched one keeps its name
    assert kernel_family(f"qemu:{name}") == k.generation
    assert family(f"qemu:{name}") == k.generation == get_backend(f"qemu:{name}").generation()   # root-cause titles


@pytest.mark.slow
def test_a_kernel_from_loose_files_runs_scenarios(name):
    """The loose files of the cached 6.12 kernel, added under a new name, boot and agree with the
    model of the generation its symbols show, as the fetched kernel does."""
    if qemu_missing():
        pytest.skip(f"needs QEMU: {qemu_missing()}")
    k = _fetched("trixie")
    r = _cli("add", str(Path(k.directory) / "vmlinux"), "--modules", str(Path(k.directory) / "modules"),
             "--name", name)
    assert r.returncode == 0, r.stderr
    assert f"qemu:{name}: Linux {k.release} (g1" in r.stdout
    assert f"qemu:{name}" in _cli("list").stdout
    b = get_backend(f"qemu:{name}")
    assert b.available() is None
    scs = [loads_scenario(t, n) for n, t in HANDFUL.items()]
    model = get_backend("sim:g1")
    cat = load_catalogue()
    try:
        traces = b.run_many(scs)
    finally:
        b.close()
    assert len(b.boots) == 1
    for sc, t in zip(scs, traces):
        assert t.meta["kernel"] == k.release and t.meta["generation"] == "g1" and "lost" not in t.meta
        m, q = realisable_only(model.run(sc), t)
        divs = compare(sc, m, q, cat, level=VMM_LEVEL, invariants=False)
        assert not divs, f"{sc.name}: " + "; ".join(f"op {d.index} {d.field}" for d in divs)
    r = _cli("remove", name)
    assert r.returncode == 0 and find_kernel(name) is None
