"""Real Debian kernels booted in QEMU: each cached kernel runs a handful of scenarios (one boot
for all of them), including a VM_PFNMAP-backed memslot, and must agree at VMM level with the
model of its own generation (≤ 6.12: sim:g1, ≥ 6.13: sim:g3).

Kernels are downloaded only when asked (``PFNDIFF_FETCH_KERNELS=1``); otherwise a suite that is
not cached is skipped, saying so, and so is everything when QEMU is missing.  Nothing is mocked.
"""

from __future__ import annotations

import os

import pytest

from kernel_shim.host_exec import NOT_OBSERVABLE
from kernel_shim.kernels.cache import KernelEntry, cached_kernels
from kernel_shim.kernels.compare import realisable_only
from kernel_shim.kernels.qemu import INSTALL_HINT, qemu_missing
from kvmsim.backend import get_backend
from kvmsim.scenario import loads_scenario
from oracles.catalogue import load_catalogue
from oracles.diff import compare
from oracles.normalise import VMM_LEVEL

FETCH = os.environ.get("PFNDIFF_FETCH_KERNELS") == "1"

HANDFUL = {
    "normal-rw": """
name: normal-rw
world:
  vmas: [{name: ram, pages: 2, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: ram}]
ops:
  - access: {gpa: 0x100010, write: true, value: 0xfeed}
  - access: {gpa: 0x100010}
  - access: {gpa: 0x101000}
""",
    "pfnmap-bar": """
name: pfnmap-bar
world:
  vmas: [{name: bar, pages: 2, remap: pfnmap}]
  memslots: [{id: 0, gfn: 0x100, pages: 2, vma: bar}]
ops:
  - access: {gpa: 0x101008, write: true, value: 0xabc}
  - access: {gpa: 0x101008}
  - access: {gpa: 0x100000}
""",
    "pfnmap-readonly-vma": """
name: pfnmap-readonly-vma
world:
  vmas: [{name: bar, pages: 1, remap: pfnmap, prot: r}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: bar}]
ops:
  - access: {gpa: 0x100000}
  - access: {gpa: 0x100000, write: true, value: 1}
""",
    "ro-slot-and-no-slot": """
name: ro-slot-and-no-slot
world:
  vmas: [{name: rom, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x200, pages: 1, vma: rom, readonly: true}]
ops:
  - access: {gpa: 0x200000, write: true, value: 1}
  - access: {gpa: 0x200000}
  - access: {gpa: 0x300000}
  - access: {gpa: 0x60ec00000000, write: true, value: 2}
""",
    "dirty-log-and-munmap": """
name: dirty-log-and-munmap
world:
  vmas: [{name: ram, pages: 4}]
  memslots: [{id: 0, gfn: 0x100, pages: 4, vma: ram, log_dirty: true}]
ops:
  - access: {gpa: 0x102000, write: true, value: 5}
  - get_dirty_log: {slot: 0}
  - mprotect: {vma: ram, prot: r}
  - access: {gpa: 0x101000, write: true, value: 6}
  - munmap: {vma: ram}
  - access: {gpa: 0x102000}
""",
}
SUITES = ["bookworm", "trixie", "sid"]
# Hangs on 6.1 only: a pending signal does not end KVM's wait for a missing userfaultfd page there.
HANG = """
name: uffd-signal-wait
world:
  vmas: [{name: swap, pages: 1, page_states: {0: needs_io}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: swap}]
ops:
  - signal: {kind: pending}
  - access: {gpa: 0x100000}
"""
# A fatal signal kills the VMM (the guest's worker); the next scenario gets a new one in the same boot.
KILLED = """
name: killed-vmm
world:
  vmas: [{name: ram, pages: 1, page_states: {0: present_rw}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram}]
ops:
  - access: {gpa: 0x100000, write: true, value: 0xfeed}
  - access: {gpa: 0x100000}
  - lookup: {gfn: 0x100}
  - signal: {kind: fatal}
  - access: {gpa: 0x100000}
"""


