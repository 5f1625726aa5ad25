"""Out-of-tree generation modules (kvmsim.backend.load_plugins): a patched copy of a generation
module, loaded under its own name, runs as a backend of its own; the real module is untouched."""

from __future__ import annotations

import json
import os

from kvmsim import get_backend, loads_scenario
from kvmsim.backend import load_plugins

HERE = os.path.dirname(os.path.abspath(__file__))
G3 = os.path.join(HERE, "..", "..", "kvmsim", "g3_merged.py")

SC = """
version: 1
world:
  allow_unsafe_mappings: false
  pages: [{name: dev, kind: none}]
  vmas: [{name: bar, pages: 1, remap: pfnmap, ptes: {0: {page: dev}}}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: bar}]
ops:
  - lookup: {gfn: 0x100, pin: true}
"""


def test_a_patched_copy_runs_as_its_own_backend(tmp_path):
    src = open(G3, encoding="utf-8").read()
    old = "if kfp.pin and not w.allow_unsafe_mappings:"
    assert src.count(old) == 1
    path = tmp_path / "g3_copy.py"
    path.write_text(src.replace(old, "if kfp.pin and w.allow_unsafe_mappings:"))
    plugins = tmp_path / "plugins.json"
    plugins.write_text(json.dumps([{"backend": "sim:g3-test", "module": "kvmsim._test_g3_copy", "file": str(path),
                                    "class": "G3Merged"}]))
    assert load_plugins(str(plugins)) == ["sim:g3-test"]
    sc = loads_scenario(SC, "t.yaml")
    real = get_backend("sim:g3").run(sc).records[0].api["result"]
    copy = get_backend("sim:g3-test").run(sc).records[0].api["result"]
    assert real == "ERR_FAULT" and copy == "pfn"
