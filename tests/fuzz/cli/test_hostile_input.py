"""Hostile and careless input, one test per case seen: one line naming the path and the problem,
exit status 2, no traceback, bounded memory, and nothing that existed before is lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest
import yaml
from findings import D10, D10_PAIR, SEEDS, d10_other, find, seed

from fuzz.cli import main
from kvmsim.checkout import ROOT

README = os.path.join(ROOT, "README.md")
UNWRITABLE = "/proc/pfndiff-no-such-dir/x"          # cannot be created, even by root
MEMORY_LIMIT = 200 << 20


def bomb_text(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" document: width**levels leaves if aliases were copied."""
    lines = ["version: 1", "world: {}", "x0: &a0 [" + ",".join(["0"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines + ["ops: []"]) + "\n"


def tree(path) -> dict[str, str]:
    """Every file under ``path`` with its content digest: what must survive a failed command."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def one_line(capsys, rc: int, *names: str, expect: int = 2) -> str:
    err = capsys.readouterr().err
    assert rc == expect, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """A real campaign artifact (crash-<sha1> + sidecar) written by the fuzz engine."""
    d = tmp_path_factory.mktemp("arts")
    return find(d, [D10_PAIR], [d10_other()])[0]


@pytest.fixture
def bomb(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb_text())
    return str(p)


# --- alias bombs: every loader, before memory is spent ----------------------------------------------

@pytest.mark.parametrize("argv", [
    ["check", "{bomb}"],
    ["run", "{bomb}"],
    ["diff", "{bomb}", "-l", "sim:g2", "-r", "sim:g3"],
    ["diff", "{seed}", "-l", "sim:g2", "-r", "sim:g3", "--catalogue", "{bomb}"],
    ["repro", "{bomb}", "--left", "sim:g2", "--right", "sim:g3"],
    ["triage", "{bombdir}", "-o", "{out}"],
])
def test_alias_bomb_is_refused_at_once(argv, bomb, tmp_path, capsys):
    os.makedirs(tmp_path / "bd")
    shutil.copy(bomb, tmp_path / "bd" / "bomb.yaml")
    sub = {"bomb": bomb, "seed": os.path.join(SEEDS, D10), "bombdir": str(tmp_path / "bd"),
           "out": str(tmp_path / "out")}
    tracemalloc.start()
    try:
        rc = main([a.format(**sub) for a in argv])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = one_line(capsys, rc, "bomb.yaml")
    assert "aliases expand beyond the limit" in line
    assert peak < MEMORY_LIMIT


def test_alias_bomb_in_a_sidecar(arts, tmp_path, capsys):
    d = tmp_path / "a"
    os.makedirs(d)
    shutil.copy(arts, d)
    (d / (os.path.basename(arts) + ".yaml")).write_text(bomb_text().replace("version: 1", "signature: x"))
    rc = main(["triage", str(d), "-o", str(tmp_path / "out"), "--no-minimize"])
    assert "aliases expand beyond the limit" in one_line(capsys, rc, ".yaml")


# --- bad paths and options: one line, exit 2 ------------------------------------------------------------

@pytest.mark.parametrize("argv, names", [
    (["fuzz", "--artifacts", README, "--time", "1"], [README, "--artifacts"]),
    (["fuzz", "--artifacts", UNWRITABLE, "--time", "1"], [UNWRITABLE]),
    (["triage", "{arts_dir}", "-o", UNWRITABLE], [UNWRITABLE]),
    (["triage", "{arts_dir}", "-o", README], [README]),
    (["minimize", "{art}", "-o", "{tmp}"], ["{tmp}", "directory"]),
    (["minimize", "{art}", "-o", UNWRITABLE], [UNWRITABLE]),
    (["corpus", "build", "--out", UNWRITABLE], [UNWRITABLE]),
    (["corpus", "minimize", "{arts_dir}", "-o", UNWRITABLE], [UNWRITABLE]),
    (["diff", "{seed}", "-l", "sim:g2", "-r", "sim:g3", "--catalogue", "{garbage}"], ["{garbage}", "UTF-8"]),
    (["check", "{pyobj}"], ["{pyobj}:3", "!!python/object/apply"]),
    (["kernels", "compare", "--backend", "qemu:9.9"], ["qemu:9.9", "not available"]),
    (["kernels", "compare", "--backend", "bogus"], ["bogus", "unknown backend"]),
    (["corpus", "build", "--seeds", "{tmp}/no-seeds", "--out", "{tmp}/cb"], ["{tmp}/no-seeds", "no seed"]),
    (["check", "/dev/zero"], ["/dev/zero", "limit"]),
    (["run", "{tmp}", "-b", "sim:g3"], ["{tmp}", "directory"]),
    (["triage", "{arts_dir}", "-o", "{tmp}/out", "--join", "/dev/zero"], ["/dev/zero", "limit"]),
])
def test_bad_paths_and_options_are_one_line(argv, names, arts, tmp_path, capsys):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 4)
    pyobj = tmp_path / "pyobj.yaml"
    pyobj.write_text("world: {}\nops:\n  - lookup: !!python/object/apply:os.system [ls]\n")
    sub = {"arts_dir": os.path.dirname(arts), "art": arts, "tmp": str(tmp_path), "seed": os.path.join(SEEDS, D10),
           "garbage": str(garbage), "pyobj": str(pyobj)}
    before = tree(os.path.dirname(arts))
    rc = main([a.format(**sub) for a in argv])
    line = one_line(capsys, rc, *(n.format(**sub) for n in names))
    assert "Node(" not in line
    assert tree(os.path.dirname(arts)) == before


def test_triage_of_a_missing_input_leaves_the_earlier_triage_whole(arts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["triage", os.path.dirname(arts), "-o", str(out), "--no-minimize"]) == 0
    capsys.readouterr()
    before = tree(out)
    assert "triage.json" in before and any(k.startswith("clusters/") for k in before)
    rc = main(["triage", str(tmp_path / "typo-dir"), "-o", str(out)])
    one_line(capsys, rc, "typo-dir", "no such file")
    assert tree(out) == before
    os.makedirs(tmp_path / "empty")
    rc = main(["triage", str(tmp_path / "empty"), "-o", str(out)])             # an empty run, likewise
    one_line(capsys, rc, "empty", "keeps its earlier triage")
    assert tree(out) == before


def test_a_new_triage_replaces_the_old_one_whole(arts, tmp_path, capsys):
    """Clusters of the earlier run that the new one does not have are gone, not mixed in."""
    out = tmp_path / "out"
    assert main(["triage", os.path.dirname(arts), "-o", str(out), "--no-minimize", "--format", "junit"]) == 0
    other = tmp_path / "other"
    find(other, [("sim:g1", "sim:g2s-literal")], [seed("d22-sketch-hva-error-as-pfn.yaml")])
    main(["triage", str(other), "-o", str(out), "--no-minimize"])
    capsys.readouterr()
    import json
    doc = json.loads((out / "triage.json").read_text())
    ids = {c["id"] for c in doc["clusters"]}
    assert ids == set(os.listdir(out / "clusters"))
    assert not (out / "junit.xml").exists()                            # the old run's, not this one's
    assert not [n for n in os.listdir(out) if n.startswith(".")]        # no staging left behind


def test_directory_named_like_an_artifact_is_reported(arts, tmp_path, capsys):
    d = tmp_path / "a"
    os.makedirs(d / ("crash-" + "0" * 40))
    rc = main(["triage", str(d), "-o", str(tmp_path / "out")])
    one_line(capsys, rc, "crash-" + "0" * 40, "directory")


def test_corpus_decode_of_a_truncated_artifact(arts, tmp_path, capsys):
    cut = tmp_path / os.path.basename(arts)
    with open(arts, "rb") as fh:
        cut.write_bytes(fh.read()[:-3])
    rc = main(["corpus", "decode", str(cut)])
    one_line(capsys, rc, str(cut), "truncated")


@pytest.mark.parametrize("field, value, problem", [
    ("observations", [1, 2], "field 'observations' must be a mapping"),
    ("scenario", "hello", "field 'scenario' is not a scenario"),
    ("pair", ["sim:g2", "sim:g3", "sim:g1"], "field 'pair' has 3 entries, at most 2"),
    ("signatures", [{"id": 5}], "field 'signatures.0' 'signature' is missing"),
])
@pytest.mark.parametrize("cmd", ["triage", "repro", "minimize"])
def test_malformed_sidecars_are_refused(cmd, field, value, problem, arts, tmp_path, capsys):
    d = tmp_path / "a"
    os.makedirs(d)
    shutil.copy(arts, d)
    path = d / os.path.basename(arts)
    with open(arts + ".yaml", encoding="utf-8") as fh:
        side = yaml.safe_load(fh)
    side[field] = value
    (d / (path.name + ".yaml")).write_text(yaml.safe_dump(side))
    argv = ["triage", str(d), "-o", str(tmp_path / "out")] if cmd == "triage" else [cmd, str(path)]
    rc = main(argv)
    assert problem in one_line(capsys, rc, str(path) + ".yaml")


def test_minimize_output_beside_artifacts_is_a_triage_input(arts, tmp_path, capsys):
    d = tmp_path / "a"
    os.makedirs(d)
    shutil.copy(arts, d)
    shutil.copy(arts + ".yaml", d)
    assert main(["minimize", str(d / os.path.basename(arts))]) == 0
    assert any(n.endswith(".min.yaml") for n in os.listdir(d))
    capsys.readouterr()
    assert main(["triage", str(d), "-o", str(tmp_path / "out"), "--no-minimize"]) == 0
    err = capsys.readouterr().err
    assert "sidecar" not in err and "Traceback" not in err


# --- Ctrl-C: one line, exit 130, finished work kept, no child left ---------------------------------------

PFNDIFF = os.path.join(os.path.dirname(sys.executable), "pfndiff")


def _wait_for_staging(out, proc, timeout: float = 60.0) -> None:
    """Until the triage has started its work (its staging directory exists in OUT)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(out) and any(n.startswith(".new-") for n in os.listdir(out)):
            return
        time.sleep(0.05)
    raise AssertionError("the triage never started its work")


def _inputs(tmp_path, copies: int = 20) -> str:
    """Enough work that the command is still busy when the signal comes (it stops at once)."""
    d = tmp_path / "in"
    for i in range(copies):
        shutil.copytree(SEEDS, d / str(i))
    return str(d)


@pytest.mark.skipif(not os.path.exists(PFNDIFF), reason="the pfndiff script is not installed next to python")
def test_sigint_to_a_background_triage_started_from_a_script(tmp_path):
    """POSIX shells start asynchronous commands of a script with SIGINT ignored."""
    out, pidfile = tmp_path / "out", tmp_path / "pid"
    os.makedirs(out)
    (out / "keep.txt").write_text("a user's file")
    script = (f'"{PFNDIFF}" triage "{_inputs(tmp_path)}" -o "{out}" --left sim:g2 --right sim:g2s-literal '
              f'& echo $! > "{pidfile}"; wait $!; echo rc=$?')
    sh = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    try:
        _wait_for_staging(out, sh)
        os.kill(int(pidfile.read_text()), signal.SIGINT)
        stdout, stderr = sh.communicate(timeout=60)
    finally:
        if sh.poll() is None:
            os.killpg(sh.pid, signal.SIGKILL)
    assert "rc=130" in stdout, (stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in stderr, stderr
    assert (out / "interrupted" / "triage.json").is_file()             # the finished part is kept
    assert not (out / "triage.json").exists() and (out / "keep.txt").read_text() == "a user's file"


def _kvm_usable() -> bool:
    from kvmsim import get_backend
    return get_backend("host").available() is None


@pytest.mark.kvm
@pytest.mark.skipif(not os.path.exists(PFNDIFF), reason="the pfndiff script is not installed next to python")
def test_ctrl_c_during_a_host_pair_triage(tmp_path):
    """Ctrl-C goes to the whole foreground process group: the worker child must stay quiet and
    be gone when pfndiff has exited."""
    if not _kvm_usable():
        pytest.skip("needs a usable /dev/kvm for the host backend")
    out = tmp_path / "out"
    p = subprocess.Popen([PFNDIFF, "triage", _inputs(tmp_path), "-o", str(out), "--left", "host", "--right",
                          "sim:g3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _wait_for_staging(out, p)
        time.sleep(1.0)                                                # the worker child is up and running
        os.killpg(p.pid, signal.SIGINT)
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in stderr, stderr
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)                                            # no child left in the group
    assert (out / "interrupted" / "triage.json").is_file()


def test_ctrl_c_during_minimize_keeps_the_smallest_input_so_far(arts, tmp_path, capsys, monkeypatch):
    """The interrupt arrives inside a check (as a real SIGINT would, in the backends' code)."""
    from fuzz.judging.judge import Judge
    calls = {"n": 0}
    real = Judge.judge

    def judge(self, sc, traces=None):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(self, sc, traces)

    monkeypatch.setattr(Judge, "judge", judge)
    out = tmp_path / "m"
    rc = main(["minimize", arts, "-o", str(out)])
    line = one_line(capsys, rc, "interrupted", str(out), expect=130)
    assert "smallest input found so far" in line
    assert (tmp_path / "m.yaml").is_file() and calls["n"] == 12       # no check ran after the interrupt


def test_a_huge_value_makes_a_short_line(tmp_path, capsys):
    p = tmp_path / "long.yaml"
    p.write_text("world: {}\nops:\n  - lookup: {gfn: [" + ",".join(["12345"] * 20000) + "]}\n")
    line = one_line(capsys, main(["check", str(p)]), str(p) + ":3", "lookup.gfn must be an integer")
    assert len(line) < 500


def test_scratch_of_a_killed_triage_is_swept(arts, tmp_path, capsys):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(out / f".new-{dead.pid}-abc" / "clusters")            # left by a run killed with SIGKILL
    assert main(["triage", os.path.dirname(arts), "-o", str(out), "--no-minimize"]) == 0
    capsys.readouterr()
    assert not [n for n in os.listdir(out) if n.startswith(".")]
