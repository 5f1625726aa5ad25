"""fuzz.campaigns.workers: N long-lived libFuzzer workers on one corpus (slow ones start libFuzzer)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fuzz.campaigns import history
from fuzz.campaigns.campaign import MAX_RESTARTS, Campaign
from fuzz.campaigns.workers import Progress, Worker, combined, exit_status, log_path
from fuzz.cli import main
from fuzz.judging import artifacts as art
from kvmsim.checkout import ROOT

S8_PAIR = "sim:g2~sim:g2s-literal:S8"
WAIT = 180.0                 # seconds a condition may take on a loaded machine before the test gives up


def test_each_worker_has_its_own_log():
    assert log_path("a/libfuzzer.log", 0) == "a/libfuzzer.log"
    assert log_path("a/libfuzzer.log", 1) == "a/libfuzzer.1.log"
    assert log_path("a/run", 2) == "a/run.2.log"


def test_the_campaign_adds_up_exec_s_and_takes_the_largest_corpus():
    got = combined([Progress(cov=10, ft=20, corp=30, execs_per_s=100),
                    Progress(cov=12, ft=19, corp=28, execs_per_s=50)])
    assert (got.execs_per_s, got.corp, got.cov, got.ft) == (150, 30, 12, 20)
    assert combined([]).execs_per_s == 0


def test_exit_status_as_a_shell_shows_it():
    assert exit_status(-signal.SIGKILL) == 137 and exit_status(77) == 77 and exit_status(0) == 0


def test_a_worker_keeps_libfuzzers_numbers_and_the_input_it_wrote(tmp_path):
    lines = ["INFO: Seed: 1", "#2\tINITED cov: 7 ft: 9 corp: 2/10b exec/s: 0 rss: 40Mb",
             "#512\tNEW    cov: 8 ft: 11 corp: 3/14b lim: 4 exec/s: 256 rss: 41Mb",
             "==1== ERROR: libFuzzer: out-of-memory (used: 300Mb; limit: 260Mb)",
             f"artifact_prefix='{tmp_path}/'; Test unit written to {tmp_path}/oom-00ff",
             "stat::number_of_executed_units: 613"]
    w = Worker(0, str(tmp_path / "w.log"))
    script = "import sys; sys.stderr.write(sys.argv[1])"
    w.start([sys.executable, "-c", script, "\n".join(lines) + "\n"], dict(os.environ))
    assert w.proc is not None and w.proc.wait(timeout=60) == 0
    w.close()
    p = w.prog
    assert (p.inited, p.cov, p.ft, p.corp, p.execs_per_s, p.unit) == (True, 8, 11, 3, 256, f"{tmp_path}/oom-00ff")
    assert p.final_execs == 613
    assert (tmp_path / "w.log").read_text().splitlines() == lines


def test_every_worker_runs_the_single_process_command():
    c = Campaign([("sim:g2", "sim:g3")], 60, 4, "work", "art", seeds=[ROOT])
    cmd = c.command("d")
    assert not any(a.startswith(("-fork", "-jobs", "-workers")) for a in cmd)
    assert "-reload=1" in cmd and "-max_total_time=60" in cmd
    assert cmd[-2:] == ["work", ROOT]                        # new units go to the working corpus
    assert "-max_total_time=17" in c.command("d", 17)        # a restart gets the time left


# --- real campaigns ------------------------------------------------------------------------------

def _groups_alive(pids: list[int]) -> list[int]:
    """The processes still in any of these process groups (each worker leads its own)."""
    left = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) in pids:        # state, ppid, pgrp
            left.append(int(d))
    return left


def _run(artifacts: Path) -> history.Run:
    runs = history.read(str(artifacts))
    assert len(runs) == 1
    return runs[0]


def _workers(artifacts: Path) -> list[dict]:
    """The history's worker records (one per process started), in order."""
    out = []
    try:
        lines = Path(history.path_in(str(artifacts))).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "worker":
            out.append(rec)
    return out


def _stats_by_pid(artifacts: Path, t0: float) -> dict[int, dict]:
    return {st["pid"]: st for st in art.read_stats(str(artifacts)) if abs(st["t0"] - t0) < 1e-3}


