"""pfndiff report: the page of a real (tiny) campaign, its history record, and how a real headless
browser shows it."""

from __future__ import annotations

import io
import json
import os
import re
from html.parser import HTMLParser

import pytest
from cdp_browser import INSTALL, find_chromium, render

from fuzz.campaigns import history
from fuzz.cli import main


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A 4-second campaign on the default pairs, then its page (the report triages it itself)."""
    d = tmp_path_factory.mktemp("campaign")
    arts, corpus = d / "artifacts", d / "corpus"
    mp = pytest.MonkeyPatch()
    mp.setenv("PFNDIFF_PROGRESS", "0")
    try:
        rc = main(["fuzz", "--time", "4", "--status-every", "1", "--corpus", str(corpus), "--artifacts", str(arts)])
        assert rc == 0
        rc = main(["report", str(arts), "-o", str(d / "report.html")])
        assert rc == 0
    finally:
        mp.undo()
    return d


class _Dom(HTMLParser):
    """Ids, tags and classes of the page, and who contains whom (by id)."""
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.stack: list[tuple[str, str | None]] = []
        self.inside: dict[str, set[str]] = {}          # id -> tags/classes seen inside
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if a.get("id"):
            self.ids[a["id"]] = tag
        for _, owner in self.stack:
            if owner:
                self.inside.setdefault(owner, set()).update({tag, *(f".{c}" for c in (a.get("class") or "").split())})
        if tag not in ("meta", "br", "img", "input", "link", "path", "use", "rect", "circle", "line", "polyline",
                       "stop", "ellipse", "polygon"):
            self.stack.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


def test_the_campaign_records_its_history(campaign):
    runs = history.read(str(campaign / "artifacts"))
    assert len(runs) == 1
    r = runs[0]
    assert r.start["pairs"] == ["sim:g2~sim:g3", "sim:g2~sim:g2s-literal", "sim:g2s~sim:g2s-literal:S4,S5,S8"]
    assert os.path.normpath(os.path.join(campaign / "artifacts", r.start["corpus"])) == str(campaign / "corpus")
    assert r.end and len(r.ticks) >= 3
    execs = [t["execs"] for t in r.ticks]
    assert execs == sorted(execs) and execs[-1] > 0
    assert r.end["corpus"] > 0 and r.end["cov"] > 0 and r.end["known"] > 0


def test_history_keeps_whole_records_only(tmp_path):
    history.append(str(tmp_path), {"run": "a", "event": "start", "t0": 1.0})
    history.append(str(tmp_path), {"run": "a", "event": "tick", "t": 1, "execs": 5})
    with open(history.path_in(str(tmp_path)), "ab") as fh:
        fh.write(b'{"v":1,"run":"a","event":"tick","t":2,"ex')       # a record cut short by a crash
    history.append(str(tmp_path), {"run": "b", "event": "start", "t0": 2.0})
    history.append(str(tmp_path), {"run": "b", "event": "tick", "t": 1, "execs": 7})
    runs = history.read(str(tmp_path))
    assert [r.run for r in runs] == ["a", "b"]
    assert runs[0].series("execs") == ([1.0], [5.0]) and runs[1].start["t0"] == 2.0


def test_the_page_is_self_contained_and_has_the_four_parts(campaign):
    text = (campaign / "report.html").read_text()
    dom = _Dom()
    dom.feed(text)
    for section in ("campaign", "tables", "drows", "clusters"):
        assert dom.ids.get(section) == "section"
    for fig in ("plot-execs", "plot-corpus", "plot-coverage", "plot-findings", "plot-cells"):
        assert "svg" in dom.inside[fig], fig
    assert {"map-lookup", "map-x86", "map-page", "dmatrix", "cluster-index"} <= set(dom.ids)
    for table in re.findall(r'<table class="map".*?</table>', text, re.S):   # every row of the map was reached
        assert all("class=n" in row for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:])
    assert "script" not in dom.tags and "img" not in dom.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(?!#)|@import""", text)
    # every cluster of the campaign has its section, with both traces and a highlighted difference
    clusters = [i for i in dom.ids if i.startswith("cluster-") and i != "cluster-index"]
    assert clusters and all(".diff" in dom.inside[c] and ".trace" in dom.inside[c] for c in clusters)
    assert "pfndiff repro " in text
    # the D-row matrix counts the catalogued divergences of the campaign's pairs
    row = re.search(r"<tr><td><b>D4</b>.*?</tr>", text).group(0)
    assert re.search(r">\s*\d+", row.split("</td>", 2)[2])


