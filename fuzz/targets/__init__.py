"""Executable libFuzzer targets (atheris).  Run them directly: ``fuzz/targets/diff_target.py``.

``CONTINUOUS`` names the targets an engine fuzzes continuously (the ClusterFuzzLite/OSS-Fuzz
build, ``.clusterfuzzlite/build.sh``): entry file stem -> the ``pfndiff corpus build`` directory
that is its seed corpus.  ``empty_target`` is left out on purpose: it is the throughput baseline
of ``bench/throughput.py`` and can find nothing.  ``python3 -m fuzz.targets`` prints the table.
"""

CONTINUOUS = {"diff_target": "diff"}
BASELINES = ("empty_target",)