def _kernel(suite: str) -> KernelEntry:
    why = qemu_missing()
    if why is not None:
        pytest.skip(f"needs QEMU: {why}")
    hits = [e for e in cached_kernels() if e.suite == suite]
    if not hits and FETCH:
        from kernel_shim.kernels.fetch import FetchError, fetch_suite
        try:
            hits = [fetch_suite(suite, log=lambda m: None)]
        except FetchError as e:
            pytest.skip(f"PFNDIFF_FETCH_KERNELS=1 but {suite} could not be fetched: {e}")
    if not hits:
        pytest.skip(f"no {suite} kernel cached; `pfndiff kernels fetch --suite {suite}` "
                    "or PFNDIFF_FETCH_KERNELS=1 fetches it")
    return hits[-1]


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_kernel_matches_its_generations_model(suite, catalogue):
    k = _kernel(suite)
    b = get_backend(f"qemu:{k.name}")
    assert b.available() is None
    model = get_backend(f"sim:{k.generation}")
    scs = [loads_scenario(t, name) for name, t in HANDFUL.items()]
    try:
        traces = b.run_many(scs)
    finally:
        b.close()
    assert len(b.boots) == 1, "one boot for the whole batch"
    for sc, t in zip(scs, traces):
        assert t.meta["kernel"] == k.release and t.meta["generation"] == k.generation
        assert "serial" in t.meta and "lost" not in t.meta, t.meta
        unreal = [r.vmm for r in t.records if r.vmm and "not_realisable" in r.vmm]
        assert not unreal, f"{sc.name}: {unreal}"
        m, q = realisable_only(model.run(sc), t)
        divs = compare(sc, m, q, catalogue, level=VMM_LEVEL, invariants=False)
        assert not divs, f"{sc.name} on {k.release}: " + "; ".join(
            f"op {d.index} {d.field}: {d.left_obs.get(d.field)} / {d.right_obs.get(d.field)}" for d in divs)
    bar = traces[list(HANDFUL).index("pfnmap-bar")]
    assert "ivshmem-pfnmap" in bar.meta["quirks"]
    assert bar.records[1].vmm == {"outcome": "ok", "data": 0xABC, "exits": []}


@pytest.mark.slow
def test_a_hung_scenario_costs_one_record_not_the_guest():
    """6.1's KVM waits for a missing userfaultfd page without FOLL_INTERRUPTIBLE, so the shim's
    'signal while waiting for I/O' never returns -EINTR there: the guest's worker is killed at the
    deadline, and the next scenario runs in the same boot."""
    k = _kernel("bookworm")
    from kernel_shim.kernels.qemu_backend import QemuBackend
    b = QemuBackend(name=f"qemu:{k.name}", kernel=k.name, timeout=2.0)
    hang = loads_scenario(HANG)
    killed = loads_scenario(KILLED)
    again = loads_scenario(KILLED.replace("gfn: 0x100}", "gfn: 0x100, write: true}"))
    api_only = loads_scenario(KILLED.split("  - access")[0] + "  - lookup: {gfn: 0x100}\n")
    try:
        t1, t2, t3, t4, t5, t6 = b.run_many([hang, loads_scenario(HANDFUL["normal-rw"]), killed, again,
                                             loads_scenario(HANDFUL["normal-rw"]), api_only])
    finally:
        b.close()
    assert t1.records[1].vmm["outcome"] == "timeout"
    assert t2.records[1].vmm["data"] == 0xFEED
    assert t3.meta["lost"] == "killed" and t3.records[4].vmm["outcome"] == "killed"
    assert "reused" not in t4.meta and t4.records[1].vmm["data"] == 0xFEED     # a new worker, same boot
    assert t5.meta["reused"] and [r.vmm for r in t5.records] == [r.vmm for r in t2.records]
    assert t6.meta["not_run"] and [r.api for r in t6.records] == [{"not_observable": NOT_OBSERVABLE["lookup"]}]
    assert len(b.boots) == 1


