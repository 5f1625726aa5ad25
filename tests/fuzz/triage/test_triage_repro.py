"""pfndiff repro: the scenario, both traces side by side with the first differing op marked, and
the spec rows that explain it."""

from __future__ import annotations

import os
import re

from findings import D10_PAIR, SEEDS, d10_other, find, seed

from fuzz.cli import main


def test_repro_of_an_artifact_marks_the_first_differing_op(tmp_path, capsys):
    path = find(tmp_path / "c", [D10_PAIR], [d10_other()])[0]
    assert main(["repro", path]) == 1                                   # a NEW divergence fails a CI step
    out = capsys.readouterr().out
    assert main(["repro", path, "--exit-zero"]) == 0
    assert capsys.readouterr().out == out
    assert "ops:" in out and "sim:g2 " in out and "| sim:g2s-literal" in out
    marked = [ln for ln in out.splitlines() if ln.startswith(">>")]
    assert len(marked) == 1 and "[1] access" in marked[0]           # op 0 is a dirty-log read, equal on both
    assert re.search(r"^ \* events: .*\| events: \['WARN", out, re.M)
    assert "first differing op: [1] access, field events" in out
    assert "S2" in out and "spec rows:" in out and "NEW" in out


def test_repro_of_a_seed_yaml_with_a_known_divergence_names_its_row(tmp_path, capsys):
    sc_path = os.path.join(SEEDS, "d05-remapped-refcount0.yaml")
    sc = seed("d05-remapped-refcount0.yaml")
    assert main(["repro", sc_path, "--left", sc.tags["left"], "--right", sc.tags["right"], "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "known (" in out and re.search(r"^  D5 ", out, re.M)


def test_repro_without_backends_is_one_line(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("world: {}\nops: []\n")
    assert main(["repro", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(p) in err