def test_triage_output_is_read_with_the_stored_traces(campaign, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["triage", str(campaign / "artifacts"), "-o", str(out), "--report", str(tmp_path / "r.html")]) == 0
    from fuzz.inputs import schema
    paths = sorted(out.glob("clusters/*/view.json"))
    views = [json.loads(p.read_text()) for p in paths]
    for p, v in zip(paths, views):
        schema.check("cluster-view", v, str(p))
    assert views and all(len(v["traces"]) == 2 for v in views)
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="cluster') == len(views) and f"pfndiff repro {out}/clusters/" in page
    # a damaged view is one line naming it, not a traceback or a page drawn from garbage
    views[0]["mark"] = "first"
    paths[0].write_text(json.dumps(views[0]))
    assert main(["report", str(out), "-o", str(tmp_path / "r2.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(paths[0]) in err[0] and "mark" in err[0]


def test_an_older_triage_output_is_re_run_with_the_quirks_of_its_cause(tmp_path):
    """Without a stored view.json the report re-runs the reproducer; its spec rows name the quirks
    the root cause needs, as triage's stored view does (one analysis, fuzz.judging.rootcause)."""
    from findings import D10, D10_PAIR, find, seed

    from fuzz.triage.report_data import read_triage
    from oracles.catalogue import load_catalogue
    find(tmp_path / "c", [D10_PAIR], [seed(D10)])
    out = tmp_path / "t"
    assert main(["triage", str(tmp_path / "c"), "-o", str(out)]) == 0
    cat = load_catalogue()
    stored = {c.record["id"]: c.view["spec_rows"] for c in read_triage(str(out), cat).clusters if c.view}
    for p in out.glob("clusters/*/view.json"):
        p.unlink()
    rerun = {c.record["id"]: c.view["spec_rows"] for c in read_triage(str(out), cat).clusters if c.view}
    assert stored and rerun == stored
    assert any(row[0] == "S2" and "without it the divergence disappears" in row[1] for row in stored["S2"])


def test_a_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["report", str(tmp_path / "x.json"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.json" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


# --- a real browser -------------------------------------------------------------------------------------

def _ink(img, box, scale: float = 1.0) -> tuple[float, int]:
    """Share of non-white pixels and number of distinct colours inside a box of the screenshot."""
    x, y, w, h = (int(box[k] * scale) for k in ("x", "y", "w", "h"))
    px = img[y:y + h, x:x + w].reshape(-1, 3)
    ink = int((px.min(axis=1) < 235).sum())
    return ink / max(1, len(px)), len({tuple(p) for p in px[:: max(1, len(px) // 20000)]})


@pytest.mark.skipif(find_chromium() is None, reason=f"needs Debian's chromium: {INSTALL} (make test installs it)")
def test_a_real_browser_shows_the_plots_and_tables(campaign):
    from PIL import Image
    sels = ["#plot-execs svg", "#plot-corpus svg", "#plot-coverage svg", "#plot-findings svg", "#plot-cells svg",
            "#map-lookup", "#dmatrix", "#cluster-index", ".cluster .trace", ".trace td.diff", "section"]
    page = render(str(campaign / "report.html"), sels)
    assert page.errors == []
    import numpy as np
    png = Image.open(io.BytesIO(page.png))
    assert png.size[0] == page.size[0] and png.size[1] >= 2000
    img = np.asarray(png.convert("RGB"))
    for sel in sels[:5]:                                    # plots: drawn, with lines and text in colour
        (box,) = page.boxes[sel]
        assert box["w"] > 300 and box["h"] > 150, (sel, box)
        ink, colours = _ink(img, box)
        assert 0.01 < ink < 0.9 and colours > 20, (sel, ink, colours)
    for sel in sels[5:9]:                                   # tables: laid out and filled
        box = page.boxes[sel][0]
        assert box["w"] > 200 and box["h"] > 40, (sel, box)
        assert _ink(img, box)[0] > 0.05, sel
    diff = page.boxes[".trace td.diff"][0]                  # a highlighted difference is red-tinted
    r, g, b = (int(v) for v in img[int(diff["y"]) + 2, int(diff["x"]) + 2])
    assert r > 200 and r - g > 25 and r - b > 25, (r, g, b)
    tops = [b["y"] for b in page.boxes["section"]]
    assert len(tops) == 4 and tops == sorted(tops)          # the four parts, in order, one below the other


def test_a_bad_report_path_fails_before_any_work(tmp_path, capsys):
    bad = str(tmp_path / "no" / "such" / "r.html")
    assert main(["fuzz", "--time", "600", "--artifacts", str(tmp_path / "a"), "--report", bad]) == 2
    assert not (tmp_path / "a" / ".pfndiff-history.jsonl").exists()       # the campaign never started
    assert main(["report", str(tmp_path), "-o", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(bad in ln and "does not exist" in ln for ln in err)


def test_kernel_comparisons_fill_the_d_row_matrix(tmp_path):
    """A `kernels compare --json` file: here of the two model generations a legacy and a merged
    kernel are compared against (the same matrix code; no QEMU needed)."""
    from fuzz.triage.report_data import gather
    from kernel_shim.kernels.compare import build_matrix
    m = build_matrix(["sim:g1", "sim:g3"], jobs=1)
    f = tmp_path / "kernels.json"
    f.write_text(json.dumps(m.to_dict(), default=str))
    rows = gather([str(f)]).d_rows()
    expected = {(s, f"{d.left}~{d.right}") for r in m.rows for d in r.differences for s in d.spec}
    assert expected and {k for k, v in rows.items() if v["kernel"]} == expected
    assert main(["report", str(f), "-o", str(tmp_path / "r.html")]) == 0
    assert "kernels ×" in (tmp_path / "r.html").read_text()
