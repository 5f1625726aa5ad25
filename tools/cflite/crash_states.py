"""ClusterFuzz's own reading of fuzz target output: crash type and crash state of each log, and
which pairs of states ClusterFuzz would group as similar.  Runs in the tools venv (the
``clusterfuzz`` package and its dependencies stay out of the project's venv).

usage: python crash_states.py TARGET_NAME LOG...   -> JSON on stdout:
  {"crashes": [{"log", "crash_type", "crash_state": [frames]}], "similar": [[i, j], ...]}
"""

from __future__ import annotations

import itertools
import json
import sys

from clusterfuzz.stacktraces import StackParser
from clusterfuzz.stacktraces.crash_comparer import CrashComparer

MAX_LOG = 4 << 20


def main(argv: list[str]) -> int:
    target, logs = argv[0], argv[1:]
    parser = StackParser(symbolized=True, detect_ooms_and_hangs=True, fuzz_target=target)
    crashes = []
    for log in logs:
        with open(log, encoding="utf-8", errors="replace") as fh:
            info = parser.parse(fh.read(MAX_LOG))
        crashes.append({"log": log, "crash_type": info.crash_type, "crash_state": info.crash_state.splitlines()})
    similar = [[i, j] for i, j in itertools.combinations(range(len(crashes)), 2)
               if CrashComparer("\n".join(crashes[i]["crash_state"]),
                                "\n".join(crashes[j]["crash_state"])).is_similar()]
    json.dump({"crashes": crashes, "similar": similar}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