@pytest.mark.slow
def test_two_workers_share_the_corpus_and_the_artifacts(tmp_path, capsys):
    a, c = tmp_path / "a", tmp_path / "c"
    rc = main(["fuzz", "--pair", S8_PAIR, "--time", "8", "--jobs", "2", "--corpus", str(c), "--artifacts", str(a),
               "--status-every", "2", "--no-minimize"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 worker(s)" in out.splitlines()[0] and (a / "libfuzzer.log").exists() and (a / "libfuzzer.1.log").exists()
    run = _run(a)
    assert run.start["jobs"] == 2
    started = _workers(a)
    assert [(w["worker"], w["restart"]) for w in started] == [(0, 0), (1, 0)]
    pids = [w["pid"] for w in started]
    stats = _stats_by_pid(a, run.t0)
    assert sorted(stats) == sorted(pids)                      # each worker wrote its own counters ...
    assert all(stats[p]["execs"] > 0 for p in pids)           # ... and executed inputs
    # libFuzzer's own count, printed as each worker ends, covers the executions after the worker's
    # last counters were written; the table adds up every worker's, whichever is more
    final = [int(m) for log in ("libfuzzer.log", "libfuzzer.1.log")
             for m in re.findall(r"stat::number_of_executed_units:\s*(\d+)", (a / log).read_text())]
    assert len(final) == 2 and sum(final) >= sum(st["execs"] for st in stats.values())
    total = sum(final)
    assert f"findings after {total} executions" in out
    assert run.end["execs"] == total
    assert re.search(r"exec/s \d+ \(2 workers\)", out), out
    # a signature both workers saw (every seed is run by each) is claimed once: one marker, one sidecar
    both = set(stats[pids[0]]["signatures"]) & set(stats[pids[1]]["signatures"])
    unknown = {s for s in both if not stats[pids[0]]["signatures"][s]["known"]}
    assert unknown, "the S8 seed shows the S8 quirk to both workers"
    written = [yaml.safe_load(p.read_text()) for p in a.glob("crash-*.yaml")]
    ids = [s["id"] for doc in written for s in doc["signatures"]]
    assert len(ids) == len(set(ids)) == len(os.listdir(a / art.SIGNATURE_DIR))
    rows = [ln for ln in out.splitlines() if " S8 " in ln]
    assert len(rows) == 1 and rows[0].startswith("known"), out
    assert _groups_alive(pids) == []


def _campaign(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "fuzz.cli", "fuzz", "--pair", S8_PAIR, "--corpus",
                             str(tmp_path / "c"), "--artifacts", str(tmp_path / "a"), "--status-every", "1",
                             "--no-minimize", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


def _wait_for(what: str, cond, proc: subprocess.Popen):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)                          # the campaign stops its workers
    pytest.fail(f"never saw {what}: {proc.communicate()[0].decode(errors='replace')[-3000:]}")


def _fuzzing(log: Path, times: int = 1) -> bool:
    """The log shows ``times`` processes that started fuzzing (a restart appends to it)."""
    try:
        return log.read_bytes().count(b"INITED cov:") >= times
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_ctrl_c_stops_every_worker(tmp_path):
    a = tmp_path / "a"
    proc = _campaign(tmp_path, "--time", "600", "--jobs", "2")
    _wait_for("both workers fuzzing", lambda: _fuzzing(a / "libfuzzer.log") and _fuzzing(a / "libfuzzer.1.log"), proc)
    first = _workers(a)
    os.kill(first[1]["pid"], signal.SIGKILL)
    again = _wait_for("worker 1 restarted", lambda: [w for w in _workers(a) if w["restart"] == 1], proc)
    assert again[0]["worker"] == 1 and again[0]["pid"] != first[1]["pid"] and again[0]["seconds"] < 600
    t0 = _run(a).t0
    _wait_for("the new worker executing", lambda: _stats_by_pid(a, t0).get(again[0]["pid"], {}).get("execs"), proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=WAIT)[0].decode()
    assert proc.returncode == 130, out
    assert f"worker 1 (pid {first[1]['pid']}) exited with status 137" in out
    assert f"restarted for the remaining {again[0]['seconds']}s as pid {again[0]['pid']}" in out
    assert "interrupted" in out and "(2 workers, 1 restart(s))" in out
    assert _run(a).end["restarts"] == 1
    pids = [w["pid"] for w in _workers(a)]
    assert len(pids) == 3 and _groups_alive(pids) == []


@pytest.mark.slow
def test_in_crash_mode_the_first_finding_stops_every_worker(tmp_path):
    proc = _campaign(tmp_path, "--time", "600", "--jobs", "2", "--crash")
    out = proc.communicate(timeout=WAIT)[0].decode()
    assert proc.returncode not in (0, 130), out
    assert "not restarted: crash mode stops at the first finding" in out and "restarted for" not in out
    assert _groups_alive([w["pid"] for w in _workers(tmp_path / "a")]) == []


@pytest.mark.slow
def test_a_worker_that_fails_before_fuzzing_is_not_restarted(tmp_path):
    proc = _campaign(tmp_path, "--time", "600", "--jobs", "2", "--", f"-dict={tmp_path / 'missing.dict'}")
    out = proc.communicate(timeout=WAIT)[0].decode()
    assert proc.returncode not in (0, 130), out
    assert out.count("not restarted: it failed before fuzzing") == 2 and "restarted for" not in out


@pytest.mark.slow
def test_restarts_are_bounded(tmp_path):
    a = tmp_path / "a"
    proc = _campaign(tmp_path, "--time", "600", "--jobs", "1")
    for n in range(MAX_RESTARTS + 1):
        _wait_for(f"start {n} fuzzing", lambda n=n: _fuzzing(a / "libfuzzer.log", n + 1), proc)
        os.kill(_workers(a)[n]["pid"], signal.SIGKILL)
    out = proc.communicate(timeout=WAIT)[0].decode()
    assert proc.returncode == 137, out                      # the campaign could not go on: the worker's status
    assert out.count("restarted for the remaining") == MAX_RESTARTS
    assert f"not restarted: {MAX_RESTARTS} restarts used" in out and "(1 worker, 3 restart(s))" in out
    assert _groups_alive([w["pid"] for w in _workers(a)]) == []
