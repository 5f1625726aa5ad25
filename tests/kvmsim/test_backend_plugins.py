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


def test_real_host_backends_register_through_the_entry_point_hook():
    """The model's registry names only its own classes; ``host``, ``host:emulated`` and the
    ``qemu:`` family come from kernel_shim's function in the ``pfndiff.backends`` group."""
    from importlib.metadata import entry_points

    from kvmsim.backend import HOOKS_GROUP, PREFIXES, REGISTRY, backend_names
    assert [ep.value for ep in entry_points(group=HOOKS_GROUP)] == ["kernel_shim.plugin:register_backends"]
    names = backend_names()
    assert {"host", "host:emulated"} <= set(names) and PREFIXES["qemu"][0].startswith("kernel_shim.")
    assert all(REGISTRY[n][0].startswith("kvmsim.") for n in names if n.startswith("sim:"))
    with open(os.path.join(HERE, "..", "..", "kvmsim", "backend.py"), encoding="utf-8") as fh:
        assert "kernel_shim" not in fh.read()
    assert get_backend("qemu:6.1").name == "qemu:6.1"


RO_SLOT = """
version: 1
world:
  vmas: [{name: ram, pages: 1, state: present_rw}]
  memslots: [{id: 0, gfn: 0x100, pages: 1, vma: ram, readonly: true}]
ops:
  - lookup: {gfn: 0x100, try_writable: true}
"""


def test_a_patched_shared_module_is_used_by_the_one_generation_copy_that_imports_it(tmp_path):
    """A plugin entry without "backend" only loads a module: a patched copy of the GUP-era path,
    imported by one generation's copy under the shared module's name; the others keep the original."""
    kv = os.path.join(HERE, "..", "..", "kvmsim")
    shared = open(os.path.join(kv, "gup_era.py"), encoding="utf-8").read()
    old = "if writable_out is not None and slot is not None and slot.readonly:"
    assert shared.count(old) == 1
    (tmp_path / "gup_era_copy.py").write_text(shared.replace(old, old[:-1] + " and write_fault:"))
    g1 = open(os.path.join(kv, "g1_legacy.py"), encoding="utf-8").read()
    imp = "from . import gup_era\n"
    assert g1.count(imp) == 1
    (tmp_path / "g1_copy.py").write_text(g1.replace(imp, "from . import _test_gup_era_copy as gup_era\n"))
    plugins = tmp_path / "plugins.json"
    plugins.write_text(json.dumps([
        {"module": "kvmsim._test_gup_era_copy", "file": str(tmp_path / "gup_era_copy.py")},
        {"backend": "sim:g1-shared-test", "module": "kvmsim._test_g1_copy", "file": str(tmp_path / "g1_copy.py"),
         "class": "G1Legacy"}]))
    assert load_plugins(str(plugins)) == ["sim:g1-shared-test"]
    sc = loads_scenario(RO_SLOT, "t.yaml")
    copy = get_backend("sim:g1-shared-test")
    assert [m.__name__ for m in copy.gen.builds_on] == ["kvmsim._test_gup_era_copy"]
    assert copy.run(sc).records[0].api["writable"] is True                 # I1 broken in the copy only
    assert get_backend("sim:g1").run(sc).records[0].api["writable"] is False
    assert get_backend("sim:g2").run(sc).records[0].api["writable"] is False
