"""pfndiff diff / corpus build / corpus decode: output, JSON, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from fuzz.cli import main
from fuzz.corpus.seeds import build_corpus
from fuzz.inputs.codec import decode, encode
from kvmsim import load_scenario
from kvmsim.checkout import ROOT

SEEDS = os.path.join(ROOT, "corpus", "seeds")


def seed(name: str) -> str:
    return os.path.join(SEEDS, name)


def test_diff_lists_known_and_new_divergences_side_by_side(capsys):
    assert main(["diff", seed("d24-sketch-ownership.yaml"), "--left", "sim:g2", "--right", "sim:g2s-literal:S8"]) == 1
    out = capsys.readouterr().out
    assert "not catalogued" in out and "NEW" in out and "BUG:refcount_underflow" in out
    assert main(["diff", seed("d24-sketch-ownership.yaml"), "-l", "sim:g2", "-r", "sim:g2s-literal:S8",
                 "--exit-zero"]) == 0
    assert capsys.readouterr().out == out                             # same report, exit status only
    assert out.count("[op 0] x86_fault  NEW") == 3                    # the pair's diff and both invariants
    assert re.search(r"^ +sim:g2 +sim:g2s-literal:S8$", out, re.M)      # the two sides, side by side
    assert main(["diff", seed("d04-remapped-refcounted.yaml"), "-l", "sim:g1", "-r", "sim:g3"]) == 0
    out = capsys.readouterr().out
    assert "known (D4-ref" in out and "0 not catalogued" in out
    assert "1 of 1 ops compared (sim:g1 observed 1, sim:g3 observed 1)" in out


def test_diff_json(capsys):
    assert main(["diff", seed("d05-remapped-refcount0.yaml"), "-l", "sim:g1", "-r", "sim:g3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    divs = doc["divergences"]
    assert [d["op_index"] for d in divs] == sorted(d["op_index"] for d in divs)
    assert divs[0]["known"] and divs[0]["field"] == "api.result" and divs[0]["left_obs"]["api.result"] == "ERR_FAULT"


@pytest.mark.parametrize("argv,needle", [
    (["diff", "/nonexistent.yaml", "-l", "sim:g1", "-r", "sim:g3"], "/nonexistent.yaml: cannot read"),
    (["diff", seed("d04-remapped-refcounted.yaml"), "-l", "sim:nope", "-r", "sim:g3"], "unknown backend"),
    (["diff", seed("d04-remapped-refcounted.yaml"), "-l", "sim:g1"], "required"),
])
def test_diff_bad_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_diff_bad_scenario_names_file_and_line(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("world:\n  vmas: []\nops:\n  - lookup: {gfn: -1}\n")
    assert main(["diff", str(p), "-l", "sim:g1", "-r", "sim:g3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{p}:4:") and err.count("\n") == 1


def test_corpus_build_encodes_every_seed_and_replaces_atomically(tmp_path):
    seeds = tmp_path / "seeds"
    shutil.copytree(SEEDS, seeds)
    out = tmp_path / "out"
    counts = build_corpus(str(seeds), str(out))
    files = sorted(os.listdir(out / "diff"))
    assert counts["diff"] == len(files) > 10
    decoded = {decode((out / "diff" / f).read_bytes()).name for f in files}
    assert "d05-remapped-refcount0" in decoded
    (seeds / "d05-remapped-refcount0.yaml").unlink()
    build_corpus(str(seeds), str(out))
    assert len(os.listdir(out / "diff")) == len(files) - 1
    assert not [n for n in os.listdir(out) if n.startswith(".")]          # no temp dirs left behind


def test_corpus_build_bad_seed_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "bad.yaml").write_text("world: {}\nops:\n  - munmap: {vma: nope}\n")
    assert main(["corpus", "build", "--seeds", str(tmp_path / "s"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3:" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "diff").exists()


def test_corpus_decode_shows_the_scenario(tmp_path, capsys):
    sc = load_scenario(seed("d05-remapped-refcount0.yaml"))
    p = tmp_path / "crash-x"
    p.write_bytes(encode(sc))
    assert main(["corpus", "decode", str(p)]) == 0
    assert "ttm-tail" in capsys.readouterr().out


def test_fuzz_pair_spellings():
    from fuzz.cli.fuzz import _pair
    assert _pair("sim:g2~sim:g3") == _pair("sim:g2:sim:g3") == _pair("sim:g2,sim:g3") == ("sim:g2", "sim:g3")
    assert _pair("sim:g2:sim:g2s-literal:S4,S8") == ("sim:g2", "sim:g2s-literal:S4,S8")


def test_fuzz_bad_pair_is_one_line_exit_2(capsys):
    assert main(["fuzz", "--pair", "nonsense", "--time", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad --pair" in err and err.count("\n") == 1


def test_without_the_bundled_seeds_a_build_is_one_line_and_makes_nothing(tmp_path, monkeypatch, capsys):
    """An install that is not an editable one of a source checkout has no corpus/seeds next to its
    package: building the bundled corpus (corpus build, fuzz) is one line and exit 2, never an empty
    corpus."""
    from fuzz.corpus import seeds as corpus
    pkg = tmp_path / "site-packages"
    monkeypatch.setattr(corpus, "SEEDS", str(pkg / "corpus" / "seeds"))
    monkeypatch.setattr(corpus, "OUT", str(pkg / "corpus" / "libfuzzer"))
    assert main(["corpus", "build"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and corpus.SEEDS in err[0] and "--seeds" in err[0] and "Traceback" not in err[0]
    assert main(["fuzz", "--time", "1", "--corpus", str(tmp_path / "c"), "--artifacts", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and corpus.SEEDS in err[0] and "--no-seeds" in err[0]
    assert not pkg.exists()
