#!/usr/bin/env python3
"""libFuzzer target: differential fuzzing of backend pairs.

Pairs come from ``PFNDIFF_PAIRS`` (``sim:g2~sim:g3;sim:g2~sim:g2s-literal``) or from an
argument ``--pairs=...`` (removed before libFuzzer sees argv); findings go to
``PFNDIFF_ARTIFACTS`` (default ``./artifacts``).  Executable with a shebang so that libFuzzer's
``-fork``, ``-jobs`` and ``-merge`` can re-run it.  Known divergences are counted, unknown ones
written as ``crash-<sha1>`` + YAML sidecar; by default the target never crashes on a finding.

Crash mode (``--crash`` or ``PFNDIFF_CRASH=1``; on by default in the ClusterFuzzLite build): an
unknown divergence raises an uncaught exception whose innermost frames name it (fuzz.judging.crash), so
libFuzzer writes the input and an engine such as ClusterFuzzLite files it.  Sidecars are then
written only where ``PFNDIFF_ARTIFACTS`` is set.
"""

import os
import sys

from fuzz.targets.atheris_compat import FeatureCounters, fuzz, instrumented, semantic_feedback
from fuzz.targets.gc_policy import PeriodicCollector

with instrumented():
    import kvmsim.g1_legacy  # noqa: F401,E402  (every generation, instrumented)
    import kvmsim.g2_noref  # noqa: F401,E402
    import kvmsim.g2f_posted  # noqa: F401,E402
    import kvmsim.g2s_sketch  # noqa: F401,E402
    import kvmsim.g3_merged  # noqa: F401,E402
    import kvmsim.sim_backend  # noqa: F401,E402
    from fuzz.inputs import codec  # noqa: F401,E402

from fuzz.judging import crash
from fuzz.judging.cells import outcome, trace_cells
from fuzz.judging.engine import MEMO_SIZE, Checker, parse_pairs
from fuzz.judging.judge import Judgement
from kvmsim.scenario import Scenario
from oracles.bounded import BoundedMemo


def _features(sc: Scenario, j: Judgement) -> list[object]:
    """The cells each trace's op records reached (per backend), then each oracle outcome."""
    out: list[object] = list(trace_cells(sc.ops, j.traces, differing=_differing_as_run(j)))
    out.extend((d.left, d.right, outcome(d)) for d in j.found)
    return out


def _differing_as_run(j: Judgement) -> dict[tuple[str, str], dict]:
    """The pairs' differing records, for the pairs that compared the traces the backends ran (not
    a model re-run over what a real backend ran)."""
    out = {}
    for p, by_op in j.differing.items():
        compared = j.compared.get(p)
        if compared is not None and compared[0] is j.traces.get(p[0]) and compared[1] is j.traces.get(p[1]):
            out[p] = by_op
    return out


def semantic_observer(counters: FeatureCounters, keep: int = MEMO_SIZE):
    """Feeds each judgement's features to libFuzzer: the cell every op record of every trace
    reached (per backend) and every oracle outcome (per pair or backend).  A judgement the
    checker remembered (the same scenario again) reuses the features found the first time."""
    seen: BoundedMemo[int, tuple[Judgement, tuple]] = BoundedMemo(keep)    # id -> (judgement, its counters or features)
    by_slot = hasattr(counters, "hit_slots")             # FeatureCounters; a plain collector has only hit

    def observe(sc: Scenario, j: Judgement) -> None:
        got = seen.get(id(j))
        if got is None or got[0] is not j:
            found = _features(sc, j)
            got = seen.put(id(j), (j, counters.slots(found) if by_slot else tuple(found)))
        if by_slot:
            counters.hit_slots(got[1])
            return
        for f in got[1]:
            counters.hit(f)
    return observe


def _own_flags(argv: list[str]) -> str:
    """Take --pairs= and --crash out of ``argv`` (libFuzzer's flags stay) into the environment,
    which fork/jobs children re-read; the pairs to judge."""
    pairs = os.environ.get("PFNDIFF_PAIRS", "sim:g2~sim:g3")
    for a in list(argv[1:]):
        if a.startswith("--pairs="):
            pairs = a.split("=", 1)[1]
            argv.remove(a)
            os.environ["PFNDIFF_PAIRS"] = pairs
        elif a == "--crash":
            argv.remove(a)
            os.environ[crash.ENV] = "1"
    return pairs


def _campaign_t0() -> float | None:
    """When the campaign started (PFNDIFF_T0), so every worker's times share one origin."""
    try:
        return float(os.environ.get("PFNDIFF_T0", "0")) or None
    except ValueError:
        return None


def main() -> None:
    argv = list(sys.argv)
    pairs = _own_flags(argv)
    t0 = _campaign_t0()
    for a in argv[1:]:                      # libFuzzer refuses a missing artifact directory
        if a.startswith("-artifact_prefix=") and a.endswith("/"):
            os.makedirs(a.split("=", 1)[1], exist_ok=True)
    crashing = crash.enabled()
    artifacts = os.environ.get("PFNDIFF_ARTIFACTS", "" if crashing else "artifacts") or None
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
    checker = Checker(parse_pairs(pairs), artifacts, crash=crashing)
    if semantic_feedback():
        checker.observe = semantic_observer(FeatureCounters())
    if t0:
        checker.t0 = t0

    collector = PeriodicCollector()

    def test_one_input(data: bytes) -> None:
        checker.check(data)
        collector.tick()

    import atexit
    atexit.register(checker.flush)
    collector.start()
    fuzz(test_one_input, argv)


if __name__ == "__main__":
    main()
