"""The report's plots: matplotlib figures rendered to SVG text for inlining (no files, no network).

Why the object API and Agg: no global pyplot state and no display, so the report renders the same
inside a campaign, a CI job or a test; text stays text in the SVG (selectable, small).
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from fuzz.campaigns import history  # noqa: E402

matplotlib.rcParams.update({
    "svg.fonttype": "none", "svg.hashsalt": "pfndiff", "font.family": "sans-serif", "font.size": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.titlesize": 10, "axes.titleweight": "bold", "legend.fontsize": 8, "legend.frameon": False,
})
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, no fixed size: it scales with the page)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r'(<svg[^>]*?) width="[^"]*" height="[^"]*"', r'\1', text, count=1)


def _label(i: int, r: history.Run) -> str:
    pairs = ", ".join(str(p).replace("sim:", "") for p in r.start.get("pairs") or [])
    return f"run {i + 1}" + (f" ({pairs})" if pairs else "")


def campaign_series(runs: list[history.Run], key: str, title: str, ylabel: str, extra: str = "",
                    extra_label: str = "") -> str:
    """One metric of every recorded run over elapsed time (``extra``: a second metric, dashed, on
    its own axis at the right)."""
    fig = Figure(figsize=(5.2, 2.8))
    ax = fig.subplots()
    ax2 = ax.twinx() if extra else None
    for i, r in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        x, y = r.series(key)
        name = _label(i, r) + ": " if len(runs) > 1 else ""      # one run: its pairs are in the table below
        ax.plot(x, y, color=c, marker="o" if len(x) < 30 else None, ms=3, lw=1.5, label=name + ylabel)
        if ax2 is not None:
            x2, y2 = r.series(extra)
            ax2.plot(x2, y2, color=c, ls="--", lw=1.2, label=name + (extra_label or extra))
    ax.set_title(title)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel(extra_label or extra)
        ax2.set_ylim(bottom=0)
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if len(runs) > 1 or ax2 is not None:
        ax.legend(handles, labels, loc="lower right")
    return svg(fig)


def findings_over_time(runs: list[history.Run]) -> str:
    """Findings over time: root causes new in this run, root causes an earlier campaign in the same
    directory already reported, and distinct known (catalogued) signatures."""
    fig = Figure(figsize=(5.2, 2.8))
    ax = fig.subplots()
    styles = (("new", "new root causes", "#d62728", "-"),
              ("new_seen_before", "root causes already known", "#ff7f0e", "-."),
              ("known", "catalogued signatures", "#1f77b4", "--"))
    for i, r in enumerate(runs):
        for key, what, color, ls in styles:
            x, y = r.series(key)
            if any(y) or key != "new_seen_before":
                ax.step(x, y, where="post", color=color, ls=ls, lw=1.6 if i == len(runs) - 1 else 0.9,
                        alpha=1.0 if i == len(runs) - 1 else 0.5,
                        label=what if i == len(runs) - 1 else None)
    ax.set_title("findings over time")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("distinct")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best")
    return svg(fig)


def cells_per_generation(groups: list[str], gens: list[str], counts: dict[tuple[str, str], int]) -> str:
    """Decision-table cells reached, per generation, stacked by table."""
    fig = Figure(figsize=(7.0, 2.6))
    ax = fig.subplots()
    bottom = [0] * len(gens)
    names = [gen.replace(":", "\n:", 1) for gen in gens]     # g2s-literal\n:S2,S4 (quirk variants)
    for i, g in enumerate(groups):
        vals = [counts.get((g, gen), 0) for gen in gens]
        ax.bar(names, vals, bottom=bottom, color=COLORS[i % len(COLORS)], label=g, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("decision-table cells reached by the corpus, per generation")
    ax.set_ylabel("distinct cells")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", visible=False)
    return svg(fig)
