"""``pfndiff report``'s page: one self-contained HTML file (inline CSS and SVG, no script, no
network) in four parts: the campaign over time, the decision-table map of the corpus, the D-row
matrix, and one section per cluster.

Why no JavaScript: the page is a CI artifact opened from a zip or a mail; it must read the same
in any browser, printed, or with scripts blocked.  Tables are HTML (text can be searched and
copied); plots are matplotlib SVG (fuzz.triage.report_plots).
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

from fuzz.corpus.features import SIM_BACKENDS
from fuzz.triage import report_plots as plots
from fuzz.triage.report import flatten, op_line
from fuzz.triage.report_data import SPEC_ORDER, ClusterView, ReportData
from kvmsim.trace import Trace

GENERATIONS = [b.removeprefix("sim:") for b in SIM_BACKENDS]
# Decision tables of the spec, by the op classes whose cells fall in them.
TABLES = [
    ("lookup", "hva → pfn lookups", "§2.6 (G1), §3.4 (G2), §4.2 (G2s), §5.1 (G2f), §6.7 (G3)", ("lookup",)),
    ("x86", "x86 fault path and guest accesses", "§2.7, §4.2, §6.4; §8 for what KVM_RUN returns",
     ("x86_fault", "access")),
    ("page", "gfn_to_page, kvm_vcpu_map / unmap", "§2.8, §6.7 (g2p, map, map_ro)",
     ("gfn_to_page", "vcpu_map", "vcpu_unmap")),
    ("dirty", "dirty log", "§8 (dirty-log bits)", ("get_dirty_log",)),
]
CELL_PARTS = ["op", "result", "writable", "refs held / leaked", "guest faults / events"]

CSS = """
:root { --ink:#1d2330; --mute:#5b6473; --line:#d9dde4; --bg:#f6f7f9; --known:#1f77b4; --new:#d62728; --kern:#2ca02c; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d1dc; }
nav { padding: 8px 28px; background: var(--bg); border-bottom: 1px solid var(--line); position: sticky; top: 0; }
nav a { margin-right: 18px; color: var(--ink); font-weight: 600; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { margin-top: 26px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--ink); padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.lead { color: var(--mute); margin-top: -6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--mute); font-size: 12px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 14px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; min-width: 52px; }
td.none { color: #b7bdc7; text-align: center; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; overflow-x: auto; }
.tag { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11.5px; font-weight: 600; color: #fff; }
.tag.new { background: var(--new); } .tag.known { background: var(--known); } .tag.kern { background: var(--kern); }
.tag.other { background: #7f7f7f; }
.trace td { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 11.5px; }
.trace tr.op td { background: #eef1f5; font-weight: 600; }
.trace tr.op.mark td { background: #fde2e1; }
.trace td.diff { background: #ffd7d5; color: #8a0f0b; font-weight: 600; }
.trace td.field { color: var(--mute); }
.cluster { border: 1px solid var(--line); border-left: 5px solid var(--new); border-radius: 6px; padding: 4px 16px 10px;
           margin: 16px 0; }
.cluster.known { border-left-color: var(--known); }
.cols { display: grid; grid-template-columns: minmax(300px, 1fr) 1.5fr; gap: 16px; }
.cols pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.legend span { margin-right: 14px; }
.note { color: var(--mute); font-style: italic; }
.dmatrix td.c { text-align: center; min-width: 90px; }
"""


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _heat(c: int, top: int, rgb: tuple[int, int, int] = (31, 119, 180)) -> str:
    """A cell's background: log-scaled intensity of ``c`` out of ``top``."""
    a = 0.12 + 0.88 * math.log1p(c) / math.log1p(max(top, 1))
    fg = "#fff" if a > 0.55 else "#1d2330"
    return f"background: rgba({rgb[0]},{rgb[1]},{rgb[2]},{a:.2f}); color: {fg}"


# --- part 1: the campaign over time ---------------------------------------------------------------------

def campaign_part(data: ReportData) -> str:
    runs = [r for c in data.campaigns for r in c.runs]
    out = ['<section id="campaign"><h2>1. The campaign over time</h2>']
    if not runs:
        out.append('<p class="note">No campaign history among the inputs (a campaign directory written by '
                   '<code>pfndiff fuzz</code> records one in <code>.pfndiff-history.jsonl</code>).</p></section>')
        return "".join(out)
    out.append('<p class="lead">From the history each campaign appends as it runs, one point per status line.</p>')
    out.append('<div class="grid">')
    for fid, body, cap in (
            ("plot-execs", plots.campaign_series(runs, "exec_s", "executions per second", "exec/s"),
             "libFuzzer's exec/s (every backend of every pair runs once per execution)"),
            ("plot-corpus", plots.campaign_series(runs, "corpus", "corpus size", "inputs"),
             "inputs in the working corpus"),
            ("plot-coverage",
             plots.campaign_series(runs, "cov", "coverage", "edges", extra="ft", extra_label="features"),
             "code coverage edges (solid, left axis) and libFuzzer features (dashed, right axis)"),
            ("plot-findings", plots.findings_over_time(runs),
             "root causes of unknown divergences new to the user (solid) or already known from an earlier "
             "campaign in the same directory, corpus/regressions or a --join'ed triage (dash-dot), and distinct "
             "catalogued signatures (dashed; "
             "known divergences are counted, never reported)")):
        out.append(f'<figure id="{fid}">{body}<figcaption>{esc(cap)}</figcaption></figure>')
    out.append("</div>")
    out.append("<table id=\"runs\"><tr><th>run</th><th>directory</th><th>started (UTC)</th><th>pairs</th>"
               "<th>seconds</th><th>executions</th><th>corpus</th><th>coverage</th><th>new causes</th>"
               "<th>catalogued</th></tr>")
    i = 0
    for c in data.campaigns:
        for r in c.runs:
            last = r.ticks[-1] if r.ticks else {}
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.t0)) if r.t0 else "?"
            i += 1
            out.append(f"<tr><td>{i}</td><td class=mono>{esc(c.path)}</td><td>{started}</td>"
                       f"<td class=mono>{esc(', '.join(r.start.get('pairs') or []))}</td>"
                       + "".join(f"<td class=n>{esc(last.get(k, '-'))}</td>" for k in ("t", "execs", "corpus", "cov"))
                       + f"<td class=n>{esc(last.get('new', '-'))}</td>"
                       + f"<td class=n>{esc(last.get('known', '-'))}</td></tr>")
    out.append("</table></section>")
    return "".join(out)


# --- part 2: decision-table map ---------------------------------------------------------------------------

def _table_of(cell: str) -> str | None:
    op = cell.split(" | ")[0].split("[")[0]
    return next((t[0] for t in TABLES if op in t[3]), None)


_EVENTS = ("WARN", "BUG", "CORRUPT")


def _split(cell: str) -> tuple[list[str], str]:
    """A ``fuzz.corpus.features`` cell as the map's row (op, result, writable, refs, guest faults / events)
    and the kernel path it took.  The path is each generation's own function (``hva_to_pfn``,
    ``kvm_follow_pfn``, ...), so rows without it line the generations up against each other."""
    parts = cell.split(" | ")
    op, result, wr = (parts + ["", "", ""])[:3]
    rest = parts[3:]
    refs = rest.pop(0).removeprefix("ref=") if rest and rest[0].startswith("ref=") else ""
    shown = [p for p in rest if p.startswith("faults:") or p.startswith(_EVENTS)]
    path = " ".join(p for p in rest if p not in shown)
    return [op, result, wr.removeprefix("w="), refs, " · ".join(shown)], path


def tables_part(data: ReportData) -> str:
    out = ['<section id="tables"><h2>2. Decision tables reached by the corpus</h2>']
    if not data.cells:
        out.append('<p class="note">No corpus among the inputs (give one with <code>--corpus DIR</code>).</p>'
                   '</section>')
        return "".join(out)
    cells = {(gen, text): n for (kind, gen, text), n in data.cells.items() if kind == "cell"}
    seen = {k[0] for k in cells}                # campaign pairs may add variants (g2s-literal:S2,S4)
    gens = [g for g in GENERATIONS if g in seen] + sorted(seen - set(GENERATIONS))
    out.append(f'<p class="lead">{data.corpus_inputs} input(s) of {esc(", ".join(data.corpus_dirs))}, run on every '
               "simulated generation: a row is one outcome of the spec's tables (op, result, writable, references "
               "held/leaked, the guest's fault results, WARN/BUG events); the number is how many inputs reach it "
               "on that generation, over every kernel path the generation took (hover a number for the paths). "
               "The same picture as <code>pfndiff corpus stats</code>.</p>")
    per: dict[tuple[str, str], int] = {}
    for (gen, text) in cells:
        t = _table_of(text)
        if t:
            per[(t, gen)] = per.get((t, gen), 0) + 1
    names = {t[0]: t[1] for t in TABLES}
    out.append('<figure id="plot-cells">' + plots.cells_per_generation([names[t[0]] for t in TABLES], gens,
               {(names[t], g): n for (t, g), n in per.items()}) + "</figure>")
    rows: dict[tuple[str, ...], dict[str, int]] = {}
    paths: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for (gen, text), n in cells.items():
        parts, path = _split(text)
        row = rows.setdefault(tuple(parts), {})
        row[gen] = row.get(gen, 0) + n
        if path:
            paths.setdefault((tuple(parts), gen), []).append(path)
    top = max(n for r in rows.values() for n in r.values())
    for tid, title, spec, _ops in TABLES:
        mine = sorted(k for k in rows if _table_of(" | ".join(k)) == tid)
        if not mine:
            continue
        out.append(f'<h3 id="table-{tid}">{esc(title)} <span class="note">({esc(spec)})</span></h3>')
        out.append(f'<table class="map" id="map-{tid}"><tr>' + "".join(f"<th>{p}</th>" for p in CELL_PARTS)
                   + "".join(f"<th>{esc(g)}</th>" for g in gens) + "</tr>")
        for key in mine:
            out.append("<tr>" + "".join(f"<td class=mono>{esc(p)}</td>" for p in key))
            for g in gens:
                n = rows[key].get(g, 0)
                via = ", ".join(sorted(set(paths.get((key, g), []))))
                tip = f' title="{esc(g)}: {n} input(s){" via " + esc(via) if via else ""}"'
                out.append(f'<td class=n style="{_heat(n, top)}"{tip}>{n}</td>' if n else '<td class=none>·</td>')
            out.append("</tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


# --- part 3: D-row matrix ----------------------------------------------------------------------------------

def _row_titles(data: ReportData) -> dict[str, str]:
    """A row's behaviour: its first catalogue entry's title; for the sketch's bugs (never
    catalogued) the quirk's title."""
    from fuzz.judging.rootcause import QUIRK_ROWS, QUIRK_TITLES
    titles: dict[str, str] = {}
    for e in (data.catalogue.entries if data.catalogue else []):
        titles.setdefault(e.spec, e.title)
    for q, text in QUIRK_TITLES.items():
        titles.setdefault(q, f"literal-sketch bug: {text}")
    for q, row in QUIRK_ROWS.items():
        titles.setdefault(row, f"literal-sketch bug {q}: {QUIRK_TITLES.get(q, '')}")
    return titles


def _order(row: str) -> tuple[int, str]:
    return (SPEC_ORDER.index(row), row) if row in SPEC_ORDER else (len(SPEC_ORDER), row)


def drows_part(data: ReportData) -> str:
    m = data.d_rows()
    titles = _row_titles(data)
    cols = list(dict.fromkeys([*data.pairs(), *(c for (_, c) in m)]))
    first = {c: i for i, c in enumerate(cols)}
    cols.sort(key=lambda c: (not all(n.startswith("sim:") for n in c.split("~") if n), first[c]))
    rows = sorted({r for (r, _) in m} | set(titles) | set(SPEC_ORDER), key=_order)
    out = ['<section id="drows"><h2>3. Divergence rows observed (spec §7 D-rows, sketch quirks)</h2>',
           '<p class="lead legend"><span><span class="tag known">known</span> executions where a catalogued '
           'divergence of the row was counted</span><span><span class="tag new">finding</span> clusters (or findings) '
           'whose spec rows include it</span><span><span class="tag kern">kernels</span> seeds whose legacy and merged '
           'real kernels differ as the row says</span></p>']
    if not cols:
        out.append('<p class="note">No backend pair among the inputs.</p></section>')
        return "".join(out)
    top = max([v["known"] for v in m.values()] + [1])
    out.append('<table class="dmatrix" id="dmatrix"><tr><th>row</th><th>behaviour (first catalogue entry)</th>'
               + "".join(f"<th class=mono>{esc(c)}</th>" for c in cols) + "</tr>")
    for r in rows:
        out.append(f"<tr><td><b>{esc(r)}</b></td><td>{esc(titles.get(r, ''))}</td>")
        for c in cols:
            v = m.get((r, c))
            if not v:
                out.append("<td class='c none'>·</td>")
                continue
            bits = []
            if v["finding"]:
                bits.append(f'<span class="tag new">finding ×{v["finding"]}</span>')
            if v["kernel"]:
                bits.append(f'<span class="tag kern">kernels ×{v["kernel"]}</span>')
            style = f' style="{_heat(v["known"], top)}"' if v["known"] else ""
            if v["known"]:
                bits.insert(0, f"{v['known']}")
            out.append(f"<td class=c{style}>{' '.join(bits)}</td>")
        out.append("</tr>")
    out.append("</table></section>")
    return "".join(out)


# --- part 4: clusters ---------------------------------------------------------------------------------------

def trace_table(sc: Any, left: Trace, right: Trace | None, mark: int, fields: list[str]) -> str:
    """Both traces side by side, op by op; a value that differs between the sides is highlighted
    (the rows are ``fuzz.triage.report.flatten``'s, as in ``pfndiff repro``)."""
    lrecs = {r.index: r for r in left.records}
    rrecs = {r.index: r for r in right.records} if right else {}
    out = ['<table class="trace"><tr><th></th><th>field</th>'
           f'<th>{esc(left.backend)}</th><th>{esc(right.backend if right else "(no second trace)")}</th></tr>']

    def values(i: int, lf: dict[str, str], rf: dict[str, str]) -> None:
        for k in dict.fromkeys([*lf, *rf]):
            lv, rv = lf.get(k, "-"), rf.get(k, "-")
            hot = (right is not None and lv != rv) or (i == mark and k in fields)
            c = ' class="diff"' if hot else ""
            out.append(f'<tr><td></td><td class="field">{esc(k)}</td><td{c}>{esc(lv)}</td>'
                       f'<td{c}>{esc(rv if right else "")}</td></tr>')

    for i in sorted(set(lrecs) | set(rrecs)):
        rec = lrecs.get(i) or rrecs[i]
        text = op_line(sc, i) if sc is not None and i < len(sc.ops) else rec.op
        out.append(f'<tr class="{"op mark" if i == mark else "op"}"><td>{"▶" if i == mark else ""}[{i}]</td>'
                   f'<td colspan=3>{esc(text)}</td></tr>')
        values(i, flatten(lrecs.get(i)), flatten(rrecs.get(i)))
    if mark not in lrecs and mark not in rrecs:          # a difference in what is left at the end
        out.append('<tr class="op mark"><td>▶</td><td colspan=3>end of scenario</td></tr>')
        keys = ("refs_held_at_end", "pins_held_at_end")
        values(mark, {k: str(left.meta.get(k)) for k in keys},
               {k: str(right.meta.get(k)) for k in keys} if right else {})
    out.append("</table>")
    return "".join(out)


def _reproduce(cv: ClusterView) -> str:
    if cv.repro_path:
        return f"pfndiff repro {cv.repro_path}"
    members = cv.record.get("members") or []
    first = members[0].get("path") if members and isinstance(members[0], dict) else None
    return f"pfndiff repro {first}" if first else "(no reproducer path recorded)"


def cluster_section(cv: ClusterView, n: int) -> str:
    rec = cv.record
    known = bool(rec.get("known"))
    rep = rec.get("reproducer") or {}
    r = rec.get("reproducibility") or {}
    status = f'<span class="tag {"known" if known else "new"}">{"known" if known else "new"}</span> ' \
             f'<span class="tag other">{esc(rec.get("status", "?"))}</span>'
    out = [f'<div class="cluster{" known" if known else ""}" id="cluster-{esc(rec["id"])}">',
           f'<h3>{n}. {esc(rec.get("title") or "Cluster")} <span class=mono>[{esc(rec["id"])}]</span> {status}</h3>'
           f'<p class=mono>{esc(rec["signature"])}</p>',
           "<table>",
           f"<tr><th>pair</th><td class=mono>{esc(rec.get('pair', ''))}</td>"
           f"<th>artifacts</th><td>{esc(rec.get('count', ''))}</td>"
           f"<th>reproducible</th><td>{esc(r.get('hits', '?'))}/{esc(r.get('runs', '?'))} runs</td></tr>",
           f"<tr><th>reproducer</th><td colspan=3>{esc(rep.get('ops_before', '?'))} → {esc(rep.get('ops', '?'))} ops, "
           f"{esc(rep.get('size_before', '?'))} → {esc(rep.get('size', '?'))} bytes</td>"
           f"<th>first seen</th><td>{esc(rec.get('first_seen', ''))}</td></tr></table>"]
    v = cv.view or {}
    rows = v.get("spec_rows") or [[s, ""] for s in rec.get("spec_ids") or []]
    out.append("<div class=cols><div><b>Minimised scenario</b><pre>" + esc(cv.repro_yaml.rstrip() or "(not available)")
               + "</pre><b>Spec rows</b><ul>" + "".join(f"<li><b>{esc(a)}</b> {esc(b)}</li>" for a, b in rows)
               + ("</ul>" if rows else "<li>none recorded</li></ul>")
               + f"<b>Reproduce</b><pre>{esc(_reproduce(cv))}</pre></div><div>")
    traces = cv.traces()
    if traces:
        out.append(f"<b>Traces</b> (first differing op ▶ [{esc(v.get('mark'))}] {esc(v.get('op', ''))}; "
                   "differing values highlighted)")
        out.append(trace_table(cv.scenario, traces[0], traces[1] if len(traces) > 1 else None,
                               int(v.get("mark", -1)), list(v.get("fields") or [])))
    else:
        out.append(f'<p class="note">Traces not shown: {esc(cv.note or "not recorded")}</p>')
    out.append("</div></div></div>")
    return "".join(out)


def clusters_part(data: ReportData) -> str:
    out = ['<section id="clusters"><h2>4. Root-cause clusters</h2>']
    views = [cv for t in data.triages for cv in t.clusters]
    if not views:
        out.append('<p class="note">No findings to cluster among the inputs.</p></section>')
        return "".join(out)
    srcs = ", ".join(esc(t.path) for t in data.triages if not t.made_here)
    out.append(f'<p class="lead">{len(views)} cluster(s)' + (f" from {srcs}" if srcs else "")
               + ": the minimised reproducer, both traces side by side, the spec rows it depends on.</p>")
    out.append("<table id=\"cluster-index\"><tr><th>#</th><th>cluster</th><th>root cause</th><th>status</th>"
               "<th>count</th><th>spec rows</th><th>signature</th></tr>")
    for i, cv in enumerate(views, 1):
        rec = cv.record
        out.append(f"<tr><td>{i}</td><td><a href=\"#cluster-{esc(rec['id'])}\">{esc(rec['id'])}</a></td>"
                   f"<td>{esc(rec.get('title') or '')}</td><td>{esc(rec.get('status', ''))}</td>"
                   f"<td class=n>{esc(rec.get('count', ''))}</td>"
                   f"<td>{esc(', '.join(rec.get('spec_ids') or []))}</td>"
                   f"<td class=mono>{esc(rec['signature'])}</td></tr>")
    out.append("</table>")
    out += [cluster_section(cv, i) for i, cv in enumerate(views, 1)]
    out.append("</section>")
    return "".join(out)


def page(data: ReportData, inputs: list[str]) -> str:
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    notes = "".join(f"<p>{esc(n)}</p>" for n in data.notes)
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            "<title>pfndiff report</title><style>" + CSS + "</style></head><body>"
            f"<header><h1>pfndiff report</h1><p>{esc(', '.join(inputs))} — generated {now}</p>{notes}</header>"
            '<nav><a href="#campaign">1. Campaign</a><a href="#tables">2. Decision tables</a>'
            '<a href="#drows">3. D-rows</a><a href="#clusters">4. Clusters</a></nav><main>'
            + campaign_part(data) + tables_part(data) + drows_part(data) + clusters_part(data)
            + "</main></body></html>\n")
