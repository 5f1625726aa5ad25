#!/usr/bin/env python3
"""Executions per second of the differential target (a backend pair) in each feedback mode
(semantic: pfndiff's features as libFuzzer counters; bytecode: instrumented generations) and of
an empty atheris target, measured in the same run under real libFuzzer, and their ratios; then
the default campaign (``make fuzz``: fuzz.campaigns.campaign.DEFAULT_PAIRS, the bundled corpus,
the codec's dictionary) in each mode, as executions over its wall time, with one worker and with
one worker per core (``make fuzz``'s default; its total and per core).  ``--profile`` adds an
in-process profile of the differential check (no libFuzzer, no instrumentation) with the hot
spots.  Not part of the test run.

    .venv/bin/python bench/throughput.py [--time 20] [--pair sim:g2~sim:g3] [--no-campaign] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time

from fuzz.campaigns.campaign import DEFAULT_PAIRS, TARGETS, Campaign
from fuzz.corpus.seeds import OUT, build_corpus
from fuzz.targets.atheris_compat import FEEDBACK_ENV, FEEDBACK_MODES

TARGET_PER_CORE = 6_000
STRETCH_PER_CORE = 25_000
TARGET_CAMPAIGN = 4_000


def run_target(name: str, seconds: int, pairs: str, corpus: str, feedback: str = "") -> tuple[int, float, float]:
    """(executions, exec/s, CPU seconds) of one single-process libFuzzer run on a copy of the seed
    corpus.  The CPU time gives a rate that holds on a machine shared with others (exec/s is over
    wall time, libFuzzer's own figure)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "corpus")
        os.makedirs(work)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env["PFNDIFF_PAIRS"], env["PFNDIFF_ARTIFACTS"] = pairs, os.path.join(tmp, "art")
        if feedback:
            env[FEEDBACK_ENV] = feedback
        t, cpu = time.time(), _children_cpu()
        r = subprocess.run([TARGETS[name], f"-max_total_time={seconds}", "-print_final_stats=1",
                            f"-artifact_prefix={tmp}/", work, corpus],
                           env=env, capture_output=True, timeout=seconds + 120)
        wall, cpu = time.time() - t, _children_cpu() - cpu
        m = re.search(rb"stat::number_of_executed_units:\s*(\d+)", r.stderr)
        if r.returncode != 0 or not m:
            tail = r.stderr[-500:].decode(errors="replace")
            sys.exit(f"throughput: {name} target failed (exit {r.returncode}): {tail}")
        execs = int(m.group(1))
        rate = re.search(rb"stat::average_exec_per_sec:\s*(\d+)", r.stderr)
        return execs, float(rate.group(1)) if rate else execs / wall, cpu


def run_campaign(seconds: int, corpus: str, feedback: str, jobs: int = 1) -> tuple[int, float, float]:
    """(executions, exec/s, CPU seconds of its workers) of the default campaign as ``make fuzz
    FUZZ_JOBS=<jobs>`` runs it, over its whole wall time (start-up included), in a scratch
    directory.  The CPU time tells how many cores the workers had on a machine shared with others."""
    old = os.environ.get(FEEDBACK_ENV)
    os.environ[FEEDBACK_ENV] = feedback
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c = Campaign(list(DEFAULT_PAIRS), seconds, jobs, os.path.join(tmp, "corpus"), os.path.join(tmp, "art"),
                         [corpus], status_every=3600, out=lambda line: None, minimize=False)
            t, cpu = time.time(), _children_cpu()
            c.run()
            wall, cpu = time.time() - t, _children_cpu() - cpu
            execs, _ = c.aggregate()
    finally:
        if old is None:
            del os.environ[FEEDBACK_ENV]
        else:
            os.environ[FEEDBACK_ENV] = old
    return execs, execs / wall, cpu


def _children_cpu() -> float:
    """User + system seconds of the child processes waited for so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def profile(pairs: str, corpus: str, n: int) -> None:
    from fuzz.judging.engine import Checker, parse_pairs
    inputs = [open(os.path.join(corpus, f), "rb").read() for f in sorted(os.listdir(corpus))]
    c = Checker(parse_pairs(pairs), None)
    t = time.perf_counter()
    for i in range(n):
        c.check(inputs[i % len(inputs)])
    per = (time.perf_counter() - t) / n
    print(f"in-process, uninstrumented: {per * 1e6:.0f} us per input ({1 / per:.0f} exec/s) over the seed corpus")
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        c.check(inputs[i % len(inputs)])
    prof.disable()
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=int, default=20, help="seconds per target")
    ap.add_argument("--pair", default="sim:g2~sim:g3")
    ap.add_argument("--feedback", action="append", choices=FEEDBACK_MODES,
                    help="feedback modes to measure (repeatable; default: semantic and bytecode)")
    ap.add_argument("--no-campaign", action="store_true", help="skip the default campaign's rows")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-inputs", type=int, default=3000)
    args = ap.parse_args()
    args.feedback = args.feedback or ["semantic", "bytecode"]
    build_corpus()
    corpus = os.path.join(OUT, "diff")
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)")
    empty_n, empty_rate, _ = run_target("empty", args.time, args.pair, corpus)
    rates = {m: run_target("diff", args.time, args.pair, corpus, m) for m in args.feedback}
    cores = os.cpu_count() or 1
    jobs = [1] + ([cores] if cores > 1 else [])
    campaign = {} if args.no_campaign else {(m, j): run_campaign(args.time, corpus, m, j)
                                            for m in args.feedback for j in jobs}
    print(f"load after:  {os.getloadavg()[0]:.2f}")
    print(f"{'target':<34} {'exec/s':>10} {'executions':>11} {'/empty':>8}  per core vs {TARGET_PER_CORE:,}")
    print(f"{'empty atheris target':<34} {empty_rate:>10,.0f} {empty_n:>11} {1:>8.4f}")
    for m, (n, rate, cpu) in rates.items():
        verdict = "meets" if rate >= TARGET_PER_CORE else "misses"
        print(f"{'diff ' + args.pair + ' ' + m:<34} {rate:>10,.0f} {n:>11} {rate / empty_rate:>8.4f}  "
              + (f"{n / cpu:,.0f} per CPU second; " if n and cpu > 0 else "")
              + f"{verdict} ({rate / TARGET_PER_CORE:.0%}; "
              f"stretch {STRETCH_PER_CORE:,}: {rate / STRETCH_PER_CORE:.0%})")
    for (m, j), (n, rate, cpu) in campaign.items():
        verdict = "meets" if rate >= TARGET_CAMPAIGN else "misses"
        per_core = ((f"{rate / j:,.0f} per core, " if j > 1 else "")
                    + (f"{n / cpu:,.0f} per CPU second ({cpu * rate / n:.2f} cores busy); " if n and cpu > 0 else ""))
        print(f"{f'make fuzz campaign {m} {j} job' + 's' * (j > 1):<34} {rate:>10,.0f} {n:>11} "
              f"{rate / empty_rate:>8.4f}  {per_core}{verdict} {TARGET_CAMPAIGN:,} ({rate / TARGET_CAMPAIGN:.0%}); "
              "pairs " + ", ".join(f"{a}~{b}" for a, b in DEFAULT_PAIRS))
    if args.profile:
        profile(args.pair, corpus, args.profile_inputs)


if __name__ == "__main__":
    main()
