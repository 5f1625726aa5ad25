"""Scenario loading errors: every malformed or inconsistent scenario gives a ScenarioError whose
``str()`` is one line ``FILE:LINE: problem`` naming the line of the offending item; the CLI
turns it (and a bad option) into exit status 2 with one stderr line and no traceback."""

from __future__ import annotations

import copy
import importlib
import random
import re

import pytest

from fuzz.cli import main
from fuzz.inputs.codec import decode
from kvmsim import ScenarioError, load_scenario, loads_scenario, make_op
from kvmsim.scenario import MemoryMap, valid_ops, validate
from kvmsim.scenario.validate import CHANGES_MEMORY

replay_module = importlib.import_module("kvmsim.scenario.replay")     # the package exports a function of that name

OK_WORLD = """\
world:
  vmas:
    - {name: ram, pages: 4}
  memslots:
    - {id: 0, gfn: 0x100, pages: 4, vma: ram}
"""

# (id, text, line, fragment of the problem)
CASES = [
    ("malformed-yaml-bracket", "world:\n  vmas: [\nops: []\n", None, "bad YAML"),
    ("malformed-yaml-tab", "world:\n\tvmas: []\nops: []\n", 2, "bad YAML"),
    ("malformed-yaml-indent", "world:\n  vmas: []\n ops: []\n", 3, "bad YAML"),
    ("empty-document", "", 1, "empty"),
    ("root-not-mapping", "- a\n- b\n", 1, "mapping"),
    ("duplicate-key", "world: {}\nops: []\nops: []\n", 3, "duplicate key 'ops'"),
    ("unknown-top-field", "world: {}\nops: []\ncolour: red\n", 3, "unknown field 'colour'"),
    ("missing-ops", "world: {}\n", 1, "missing 'ops'"),
    ("ops-not-list", "world: {}\nops:\n  lookup: {gfn: 1}\n", 3, "'ops' must be a list"),
    ("bad-version", "version: 7\nworld: {}\nops: []\n", 1, "unsupported scenario version 7"),
    ("unknown-op", OK_WORLD + "ops:\n  - lookup: {gfn: 0x100}\n  - frobnicate: {}\n", 8, "unknown op 'frobnicate'"),
    ("unknown-op-field", OK_WORLD + "ops:\n  - lookup:\n      gfn: 0x100\n      colour: red\n", 9,
     "unknown field 'colour' in lookup"),
    ("unknown-world-field", "world:\n  vmas: []\n  weather: rain\nops: []\n", 3, "unknown field 'weather'"),
    ("unknown-vma-field", "world:\n  vmas:\n    - name: ram\n      pages: 1\n      size: 3\nops: []\n", 5,
     "unknown field 'size' in vma"),
    ("unknown-memslot-field", OK_WORLD.replace("vma: ram}", "vma: ram, flags: 3}") + "ops: []\n", 5,
     "unknown field 'flags' in memslot"),
    ("op-missing-required", OK_WORLD + "ops:\n  - lookup: {write: true}\n", 7, "op lookup needs 'gfn'"),
    ("bad-type-int", OK_WORLD + "ops:\n  - lookup: {gfn: lots}\n", 7, "lookup.gfn must be an integer"),
    ("bad-type-bool-for-int", OK_WORLD + "ops:\n  - lookup: {gfn: true}\n", 7, "must be an integer"),
    ("bad-type-float", OK_WORLD + "ops:\n  - lookup: {gfn: 1.5}\n", 7, "must be an integer"),
    ("bad-type-bool", OK_WORLD + "ops:\n  - lookup:\n      gfn: 0x100\n      write: maybe\n", 9,
     "lookup.write must be true or false"),
    ("bad-type-enum", OK_WORLD + "ops:\n  - signal: {kind: loud}\n", 7, "signal.kind must be one of"),
    ("bad-type-vma-pages", "world:\n  vmas:\n    - name: ram\n      pages: four\nops: []\n", 4,
     "vma.pages must be an integer"),
    ("int-out-of-range", "world:\n  vmas:\n    - {name: ram, pages: 100000}\nops: []\n", 3, "out of range"),
    ("op-not-single-key", OK_WORLD + "ops:\n  - {lookup: {gfn: 1}, x86_fault: {gfn: 1}}\n", 7, "exactly one key"),
    ("overlapping-memslots", OK_WORLD.replace("vmas:\n    - {name: ram, pages: 4}",
                                              "vmas:\n    - {name: ram, pages: 8}")
     + "    - {id: 1, gfn: 0x102, pages: 2, vma: ram, offset: 4}\nops: []\n", 6, "overlaps memslot 0"),
    ("memslot-create-overlap", OK_WORLD + "ops:\n  - lookup: {gfn: 0x100}\n"
     "  - memslot_create: {slot: 1, gfn: 0x103, pages: 1, vma: ram}\n", 8, "overlaps memslot 0"),
    ("memslot-past-vma", "world:\n  vmas:\n    - {name: ram, pages: 4}\n  memslots:\n"
     "    - {id: 0, gfn: 0x100, pages: 2, vma: ram}\n    - {id: 1, gfn: 0x200, pages: 3, vma: ram, offset: 2}\n"
     "ops: []\n", 6, "extends past vma 'ram'"),
    ("memslot-unknown-vma", OK_WORLD.replace("vma: ram}", "vma: rom}") + "ops: []\n", 5, "unknown vma 'rom'"),
    ("op-unknown-vma", OK_WORLD + "ops:\n  - madvise: {vma: rom}\n", 7, "unknown or unmapped vma 'rom'"),
    ("op-unmapped-vma", OK_WORLD + "ops:\n  - munmap: {vma: ram}\n  - madvise: {vma: ram}\n", 8,
     "unknown or unmapped vma 'ram'"),
    ("page-state-unknown-page", "world:\n  vmas:\n    - name: ram\n      pages: 4\n      page_states:\n"
     "        0: present_rw\n        2: {state: present_rw, page: nope}\nops: []\n", 7, "unknown page 'nope'"),
    ("pte-unknown-page", "world:\n  vmas:\n    - name: bar\n      pages: 2\n      remap: pfnmap\n      ptes:\n"
     "        0: {writable: false}\n        1: {page: nope}\nops: []\n", 8, "unknown page 'nope'"),
    ("refcount0-page-in-normal-vma", "world:\n  pages:\n    - {name: p, kind: refcount0}\n  vmas:\n"
     "    - name: ram\n      pages: 2\n      page_states:\n        1: {state: present_rw, page: p}\nops: []\n", 8,
     "can only be mapped by a VM_IO/VM_PFNMAP vma"),
    ("page-index-out-of-vma", "world:\n  vmas:\n    - name: ram\n      pages: 2\n      page_states:\n"
     "        5: present_rw\nops: []\n", 6, "page index 5 is not within vma 'ram'"),
    ("op-page-out-of-vma", OK_WORLD + "ops:\n  - page_state: {vma: ram, page: 9, state: needs_io}\n", 7,
     "page 9 is not within vma 'ram'"),
    ("duplicate-vma", "world:\n  vmas:\n    - {name: a, pages: 1}\n    - {name: a, pages: 1}\nops: []\n", 4,
     "duplicate vma name 'a'"),
    ("duplicate-page", "world:\n  pages:\n    - {name: p, kind: normal}\n    - {name: p, kind: normal}\nops: []\n",
     4, "duplicate page name 'p'"),
    ("unbalanced-invalidate-end", OK_WORLD + "ops:\n  - invalidate_end:\n", 7, "without a matching"),
    ("unmap-unknown-handle", OK_WORLD + "ops:\n  - vcpu_unmap: {handle: zz}\n", 7, "no open map 'zz'"),
    ("duplicate-map-handle", OK_WORLD + "ops:\n  - vcpu_map: {gfn: 0x100, handle: h}\n"
     "  - vcpu_map: {gfn: 0x101, handle: h}\n", 8, "already in use"),
    ("memslot-op-unknown-slot", OK_WORLD + "ops:\n  - memslot_delete: {slot: 3}\n", 7, "no memslot 3"),
    ("pte-op-on-normal-vma", OK_WORLD + "ops:\n  - pte: {vma: ram, page: 0}\n", 7, "needs a VM_IO/VM_PFNMAP vma"),
]


