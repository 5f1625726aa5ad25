"""``pfndiff corpus minimize IN_DIR... -o OUT_DIR`` and ``pfndiff corpus stats DIR``.

Two passes.  (1) libFuzzer's ``-merge=1`` through the executable fuzz target keeps the inputs
that add code coverage; the merge is *verified* (exit status, libFuzzer's ``MERGE-OUTER`` success
line, a non-empty result for a non-empty input) because a target that cannot start leaves an empty
directory that would otherwise pass for a tiny corpus.  (2) A semantic cover adds back the fewest
inputs (greedy set cover, smaller inputs first on ties) so that every feature of
``fuzz.corpus.features`` (generation × decision-table cell, pair × oracle outcome) that the input corpus
reached is still reached: code coverage alone merges away inputs that take the same lines to a
different row of a generation's table.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from fuzz.campaigns import progress
from fuzz.campaigns.campaign import REPO, TARGETS
from fuzz.corpus.features import DEFAULT_PAIRS, Feature, FeatureExtractor
from fuzz.judging.artifacts import atomic_write
from fuzz.judging.judge import Pair
from kvmsim.yamlsrc import MAX_INPUT_BYTES, ScenarioError, read_bytes

MERGE_TIMEOUT = 3600
_MERGE_LINE = re.compile(r"MERGE-OUTER: (\d+) new files with (\d+) new features added; (\d+) new coverage edges")


class MergeError(Exception):
    """The libFuzzer merge did not really run; ``str()`` is one line."""


@dataclass
class CorpusInput:
    path: str
    data: bytes

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()


@dataclass
class MinimizeReport:
    before_files: int
    before_bytes: int
    merged_files: int
    after_files: int
    after_bytes: int
    features_before: int
    features_after: int
    added_by_cover: int
    log: str
    kept: list[str] = field(default_factory=list)
    coverage: str = ""                  # what libFuzzer's merge reported keeping

    @property
    def share(self) -> float:
        return 1.0 if self.features_before == 0 else self.features_after / self.features_before


def read_corpus(dirs: list[str]) -> list[CorpusInput]:
    """Every regular, non-hidden file of the directories (libFuzzer's view), deduplicated by content."""
    out: dict[str, CorpusInput] = {}
    for d in dirs:
        if not os.path.isdir(d):
            raise MergeError(f"{d}: not a directory")
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if name.startswith(".") or not os.path.isfile(p):
                continue
            try:
                data = read_bytes(p, MAX_INPUT_BYTES, "corpus input")
            except ScenarioError as e:
                raise MergeError(str(e)) from None
            ci = CorpusInput(p, data)
            out.setdefault(ci.sha1, ci)
    return list(out.values())


def _env(pairs: list[Pair], artifacts: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PFNDIFF_PAIRS"] = ";".join(f"{a}~{b}" for a, b in pairs if b)
    env["PFNDIFF_ARTIFACTS"] = artifacts
    return env


def libfuzzer_merge(in_dirs: list[str], out_dir: str, pairs: list[Pair], target: str = TARGETS["diff"],
                    log_path: str | None = None, expect_inputs: int = 1) -> str:
    """Run ``target -merge=1 out_dir in_dirs...`` and verify it; returns the log text.  The target
    runs in a scratch directory (findings it writes during the merge land there, not in the
    user's tree), so every path is made absolute first."""
    target, out_dir = os.path.abspath(target), os.path.abspath(out_dir)
    in_dirs = [os.path.abspath(d) for d in in_dirs]
    with tempfile.TemporaryDirectory(prefix="pfndiff-merge-art-") as arts:
        try:
            r = subprocess.run([target, "-merge=1", out_dir, *in_dirs], env=_env(pairs, arts),
                               capture_output=True, timeout=MERGE_TIMEOUT, cwd=arts)
        except OSError as e:
            raise MergeError(f"{target}: cannot start the merge target: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            raise MergeError(f"{target}: the merge did not finish in {MERGE_TIMEOUT}s") from None
    log = r.stderr.decode("utf-8", "replace") + r.stdout.decode("utf-8", "replace")
    if log_path:
        atomic_write(log_path, log.encode())
    last = next((ln for ln in reversed(log.strip().splitlines()) if ln.strip()), "(no output)")
    where = f" (log: {log_path})" if log_path else ""
    if r.returncode != 0:
        raise MergeError(f"{target}: the merge failed with exit status {r.returncode}: {last.strip()}{where}")
    if "MERGE-OUTER: successful" not in log or "new files with" not in log:
        raise MergeError(f"{target}: exited 0 but libFuzzer reported no completed merge: {last.strip()}{where}")
    if expect_inputs and not any(not n.startswith(".") for n in os.listdir(out_dir)):
        raise MergeError(f"{target}: the merge kept no input out of {expect_inputs}: {last.strip()}{where}")
    return log


def semantic_cover(inputs: list[CorpusInput], feats: dict[str, set[Feature]], start: list[str]) -> list[str]:
    """``start`` plus the fewest further inputs (greedy) that reach every feature of ``inputs``."""
    universe = set().union(*feats.values()) if feats else set()
    chosen = list(dict.fromkeys(start))
    covered: set[Feature] = set().union(*(feats[s] for s in chosen)) if chosen else set()
    size = {i.sha1: len(i.data) for i in inputs}
    remaining = universe - covered
    candidates = [i.sha1 for i in inputs if i.sha1 not in chosen]
    while remaining:
        best = max(candidates, key=lambda s: (len(feats[s] & remaining), -size[s], s))
        gain = feats[best] & remaining
        if not gain:                       # cannot happen: every feature came from some input
            break
        chosen.append(best)
        candidates.remove(best)
        remaining -= gain
    return chosen


def minimize_corpus(in_dirs: list[str], out_dir: str, pairs: list[Pair] | None = None,
                    target: str = TARGETS["diff"]) -> MinimizeReport:
    pairs = pairs or list(DEFAULT_PAIRS)
    if os.path.isdir(out_dir) and any(not n.startswith(".") for n in os.listdir(out_dir)):
        raise MergeError(f"{out_dir}: the output directory is not empty (refusing to mix corpora)")
    inputs = read_corpus(in_dirs)
    os.makedirs(out_dir, exist_ok=True)
    by_sha = {i.sha1: i for i in inputs}
    tmp = tempfile.mkdtemp(prefix=".merge-", dir=out_dir)
    log_path = os.path.join(out_dir, ".merge.log")
    try:
        with progress.stage("corpus minimize: libFuzzer -merge=1", len(inputs), "input(s)") as st:
            log = libfuzzer_merge(in_dirs, tmp, pairs, target, log_path, expect_inputs=len(inputs))
            st.set(len(inputs))
        m = _MERGE_LINE.search(log)
        coverage = f"{m.group(2)} coverage features, {m.group(3)} edges" if m else ""
        merged = []
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as fh:
                s = hashlib.sha1(fh.read()).hexdigest()
            if s in by_sha:
                merged.append(s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ext = FeatureExtractor(pairs)
    feats = _features(inputs, ext, "corpus minimize: decision-table cells and oracle outcomes")
    kept = semantic_cover(inputs, feats, merged)
    for s in kept:
        atomic_write(os.path.join(out_dir, s), by_sha[s].data)
    universe = set().union(*feats.values()) if feats else set()
    after = set().union(*(feats[s] for s in kept)) if kept else set()
    return MinimizeReport(len(inputs), sum(len(i.data) for i in inputs), len(merged), len(kept),
                          sum(len(by_sha[s].data) for s in kept), len(universe), len(universe & after),
                          len(kept) - len(merged), log_path, kept, coverage)


# --- stats -----------------------------------------------------------------------------------------

def corpus_stats(dirs: list[str], pairs: list[Pair] | None = None) -> tuple[int, Counter[Feature]]:
    inputs = read_corpus(dirs)
    ext = FeatureExtractor(pairs or list(DEFAULT_PAIRS))
    counts: Counter[Feature] = Counter()
    for f in _features(inputs, ext, "corpus stats: running every generation").values():
        counts.update(f)
    return len(inputs), counts


def _features(inputs: list[CorpusInput], ext: FeatureExtractor, label: str) -> dict[str, set[Feature]]:
    """Each input's features (every generation runs it), with progress: large corpora take a while."""
    out: dict[str, set[Feature]] = {}
    with progress.stage(label, len(inputs), "input(s)") as st:
        for i in inputs:
            out[i.sha1] = ext.of_bytes(i.data)
            st.advance()
    return out


def format_stats(n: int, counts: Counter[Feature]) -> str:
    lines = [f"{n} input(s)"]
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for (kind, who, text), c in counts.items():
        groups.setdefault((kind, who), []).append((text, c))
    order = sorted(groups, key=lambda k: (k[0] != "cell", k[1]))
    for kind, who in order:
        rows = sorted(groups[(kind, who)], key=lambda x: (x[0].split(" | ")[0], -x[1], x[0]))
        title = f"generation {who}: {len(rows)} decision-table cell(s) reached" if kind == "cell" else \
            f"oracle {who}: {len(rows)} outcome(s)"
        lines += ["", title, f"  {'inputs':>6}  {'cell' if kind == 'cell' else 'outcome'}"]
        lines += [f"  {c:>6}  {t}" for t, c in rows]
    return "\n".join(lines)
