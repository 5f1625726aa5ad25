"""A fuzzing campaign: run the differential target under libFuzzer for a time budget, report
progress, survive findings and Ctrl-C, and end with a findings table.

Why one target process for several pairs: each input is run once per backend and compared for
every pair, so pairs share the budget and the corpus (``--pair a~b --pair a~c`` costs three
backend runs per input, not four).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fuzz.campaigns import history
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
_STAT = re.compile(r"(cov|ft|corp|exec/s):?\s*(\d+)")


@dataclass
class Progress:
    """The latest numbers libFuzzer printed."""
    cov: int = 0
    ft: int = 0
    corp: int = 0
    execs_per_s: int = 0
    lines: int = 0


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

    def command(self, dict_path: str) -> list[str]:
        cmd = [TARGETS["diff"], f"-max_total_time={self.seconds}", f"-artifact_prefix={self.artifacts}/",
               f"-dict={dict_path}", "-print_final_stats=1", "-reload=1"]
        if self.jobs > 1:
            cmd += [f"-fork={self.jobs}", "-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1"]
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
        os.makedirs(self.corpus, exist_ok=True)
        os.makedirs(self.artifacts, exist_ok=True)
        dict_path = os.path.join(self.artifacts, ".pfndiff.dict")
        art.atomic_write(dict_path, libfuzzer_dictionary().encode())
        log_path = self.log or os.path.join(self.artifacts, "libfuzzer.log")
        t0 = self._started = time.time()
        before = _known_signatures(self.artifacts)
        prog = Progress()
        env = self.env()
        env["PFNDIFF_T0"] = repr(t0)
        cmd = self.command(dict_path)
        self.out(f"pfndiff fuzz: {', '.join(f'{a} vs {b}' for a, b in self.pairs)}; {self.seconds}s, "
                 f"{self.jobs} job(s); corpus {self.corpus}; artifacts {self.artifacts}; log {log_path}")
        _interrupt_on(signal.SIGINT, signal.SIGTERM)
        self._record({"event": "start", "t0": t0, "pairs": [f"{a}~{b}" for a, b in self.pairs],
                      "seconds": self.seconds, "jobs": self.jobs,
                      "corpus": os.path.relpath(os.path.abspath(self.corpus), os.path.abspath(self.artifacts)),
                      "seeds": [os.path.abspath(s) for s in self.seeds]})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, env=env, start_new_session=True)
            reader = threading.Thread(target=_pump, args=(proc, log, prog), daemon=True)
            reader.start()
            interrupted = False
            try:
                next_status = t0 + self.status_every
                while proc.poll() is None:
                    time.sleep(0.2)
                    now = time.time()
                    if now >= next_status:
                        self.out(self.status_line(now - t0, prog, before, "tick"))
                        next_status = now + self.status_every
                    if now - t0 > self.seconds + 30:           # libFuzzer should have stopped itself
                        _stop(proc)
            except KeyboardInterrupt:
                interrupted = True
                self.out("pfndiff fuzz: interrupted, stopping libFuzzer (corpus and artifacts are kept)")
                _stop(proc)
            reader.join(timeout=5)
        self.out(self.status_line(time.time() - t0, prog, before, "end"))
        self.out(self.findings_table(before))
        if interrupted:
            return 130
        return 0 if proc.returncode in (0, -signal.SIGINT, 130) or proc.returncode is None else proc.returncode

    # --- reporting ------------------------------------------------------------------------------
    def aggregate(self) -> tuple[int, dict[str, dict[str, Any]]]:
        execs = 0
        sigs: dict[str, dict[str, Any]] = {}
        self.compared = {}
        for st in art.read_stats(self.artifacts):
            if abs(st.get("t0", 0) - self._started) > 1e-3:
                continue                                  # an earlier campaign in the same directory
            execs += st.get("execs", 0)
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
                          "new": new - again, "new_seen_before": again, "known": known,
                          "known_execs": sum(v["count"] for v in sigs.values() if v["known"])})
        return (f"[{elapsed:6.0f}s] execs {execs}  exec/s {rate}  corpus {prog.corp}  cov {prog.cov} ft {prog.ft}  "
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


def _interrupt_on(*sigs: int) -> None:
    """Ctrl-C and SIGTERM end the campaign cleanly, even where the shell started us with SIGINT
    ignored (background jobs of non-interactive shells)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    for s in sigs:
        signal.signal(s, handler)


def _pump(proc: subprocess.Popen, log, prog: Progress) -> None:
    """Copy libFuzzer's stderr to the log and keep its latest numbers."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        log.write(raw)
        prog.lines += 1
        line = raw.decode("utf-8", errors="replace")
        if "cov:" in line or "corp:" in line:
            for k, v in _STAT.findall(line):
                if k == "cov":
                    prog.cov = int(v)
                elif k == "ft":
                    prog.ft = int(v)
                elif k == "corp":
                    prog.corp = int(v)
                else:
                    prog.execs_per_s = int(v)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (libFuzzer exits cleanly and keeps what it wrote), then escalate."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


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