@pytest.mark.slow
def test_a_missed_host_deadline_kills_qemu_and_the_next_scenario_reboots(monkeypatch):
    k = _kernel("bookworm")
    import tempfile

    from kernel_shim.kernels import qemu, qemu_backend
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*a, **kw):                              # records the sessions' temp directories
        made.append(real_mkdtemp(*a, **kw))
        return made[-1]

    monkeypatch.setattr(qemu.tempfile, "mkdtemp", mkdtemp)
    b = qemu_backend.QemuBackend(name=f"qemu:{k.name}", kernel=k.name, timeout=10.0)
    monkeypatch.setattr(qemu_backend, "HOST_MARGIN", -8.0)       # the host gives up after 2 s
    monkeypatch.setattr(qemu_backend, "REUSE", False)            # normal-rw ran in an earlier test
    try:
        t1 = b.run(loads_scenario(HANG))
        monkeypatch.setattr(qemu_backend, "HOST_MARGIN", 30.0)
        t2 = b.run(loads_scenario(HANDFUL["normal-rw"]))
    finally:
        b.close()
    assert t1.meta["lost"] == "timeout" and "QEMU killed" in t1.meta["reason"]
    assert t2.records[1].vmm["data"] == 0xFEED and len(b.boots) == 2
    assert len(made) == 2 and not [d for d in made if os.path.exists(d)], "a session left its temp directory"


def test_skips_say_how_to_get_qemu():
    assert "apt-get install qemu-system-x86" in INSTALL_HINT


@pytest.mark.slow
def test_compare_matrix_and_fuzz_findings_on_a_legacy_and_a_merged_kernel(tmp_path, monkeypatch):
    """The compare report over three seeds, and the fuzzer's judge on a kernel pair: the finding's
    sidecar names both kernels and keeps each guest's serial output."""
    legacy, merged = _kernel("bookworm"), _kernel("sid")
    from pathlib import Path

    import yaml

    from fuzz.inputs.codec import encode
    from fuzz.judging.engine import Checker
    from kernel_shim.kernels import qemu_backend
    from kernel_shim.kernels.compare import SEEDS, build_matrix, format_matrix
    monkeypatch.setattr(qemu_backend, "GUEST_TIMEOUT", 3.0)           # eq-sigpending hangs on 6.1
    names = [f"qemu:{legacy.name}", f"qemu:{merged.name}"]
    seeds = Path(SEEDS)
    files = [str(seeds / f"{n}.yaml") for n in ("eq-sigpending", "eq-remapped-no-struct-page", "eq-ro-slot-write")]
    try:
        m = build_matrix(names, files, jobs=2)
        text = format_matrix(m)
        rows = {os.path.basename(r.file): r for r in m.rows}
        assert rows["eq-remapped-no-struct-page.yaml"].cells == {n: "ok ok=0xabc" for n in names}
        assert not rows["eq-ro-slot-write.yaml"].differences
        sig = rows["eq-sigpending.yaml"]
        assert sig.cells[names[0]] == "timeout" and sig.cells[names[1]] == "ok=0x0"
        assert [(d.op, d.field, d.known) for d in sig.differences] == [(3, "vmm.outcome", False)]
        assert "uncatalogued" in text and "uninterruptible-fault-before-6.2" in text   # 6.1 vs sim:g1: a named quirk

        ch = Checker([(names[0], names[1])], artifacts=str(tmp_path))
        divs = ch.check(encode(loads_scenario((seeds / "eq-sigpending.yaml").read_text())))
        assert [d.field for d in divs] == ["vmm.outcome"] and not divs[0].known
        side = yaml.safe_load(next(tmp_path.glob("crash-*.yaml")).read_text())
        assert side["pair"] == names
        assert all("serial" in t["meta"] for t in side["traces"].values())
        assert side["backend_versions"] == {names[0]: f"linux-{legacy.release}", names[1]: f"linux-{merged.release}"}
    finally:
        qemu_backend.shutdown()
