"""``python3 -m fuzz.targets``: one line per continuously fuzzed target, ``<entry stem> <corpus>``
(read by ``.clusterfuzzlite/build.sh``)."""

from fuzz.targets import CONTINUOUS

for stem, corpus in CONTINUOUS.items():
    print(stem, corpus)