@pytest.mark.parametrize("text,line,fragment", [pytest.param(t, ln, f, id=i) for i, t, ln, f in CASES])
def test_scenario_error_names_file_and_line(text, line, fragment) -> None:
    with pytest.raises(ScenarioError) as ei:
        loads_scenario(text, "bad.yaml")
    msg = str(ei.value)
    assert "\n" not in msg
    m = re.fullmatch(r"bad\.yaml:(\d+): (.+)", msg)
    assert m, msg
    if line is not None:
        assert int(m.group(1)) == line, msg
    else:
        assert int(m.group(1)) >= 1, msg
    assert fragment in m.group(2), msg


def test_good_world_loads() -> None:
    sc = loads_scenario(OK_WORLD + "ops:\n  - lookup: {gfn: 0x100}\n", "ok.yaml")
    assert sc.ops[0].kind == "lookup" and sc.ops[0].line == 7 and sc.file == "ok.yaml"


def test_load_scenario_file_errors(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError) as ei:
        load_scenario(str(missing))
    assert str(ei.value).startswith(f"{missing}: ") and "\n" not in str(ei.value)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00world")
    with pytest.raises(ScenarioError) as ei:
        load_scenario(str(binary))
    assert str(ei.value).startswith(f"{binary}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(OK_WORLD + "ops:\n  - frobnicate: {}\n")
    with pytest.raises(ScenarioError) as ei:
        load_scenario(str(bad))
    assert str(ei.value) == f"{bad}:7: unknown op 'frobnicate'"


# --- CLI --------------------------------------------------------------------------------------------

def _cli(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("cmd", ["run", "check"])
@pytest.mark.parametrize("text,line", [
    pytest.param(OK_WORLD + "ops:\n  - frobnicate: {}\n", 7, id="unknown-op"),
    pytest.param("world:\n  vmas: [\nops: []\n", None, id="malformed-yaml"),
    pytest.param(OK_WORLD.replace("vma: ram}", "vma: rom}") + "ops: []\n", 5, id="unknown-vma"),
])
def test_cli_bad_scenario_exit_2_one_line(tmp_path, capsys, cmd, text, line) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    rc, out, err = _cli(capsys, [cmd, str(f)])
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"{f}:" + (f"{line}:" if line else ""))


def test_cli_check_reports_each_bad_file(tmp_path, capsys) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(OK_WORLD + "ops: []\n")
    bad.write_text(OK_WORLD + "ops:\n  - frobnicate: {}\n")
    rc, out, err = _cli(capsys, ["check", str(good), str(bad)])
    assert rc == 2 and err.strip() == f"{bad}:7: unknown op 'frobnicate'" and "good.yaml: ok" in out


@pytest.mark.parametrize("argv", [
    pytest.param(["run", "--no-such-option", "x.yaml"], id="unknown-option"),
    pytest.param(["run"], id="missing-argument"),
    pytest.param(["frobnicate"], id="unknown-command"),
    pytest.param([], id="no-command"),
    pytest.param(["run", "x.yaml", "-b", "sim:g9"], id="unknown-backend"),
    pytest.param(["run", "x.yaml", "-b", "sim:g2s-literal:S99"], id="unknown-quirk"),
])
def test_cli_bad_option_exit_2_one_line(tmp_path, capsys, monkeypatch, argv) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(OK_WORLD + "ops: []\n")
    rc, out, err = _cli(capsys, argv)
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_cli_run_good_file(tmp_path, capsys) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(OK_WORLD + "ops:\n  - lookup: {gfn: 0x100}\n")
    rc, out, err = _cli(capsys, ["run", str(f), "-b", "sim:g1", "--json"])
    assert rc == 0 and err == ""
    import json
    assert json.loads(out)["records"][0]["api"]["result"] == "pfn"


@pytest.mark.parametrize("cmd", ["run", "check"])
def test_cli_missing_or_unreadable_file(tmp_path, capsys, cmd) -> None:
    for path in (tmp_path / "missing.yaml", tmp_path):            # no such file; a directory
        rc, out, err = _cli(capsys, [cmd, str(path)])
        assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.startswith(f"{path}: ")


def _kept_by_retrying(sc):
    """The ops left after validating, dropping the op the error names, and validating again."""
    sc = copy.deepcopy(sc)
    origin = [op.line for op in sc.ops]
    while True:
        for i, op in enumerate(sc.ops):
            op.line = i + 1
        try:
            validate(sc)
            return origin
        except ScenarioError as e:
            del sc.ops[e.line - 1], origin[e.line - 1]


def test_valid_ops_keeps_what_validating_and_retrying_keeps():
    """valid_ops checks each op once; it must drop exactly the ops repeated validation drops,
    including an op rejected after its check changed the validator (a vcpu_map with a bad gfn)."""
    rng = random.Random(5)
    dropped = 0
    for _ in range(600):
        data = bytes([2]) + bytes(rng.choice((0x40, 0x48, 0x4C, 0x60, 0x88, 0x94, 0x98, 0xC0, 0xC4, 0xC8, 0xD0,
                                              rng.randrange(256))) if rng.random() < 0.3 else rng.randrange(24)
                                  for _ in range(rng.randrange(80)))
        sc = decode(data)
        sc.ops += [make_op("vcpu_map", gfn=1 << 40, handle="h"), make_op("vcpu_map", gfn=2, handle="h"),
                   make_op("invalidate_end"), make_op("vcpu_unmap", handle="h")][:rng.randrange(5)]
        for i, op in enumerate(sc.ops):
            op.line = i + 1
        want = _kept_by_retrying(sc)
        got = [op.line for op in valid_ops(sc)]
        assert got == want
        assert [op.line for op in valid_ops(sc, world_valid=True)] == want      # the world is valid: same
        shared = MemoryMap.of_world(copy.deepcopy(sc.world))                    # an equal world's map ...
        before = repr(shared)
        assert [op.line for op in valid_ops(sc, world_valid=True, memory=shared)] == want
        assert repr(shared) == before                                           # ... is only read
        dropped += len(sc.ops) - len(got)
    assert dropped > 100


def test_the_ops_that_change_the_memory_map_are_the_ones_valid_ops_copies_it_for():
    assert CHANGES_MEMORY == set(replay_module._STEPS)
