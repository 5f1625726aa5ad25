"""pfndiff triage: clustering by signature, reproducibility labels, bad input."""

from __future__ import annotations

import json
import os
import shutil

import yaml
from findings import D10, D10_OTHER, D10_PAIR, SEEDS, d10_other, find, seed

from fuzz.cli import main
from fuzz.inputs.codec import decode
from fuzz.triage import cluster as tr
from kvmsim.trace import Trace


def _triage(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["triage", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _clusters(out_dir) -> list[dict]:
    return json.loads((out_dir / "triage.json").read_text())["clusters"]


def test_the_same_bug_from_different_inputs_and_campaigns_is_one_cluster(tmp_path, capsys):
    a = find(tmp_path / "camp1", [D10_PAIR], [seed(D10)])
    b = find(tmp_path / "camp2", [D10_PAIR], [d10_other()])
    assert a and b and {os.path.basename(x) for x in a}.isdisjoint(os.path.basename(x) for x in b)
    rc, out, err = _triage(capsys, str(tmp_path / "camp1"), str(tmp_path / "camp2"), "-o", str(tmp_path / "out"))
    assert rc == 0, err
    cl = _clusters(tmp_path / "out")
    warn = [c for c in cl if c["signature"].startswith("diff:api sim:g2~sim:g2s-literal access events")]
    assert len(warn) == 1
    members = {os.path.dirname(m["path"]) for m in warn[0]["members"]}
    assert members == {str(tmp_path / "camp1"), str(tmp_path / "camp2")}
    assert warn[0]["count"] == 2 and warn[0]["status"] == "reproduced"
    assert "WARN" in out and "summary.md" in out


def test_different_bugs_never_share_a_cluster(tmp_path, capsys):
    specs = [("d10-sketch-warn-seq0.yaml", D10_PAIR),
             ("d22-sketch-hva-error-as-pfn.yaml", ("sim:g2", "sim:g2s-literal:S4,S5")),
             ("d24-sketch-ownership.yaml", ("sim:g2", "sim:g2s-literal:S8")),
             ("d12b-g2f-writable-ro-slot.yaml", ("sim:g2f", "sim:g3"))]
    expected = {}
    for i, (name, pair) in enumerate(specs):
        paths = find(tmp_path / f"c{i}", [pair], [seed(name)])
        expected[name] = {p for p in paths}
    rc, _, err = _triage(capsys, *[str(tmp_path / f"c{i}") for i in range(len(specs))], "-o", str(tmp_path / "out"))
    assert rc == 0, err
    cl = _clusters(tmp_path / "out")
    for c in cl:                    # every cluster's members come from one bug's artifacts
        owners = {n for n, paths in expected.items() for m in c["members"] if m["path"] in paths}
        assert len(owners) == 1, (c["signature"], owners)
    primaries = {}
    for name, paths in expected.items():   # and every bug has a cluster of its own
        primaries[name] = {c["id"] for c in cl if any(m["path"] in paths for m in c["members"])}
    ids = [primaries[n] for n in expected]
    for i in range(len(ids)):
        for k in range(i + 1, len(ids)):
            assert ids[i].isdisjoint(ids[k])


def test_cluster_outputs_and_minimised_reproducer(tmp_path, capsys):
    find(tmp_path / "c", [D10_PAIR], [d10_other()])
    rc, _, err = _triage(capsys, str(tmp_path / "c"), "-o", str(tmp_path / "out"))
    assert rc == 0, err
    c = next(c for c in _clusters(tmp_path / "out") if "access events" in c["signature"])
    d = tmp_path / "out" / "clusters" / c["id"]
    rep = (d / "report.md").read_text()
    for needle in ("reproducibility", "first seen", "spec ids", ">>", "S2", "host kernel", "sim:g2s-literal"):
        assert needle in rep, needle
    sc = decode((d / "repro").read_bytes())
    assert len(sc.ops) < len(d10_other().ops) and c["reproducer"]["ops"] == len(sc.ops)
    tags = yaml.safe_load((d / "repro.yaml").read_text())["tags"]
    assert tags["signature"] == c["signature"] and tags["left"] == "sim:g2"
    assert "summary" not in os.listdir(d) and (tmp_path / "out" / "summary.md").exists()


def test_raw_inputs_without_sidecar_need_a_pair(tmp_path, capsys):
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(paths[0], raw / "input-1")
    rc, _, err = _triage(capsys, str(raw), "-o", str(tmp_path / "o1"))
    assert rc == 2 and "input-1" in err and "--left/--right" in err and "Traceback" not in err
    rc, _, err = _triage(capsys, str(raw), "-o", str(tmp_path / "o2"), "--left", "sim:g2", "--right", "sim:g2s-literal")
    assert rc == 0, err
    assert any("WARN" in c["signature"] for c in _clusters(tmp_path / "o2"))


def test_truncated_and_unreadable_artifacts_are_named_and_the_rest_still_triaged(tmp_path, capsys):
    good = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    cut = find(tmp_path / "d", [("sim:g2", "sim:g2s-literal:S8")], [seed("d24-sketch-ownership.yaml")])[0]
    with open(cut, "r+b") as fh:                      # truncated input: no longer matches its name
        fh.truncate(3)
    broken = find(tmp_path / "e", [("sim:g2", "sim:g2s-literal:S4,S5")], [seed("d22-sketch-hva-error-as-pfn.yaml")])[0]
    text = open(broken + ".yaml").read()
    with open(broken + ".yaml", "w") as fh:           # truncated sidecar, cut mid-way
        fh.write(text[: len(text) // 3] + "\n  - [unclosed\n")
    rc, out, err = _triage(capsys, *(str(tmp_path / d) for d in "cde"), "-o", str(tmp_path / "out"))
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln]
    assert len(lines) == 2 and "Traceback" not in err
    assert any(ln.startswith(cut + ":") and "truncated" in ln for ln in lines)
    assert any(ln.startswith(broken + ".yaml:") and "sidecar" in ln for ln in lines)
    cl = _clusters(tmp_path / "out")
    assert any(m["path"] in good for c in cl for m in c["members"])       # the good one is triaged
    assert not any(m["path"] in (cut, broken) for c in cl for m in c["members"])
    assert "unreadable" in out and os.path.getsize(cut) == 3                # the bad ones are untouched
    assert open(broken + ".yaml").read().endswith("[unclosed\n")
    doc = json.loads((tmp_path / "out" / "triage.json").read_text())
    assert len(doc["errors"]) == 2


def test_an_unreproducible_artifact_is_kept_and_labelled(tmp_path, capsys):
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    side_path = paths[0] + ".yaml"
    side = yaml.safe_load(open(side_path))
    side["signature"] = "diff:api sim:g2~sim:g2s-literal access vmm.outcome ok>stall"     # shows no more
    side["signatures"] = [{"signature": side["signature"], "id": "x"}]
    with open(side_path, "w") as fh:
        yaml.safe_dump(side, fh)
    v = tr.judge_artifact(tr.load_artifact(paths[0]), tr.JudgeCache())
    assert v.memberships[0] != side["signature"]             # its first unknown divergence still clusters it
    rc, _, err = _triage(capsys, str(tmp_path / "c"), "-o", str(tmp_path / "out"))
    assert rc == 0, err
    # a sidecar whose only signature no longer shows and whose input shows nothing unknown
    art = tr.load_artifact(paths[0])
    art.data = bytes([1])                                     # decodes to an empty scenario
    v = tr.judge_artifact(art, tr.JudgeCache())
    assert v.status == "unreproduced" and v.primary == side["signature"] and "0/2" in v.note


def test_a_nondeterministic_sim_backend_is_reported_as_a_bug(tmp_path, monkeypatch):
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    cache = tr.JudgeCache()
    judge = cache.get([D10_PAIR])
    real = judge.backends["sim:g2"]
    calls = {"n": 0}

    class Flaky:
        def __getattr__(self, name):
            return getattr(real, name)

        def run(self, sc) -> Trace:
            calls["n"] += 1
            t = real.run(sc)
            t.meta["refs_held_at_end"] = {"x": calls["n"]}   # differs from run to run
            return t

    judge.backends["sim:g2"] = Flaky()
    v = tr.judge_artifact(tr.load_artifact(paths[0]), cache)
    assert v.status == "nondeterministic" and "sim:g2" in v.primary
    assert tr.cluster([v])[0].status == "nondeterministic"


def test_list_inputs_skips_sidecars_and_bookkeeping(tmp_path):
    find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    (tmp_path / "c" / "libfuzzer.log").write_text("x")
    names = [os.path.basename(p) for p in tr.list_inputs([str(tmp_path / "c")])]
    assert names and all(n.startswith("crash-") and not n.endswith(".yaml") for n in names)


def test_an_input_the_codec_now_decodes_differently_is_triaged_from_its_sidecar(tmp_path):
    """Intact bytes (the name matches) whose decoding changed, e.g. a new default world: the
    campaign's scenario from the sidecar is what gets triaged, with a note; never an error."""
    from kvmsim.scenario import dump_scenario
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    side_path = paths[0] + ".yaml"
    side = yaml.safe_load(open(side_path))
    side["scenario"] = dump_scenario(d10_other())
    with open(side_path, "w") as fh:
        yaml.safe_dump(side, fh)
    art = tr.load_artifact(paths[0])
    assert art.recorded == d10_other() and "decodes differently" in art.note
    v = tr.judge_artifact(art, tr.JudgeCache())
    assert v.status == "reproduced" and v.scenario == d10_other() and "decodes differently" in v.note


def test_spec_ids_name_the_sketch_quirks_a_bug_needs(tmp_path, capsys):
    """Ablation finds the literal-sketch quirk(s) each bug seed depends on; the cluster's spec ids
    contain the rows the seed itself names (D10/S2, D22/S5, D23/S4, D24/S8)."""
    names = ["d10-sketch-warn-seq0.yaml", "d22-sketch-hva-error-as-pfn.yaml", "d23-sketch-forced-write.yaml",
             "d24-sketch-ownership.yaml"]
    owner = {}
    for i, n in enumerate(names):
        sc = seed(n)
        for p in find(tmp_path / f"c{i}", [(sc.tags["left"], sc.tags["right"])], [sc]):
            owner[p] = n
    rc, _, err = _triage(capsys, *(str(tmp_path / f"c{i}") for i in range(len(names))), "-o", str(tmp_path / "out"))
    assert rc == 0, err
    for c in _clusters(tmp_path / "out"):
        n = owner[c["members"][0]["path"]]
        assert set(seed(n).tags["spec"]) <= set(c["spec_ids"]), (n, c["spec_ids"])
        assert set(c["needed_quirks"]) <= set(c["spec_ids_involved"])


def test_a_sidecar_naming_an_unknown_backend_is_one_line(tmp_path, capsys):
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    side = paths[0] + ".yaml"
    with open(side) as fh:
        text = fh.read().replace("sim:g2s-literal", "sim:g9")
    with open(side, "w") as fh:
        fh.write(text)
    rc, _, err = _triage(capsys, str(tmp_path / "c"), "-o", str(tmp_path / "out"))
    assert rc == 2 and err.count("\n") == 1 and err.startswith(side + ":") and "sim:g9" in err


def test_a_host_like_backend_is_rerun_and_a_flaky_artifact_labelled(tmp_path):
    """A non-simulated backend is re-run --runs times; an artifact that shows its signature in some
    runs only is kept and labelled flaky, with the reliability figure."""
    from fuzz.judging.judge import Judge
    from kvmsim import get_backend
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    good, bad = get_backend("sim:g2"), get_backend("sim:g2s-literal")
    calls = {"n": 0}

    class Unsteady:                         # a "host" whose behaviour changes from run to run
        def run(self, sc) -> Trace:
            calls["n"] += 1
            t = (bad if calls["n"] % 3 else good).run(sc)
            t.backend = "unsteady"
            return t

        def version(self) -> str:
            return "test"

    cache = tr.JudgeCache()
    pairs = [("sim:g2", "unsteady")]
    cache._j[tuple(pairs)] = Judge(pairs, cache.catalogue, backends={"unsteady": Unsteady()})
    v = tr.judge_artifact(tr.load_artifact(paths[0]), cache, override=pairs, host_runs=6)
    assert v.runs == 6 and calls["n"] == 6
    assert v.status == "flaky" and 0 < v.hits[v.primary] < 6
    c = tr.cluster([v])[0]
    assert c.status == "flaky" and (c.hits, c.runs) == (v.hits[v.primary], 6)


def test_sidecar_fields_of_the_wrong_type_are_one_line(tmp_path, capsys):
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    side_path = paths[0] + ".yaml"
    side = yaml.safe_load(open(side_path))
    for key, bad in (("signatures", 3), ("host", "x"), ("divergences", {"a": 1})):
        doc = dict(side, **{key: bad})
        with open(side_path, "w") as fh:
            yaml.safe_dump(doc, fh)
        rc, _, err = _triage(capsys, str(tmp_path / "c"), "-o", str(tmp_path / "out"))
        assert rc == 2 and err.count("\n") == 1 and key in err and err.startswith(side_path), err


def test_a_raw_input_in_a_campaign_directory_uses_the_campaigns_pairs(tmp_path, capsys):
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    assert os.listdir(tmp_path / "c" / ".stats")
    shutil.copy(paths[0], tmp_path / "c" / "timeout-0123")          # libFuzzer's naming, no sidecar
    rc, _, err = _triage(capsys, str(tmp_path / "c"), "-o", str(tmp_path / "out"))
    assert rc == 0, err
    members = [m["path"] for c in _clusters(tmp_path / "out") for m in c["members"]]
    assert str(tmp_path / "c" / "timeout-0123") in members


def test_scenario_yamls_are_inputs_too(tmp_path, capsys):
    """Seeds, repro.yaml files and promoted reproducers triage like raw inputs (tags name the
    pair); a sidecar whose input is missing is an error naming it."""
    d = tmp_path / "yamls"
    d.mkdir()
    shutil.copy(os.path.join(SEEDS, D10), d / "a.yaml")
    (d / "b.yaml").write_text(
        "tags: {left: sim:g2, right: sim:g2s-literal}\n" + D10_OTHER)
    paths = find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    shutil.copy(paths[0] + ".yaml", d / "orphan.yaml")
    rc, _, err = _triage(capsys, str(d), "-o", str(tmp_path / "out"))
    assert rc == 2 and err.count("\n") == 1 and "orphan.yaml" in err and "without its input" in err
    warn = [c for c in _clusters(tmp_path / "out") if "access events" in c["signature"]]
    assert len(warn) == 1 and {os.path.basename(m["path"]) for m in warn[0]["members"]} == {"a.yaml", "b.yaml"}
