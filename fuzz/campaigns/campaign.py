"""A fuzzing campaign: run the differential target under libFuzzer for a time budget, report
progress, survive findings and Ctrl-C, and end with a findings table.

``jobs`` workers (fuzz.campaigns.workers) run side by side, each a long-lived libFuzzer process
on the one working corpus; the status lines add up their exec/s.  A worker that dies early is
restarted for the remaining time, except in crash mode, where the first finding ends the campaign.

Why one target process for several pairs: each input is run once per backend and compared for
every pair, so pairs share the budget and the corpus (``--pair a~b --pair a~c`` costs three
backend runs per input, not four).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fuzz.campaigns import history
from fuzz.campaigns.workers import Progress, Worker, combined, exit_status, stop_all
from fuzz.campaigns.workers import log_path as worker_log
from fuzz.inputs.codec import libfuzzer_dictionary
from fuzz.judging import artifacts as art
from fuzz.judging import crash as crash_mode
from kvmsim.checkout import ROOT
from kvmsim.realised import Coverage
from kvmsim.yamlsrc import ScenarioError
from oracles.signature import signature_id

REPO = ROOT
TARGETS = {"diff": os.path.join(REPO, "fuzz", "targets", "diff_target.py"),
           "empty": os.path.join(REPO, "fuzz", "targets", "empty_target.py")}
BUNDLED_CORPUS = os.path.join(REPO, "corpus", "libfuzzer")
# The default campaign (``make fuzz``, ``pfndiff fuzz`` without pairs): the generation change of
# interest, the literal sketch against G2, and the sketch against itself without S2 and S6 (which
# decide the x86 first attempt and would otherwise mask S4, S5 and S8 there).
DEFAULT_PAIRS: list[tuple[str, str]] = [("sim:g2", "sim:g3"), ("sim:g2", "sim:g2s-literal"),
                                        ("sim:g2s", "sim:g2s-literal:S4,S5,S8")]
MAX_RESTARTS = 3                 # per worker, in keep-going mode
MIN_RESTART_SECONDS = 5          # with less time left a new worker would spend it starting up


@dataclass
class Campaign:
    pairs: list[tuple[str, str]]
    seconds: int = 300
    jobs: int = 1
    corpus: str = "fuzz-out/corpus"
    artifacts: str = "artifacts"
    seeds: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    status_every: float = 5.0
    log: str = ""
    out: Callable[[str], None] = print
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    crash: bool = False              # crash mode (fuzz.judging.crash): stop at the first finding
    join: list[str] = field(default_factory=list)      # earlier triages whose causes are known to the user
    minimize: bool = True                              # minimise the first input of each NEW cause
    # What the layers above tell a campaign (``pfndiff fuzz`` passes fuzz.triage's): the causes the
    # user already knows, cause id -> where seen, from (artifacts, this run's start, joined triages);
    # and the size an input shrinks to keeping its signature on its pair.
    known: Callable[[str, float, list[str]], dict[str, str]] | None = None
    shrink: Callable[[bytes, tuple[str, str], str], int] | None = None
    compared: dict[str, Coverage] = field(default_factory=dict)      # pair -> ops observed and compared

    def command(self, dict_path: str, seconds: int | None = None) -> list[str]:
        """One worker's libFuzzer command line (``seconds``: its budget, when a restart has less)."""
        cmd = [TARGETS["diff"], f"-max_total_time={seconds or self.seconds}", f"-artifact_prefix={self.artifacts}/",
               f"-dict={dict_path}", "-print_final_stats=1", "-reload=1"]
        return cmd + self.extra + [self.corpus] + [s for s in self.seeds if os.path.isdir(s)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")      # the shebang's python3 = this venv
        env["PFNDIFF_PAIRS"] = ";".join(f"{a}~{b}" for a, b in self.pairs)
        env["PFNDIFF_ARTIFACTS"] = os.path.abspath(self.stats_root())
        env[crash_mode.ENV] = "1" if self.crash else "0"      # never inherited: keep-going is the default
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def stats_root(self) -> str:
        return self.artifacts

    def run(self) -> int:
        """Run the workers for the time budget; 130 when interrupted, else the exit status of the
        first worker that stopped for good before the end (``_not_restarted``), else 0."""
        os.makedirs(self.corpus, exist_ok=True)
        os.makedirs(self.artifacts, exist_ok=True)
        self._dict = os.path.join(self.artifacts, ".pfndiff.dict")
        art.atomic_write(self._dict, libfuzzer_dictionary().encode())
        log_path = self.log or os.path.join(self.artifacts, "libfuzzer.log")
        t0 = self._started = time.time()
        before = _known_signatures(self.artifacts)
        self._env = self.env()
        self._env["PFNDIFF_T0"] = repr(t0)
        self._workers = workers = [Worker(k, worker_log(log_path, k)) for k in range(self.jobs)]
        self.out(f"pfndiff fuzz: {', '.join(f'{a} vs {b}' for a, b in self.pairs)}; {self.seconds}s, "
                 f"{self._jobs_text()}; corpus {self.corpus}; artifacts {self.artifacts}; log {log_path}"
                 + (f" (worker k: {os.path.basename(worker_log(log_path, 1)).replace('.1.', '.<k>.')})"
                    if self.jobs > 1 else ""))
        self._interrupt_on(signal.SIGINT, signal.SIGTERM)
        self._record({"event": "start", "t0": t0, "pairs": [f"{a}~{b}" for a, b in self.pairs],
                      "seconds": self.seconds, "jobs": self.jobs,
                      "corpus": os.path.relpath(os.path.abspath(self.corpus), os.path.abspath(self.artifacts)),
                      "seeds": [os.path.abspath(s) for s in self.seeds]})
        interrupted = False
        try:
            for w in workers:
                self._start(w, self.seconds)
            self._watch(before)
        except KeyboardInterrupt:
            interrupted = True
            self.out("pfndiff fuzz: interrupted, stopping libFuzzer (corpus and artifacts are kept)")
        finally:
            self._holding = True                   # a second Ctrl-C must not cut the stopping short
            try:
                stop_all(workers)
            finally:
                for w in workers:
                    w.close()
                self._holding = self._held = False
        self.out(self.status_line(time.time() - t0, self._progress(), before, "end"))
        self.out(self.findings_table(before))
        return 130 if interrupted else self._failed

    # --- the workers ------------------------------------------------------------------------------
    _dict: str = field(default="", init=False, repr=False)
    _env: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _workers: list[Worker] = field(default_factory=list, init=False, repr=False)
    _failed: int = field(default=0, init=False, repr=False)      # exit status of the first worker that stopped early

    def _jobs_text(self) -> str:
        cores = os.cpu_count() or 1
        if self.jobs > cores:
            return f"{self.jobs} workers on {cores} core(s) (more workers than cores: they share them)"
        return f"{self.jobs} worker(s)"

    _holding: bool = field(default=False, init=False, repr=False)    # Ctrl-C/SIGTERM held off
    _held: bool = field(default=False, init=False, repr=False)       # and one came meanwhile

    def _interrupt_on(self, *sigs: int) -> None:
        """Ctrl-C and SIGTERM end the campaign cleanly, even where the shell started us with SIGINT
        ignored (background jobs of non-interactive shells); not while a worker is being started
        (its process would be left running unknown) or the workers are being stopped."""
        def handler(signum, frame):
            if self._holding:
                self._held = True
                return
            raise KeyboardInterrupt
        for sig in sigs:
            signal.signal(sig, handler)

    @contextmanager
    def _signals_held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._held:
                self._held = False
                raise KeyboardInterrupt

    def _start(self, w: Worker, seconds: int) -> int:
        with self._signals_held():
            pid = w.start(self.command(self._dict, seconds), self._env)
        self._record({"event": "worker", "worker": w.index, "pid": pid, "restart": len(w.pids) - 1,
                      "t": round(time.time() - self._started, 2), "seconds": seconds,
                      "log": os.path.relpath(os.path.abspath(w.log_path), os.path.abspath(self.artifacts))})
        return pid

    def _watch(self, before: set[str]) -> None:
        """Until every worker has ended: status lines, a worker's early exit, the hard stop."""
        t0, workers = self._started, self._workers
        next_status = t0 + self.status_every
        while not all(w.done for w in workers):
            time.sleep(0.2)
            now = time.time()
            for w in workers:
                rc = w.returncode
                if rc is not None and not w.done:
                    self._ended(w, rc, now - t0)
            if now >= next_status:
                self.out(self.status_line(now - t0, self._progress(), before, "tick"))
                next_status = now + self.status_every
            if now - t0 > self.seconds + 30:           # libFuzzer should have stopped itself
                stop_all(workers)

    def _ended(self, w: Worker, rc: int, elapsed: float) -> None:
        """A worker's process exited: it ran its time or was stopped; else it died.  In crash mode
        a death is the first finding and stops the campaign (as libFuzzer does with one process);
        otherwise the worker is restarted for the remaining time, at most MAX_RESTARTS times."""
        if w.stopping or rc in (0, -signal.SIGINT, 130):
            w.done = True
            return
        w.deaths.append(rc)
        what = (f"pfndiff fuzz: worker {w.index} (pid {w.pids[-1]}) exited with status {exit_status(rc)} "
                f"after {elapsed:.0f}s" + (f" (its input: {w.prog.unit})" if w.prog.unit else ""))
        left = int(self.seconds - elapsed)
        why, failed = self._not_restarted(w, left)
        if why:
            w.done = True
            w.prog.execs_per_s = 0
            if failed:
                self._failed = self._failed or exit_status(rc)
            self.out(f"{what}; not restarted: {why}; log {w.log_path}")
            w.note(f"not restarted: {why}")
            self._record({"event": "worker_end", "worker": w.index, "pid": w.pids[-1], "status": exit_status(rc),
                          "t": round(elapsed, 2), "why": why})
            if self.crash:
                stop_all(self._workers)
            return
        n = len(w.deaths)
        w.note(f"exited with status {exit_status(rc)}; restarted for the remaining {left}s "
               f"(restart {n} of at most {MAX_RESTARTS})")
        pid = self._start(w, left)
        self.out(f"{what}; restarted for the remaining {left}s as pid {pid} (restart {n} of at most "
                 f"{MAX_RESTARTS}); log {w.log_path}")

    def _not_restarted(self, w: Worker, left: int) -> tuple[str, bool]:
        """Why a worker that died is not restarted ("" when it is), and whether that fails the
        campaign (a death in the last seconds does not: the time was as good as used)."""
        if self.crash:
            return "crash mode stops at the first finding" + ("; stopping the other workers"
                                                               if len(self._workers) > 1 else ""), True
        if not w.prog.inited:
            return "it failed before fuzzing", True
        if len(w.deaths) > MAX_RESTARTS:
            return f"{MAX_RESTARTS} restarts used", True
        if left < MIN_RESTART_SECONDS:
            return f"{max(left, 0)}s left", False
        return "", False

    def _progress(self) -> Progress:
        return combined([w.prog for w in self._workers])

    def _running(self) -> int:
        return sum(1 for w in self._workers if w.running)

    def _restarts(self) -> int:
        return sum(len(w.pids) - 1 for w in self._workers)

    def _pool_text(self, final: bool) -> str:
        """The workers in a status line, when there is more than one or one was restarted."""
        n = len(self._workers)
        restarts = self._restarts()
        if n <= 1 and not restarts:
            return ""
        running = self._running()
        text = f"{n} worker{'s' * (n > 1)}" if final or running == n else f"{running} of {n} workers running"
        return f" ({text}, {restarts} restart(s))" if restarts else f" ({text})"

    # --- reporting ------------------------------------------------------------------------------
    def aggregate(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """Executions and signatures over every worker's counters.  A worker's counters are written
        every few seconds (fuzz.judging.engine.STATS_EVERY) and not when libFuzzer ends the process
        (it leaves through C ``exit``, past Python's exit handlers), so a worker that has ended counts
        the executions libFuzzer printed for it, when that is more."""
        execs = 0
        sigs: dict[str, dict[str, Any]] = {}
        self.compared = {}
        final = {w.proc.pid: w.prog.final_execs for w in self._workers if w.proc is not None}
        for st in art.read_stats(self.artifacts):
            if abs(st.get("t0", 0) - self._started) > 1e-3:
                continue                                  # an earlier campaign in the same directory
            execs += max(st.get("execs", 0), final.get(st.get("pid", -1), 0))
            for pair, c in (st.get("compared") or {}).items():
                self.compared.setdefault(pair, Coverage()).add(Coverage(**c))
            for s, v in st.get("signatures", {}).items():
                cur = sigs.get(s)
                if cur is None:
                    sigs[s] = dict(v)
                else:
                    cur["count"] += v["count"]
                    if v["first_seen"] < cur["first_seen"]:
                        cur["first_seen"], cur["first_input"] = v["first_seen"], v["first_input"]
                        cur["cause"] = v.get("cause") or cur.get("cause")
        return execs, sigs

    _started: float = 0.0

    def _record(self, rec: dict[str, Any]) -> None:
        """A history record; a full disk or a read-only directory must not stop the campaign."""
        try:
            history.append(self.artifacts, {"run": self.run_id, **rec})
        except OSError as e:
            if not self._history_failed:
                self._history_failed = True
                self.out(f"pfndiff fuzz: cannot record history in {history.path_in(self.artifacts)}: {e.strerror}")

    _history_failed: bool = False

    def status_line(self, elapsed: float, prog: Progress, before: set[str], event: str = "") -> str:
        """``before``: signature ids already claimed in this artifacts directory by earlier campaigns.
        With ``event``, the numbers are also appended to the campaign's history (fuzz.campaigns.history)."""
        execs, sigs = self.aggregate()
        new = len({(v.get("cause") or {}).get("id", s) for s, v in sigs.items() if not v["known"]})
        known = sum(1 for v in sigs.values() if v["known"])
        rate = prog.execs_per_s or (int(execs / elapsed) if elapsed > 0 else 0)
        if event:
            seen = self._seen_causes()
            causes = {(v.get("cause") or {}).get("id", s): signature_id(s) in before
                      for s, v in sigs.items() if not v["known"]}
            again = sum(1 for c, earlier in causes.items() if earlier or c in seen)   # the user has seen these
            self._record({"event": event, "t": round(elapsed, 2), "execs": execs, "exec_s": rate,
                          "corpus": prog.corp, "cov": prog.cov, "ft": prog.ft,
                          "workers": self._running(), "restarts": self._restarts(),
                          "new": new - again, "new_seen_before": again, "known": known,
                          "known_execs": sum(v["count"] for v in sigs.values() if v["known"])})
        return (f"[{elapsed:6.0f}s] execs {execs}  exec/s {rate}{self._pool_text(event == 'end')}  corpus {prog.corp}  "
                f"cov {prog.cov} ft {prog.ft}  "
                f"findings: {new} root cause(s), {known} catalogued signature(s)")

    def causes(self) -> tuple[int, list[dict[str, Any]], dict[str, int]]:
        """This campaign's unknown findings grouped by root cause (fuzz.judging.rootcause), each with its
        signatures, count, first time and first input; and the known signatures by entry."""
        execs, sigs = self.aggregate()
        by: dict[str, dict[str, Any]] = {}
        known: dict[str, int] = {}
        for s, v in sigs.items():
            if v["known"]:
                for e in v["entries"]:
                    known[e] = known.get(e, 0) + v["count"]
                continue
            c = v.get("cause") or {"id": "sig-" + signature_id(s), "kind": "signature", "title": s, "spec": []}
            g = by.setdefault(c["id"], {"cause": c, "signatures": [], "count": 0, "first_seen": v["first_seen"],
                                        "first_input": v["first_input"], "pair": v["pair"]})
            g["signatures"].append(s)
            g["count"] += v["count"]
            if v["first_seen"] <= g["first_seen"]:
                g["first_seen"], g["first_input"], g["pair"] = v["first_seen"], v["first_input"], v["pair"]
                g["first_signature"] = s
        for g in by.values():
            g.setdefault("first_signature", g["signatures"][0])
        return execs, list(by.values()), known

    _seen: dict[str, str] | None = None

    def _seen_causes(self) -> dict[str, str]:
        """``known_causes``, read once per run: what the user had seen before this run started (earlier
        campaigns, corpus/regressions, --join'ed triages) does not change while it runs."""
        if self._seen is None:
            self._seen = self.known_causes()
        return self._seen

    def known_causes(self) -> dict[str, str]:
        """cause id -> where the user has seen it already."""
        return self.known(self.artifacts, self._started, list(self.join)) if self.known is not None else {}

    def findings_table(self, before: set[str]) -> str:
        """NEW causes first (real generation differences before literal-sketch quirks), one line
        each; then the causes the user already knows, then the catalogued divergences."""
        execs, groups, known = self.causes()
        seen = self._seen_causes() if groups else {}
        new = [g for g in groups if g["cause"]["id"] not in seen]
        old = [g for g in groups if g["cause"]["id"] in seen]
        new.sort(key=_cause_order)
        old.sort(key=_cause_order)
        nsig = sum(len(g["signatures"]) for g in groups)
        lines = [f"findings after {execs} executions: {len(new)} NEW root cause(s), {len(old)} already known "
                 f"({nsig} distinct signature(s)); {len(known)} catalogued divergence(s) counted"]
        if groups:
            lines.append(f"{'':5} {'cause':<12}  {'count':>6}  {'first@s':>7}  {'pair':<34}  {'spec rows':<12}  "
                         f"{'first input (bytes, minimised)':<62}  what")
        for tag, gs in (("NEW", new), ("known", old)):
            for g in gs:
                c = g["cause"]
                spec = ",".join(self._spec_rows(g)) or "-"
                first = _first_input(self.artifacts, g["first_signature"]) or g["first_input"]
                size = self._sizes(first, g) if tag == "NEW" else self._size(first)
                where = f" [seen in {seen[c['id']]}]" if tag == "known" else ""
                sigs = f" ({len(g['signatures'])} signatures)" if len(g["signatures"]) > 1 else ""
                lines.append(f"{tag:<5} {c['id']:<12}  {g['count']:>6}  {g['first_seen']:>7.1f}  {g['pair']:<34}  "
                             f"{spec:<12}  {first + ' ' + size:<62}  {c.get('title', '')}{sigs}{where}")
        for a, b in self.pairs:
            c = self.compared.get(f"{a}~{b}", Coverage())
            lines.append(f"{a} vs {b}: {c.summary(a, b)}")
        if known:
            lines.append("known (catalogued) divergences, by entry: " +
                         ", ".join(f"{e} x{c}" for e, c in sorted(known.items(), key=lambda x: -x[1])))
        return "\n".join(lines)

    def _spec_rows(self, g: dict[str, Any]) -> list[str]:
        """The rows that apply to the cause: its sidecar's, when the sidecar was written for this
        cause, else the cause's own."""
        first = _first_input(self.artifacts, g["first_signature"]) or g["first_input"]
        side = _sidecar(self.artifacts, first)
        if ((side.get("root_cause") or {}).get("id")) == g["cause"].get("id"):
            return list(side.get("spec_ids") or [])
        return list(g["cause"].get("spec") or [])

    def _size(self, name: str) -> str:
        try:
            return f"({os.path.getsize(os.path.join(self.artifacts, name))} B)"
        except OSError:
            return ""

    def _sizes(self, name: str, g: dict[str, Any]) -> str:
        """The first input's size and the size of its minimised form (same signature)."""
        path = os.path.join(self.artifacts, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return ""
        if not self.minimize or self.shrink is None:
            return f"({len(data)} B)"
        try:
            a, _, b = g["pair"].partition("~")
            return f"({len(data)} B, min {self.shrink(data, (a, b), g['first_signature'])} B)"
        except Exception:
            return f"({len(data)} B)"


def _cause_order(g: dict[str, Any]) -> tuple[bool, float]:
    """Differences between generations before the literal sketch's quirks, then by time found."""
    return g["cause"].get("kind") == "quirk", g["first_seen"]


def _known_signatures(artifacts: str) -> set[str]:
    try:
        return set(os.listdir(os.path.join(artifacts, art.SIGNATURE_DIR)))
    except OSError:
        return set()


def _first_input(artifacts: str, signature: str) -> str | None:
    try:
        with open(os.path.join(artifacts, art.SIGNATURE_DIR, signature_id(signature)), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _sidecar(artifacts: str, name: str) -> dict[str, Any]:
    try:
        doc = art.read_sidecar(os.path.join(artifacts, name + ".yaml"))
        return doc if isinstance(doc, dict) else {}
    except ScenarioError:                 # bounded, schema-checked; a bad sidecar shows no spec ids
        return {}
