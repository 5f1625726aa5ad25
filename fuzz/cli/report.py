"""``pfndiff report DIR... -o OUT.html``: one self-contained HTML page of campaigns, triage
outputs and kernel comparisons (fuzz.triage.report_data reads them, fuzz.triage.report_html draws them).
``pfndiff fuzz --report`` and ``pfndiff triage --report`` call ``write_report`` at their end."""

from __future__ import annotations

import argparse
import sys

from fuzz.campaigns import progress
from fuzz.cli.common import EXIT_USAGE, Commands, output_file
from fuzz.judging.artifacts import atomic_write


def write_report(inputs: list[str], out: str, corpus: list[str] | None = None, triage: bool = True) -> str:
    """Gather, draw, write atomically; returns a one-line summary.  Raises ReportInputError."""
    from fuzz.triage.report_data import gather
    from fuzz.triage.report_html import page
    data = gather(inputs, corpus, triage, progress.stage)
    with progress.stage("report: drawing the page", 1) as st:
        text = page(data, inputs)
        st.advance()
    atomic_write(out, text.encode("utf-8"))
    clusters = sum(len(t.clusters) for t in data.triages)
    runs = sum(len(c.runs) for c in data.campaigns)
    return (f"wrote {out} ({len(text) // 1024} KiB): {runs} campaign run(s), {data.corpus_inputs} corpus input(s), "
            f"{clusters} cluster(s)")


def report_after(out: str, inputs: list[str]) -> int:
    """``--report PATH`` of pfndiff fuzz and triage: the report of what the command just wrote
    (inputs that are neither campaign directories nor triage outputs are left out); 0 or 2."""
    from fuzz.triage.report_data import ReportInputError, usable
    try:
        print(write_report([p for p in inputs if usable(p)], out))
    except ReportInputError as e:
        print(f"pfndiff report: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fuzz.triage.report_data import ReportInputError
    output_file(args.output, "the report")
    try:
        print(write_report(args.inputs, args.output, args.corpus or None, not args.no_triage))
    except ReportInputError as e:
        print(f"pfndiff report: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="DIR",
                   help="campaign directories (pfndiff fuzz --artifacts), triage outputs (pfndiff triage -o), "
                        "or `pfndiff kernels compare --json` files")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--corpus", action="append", default=[], metavar="DIR",
                   help="corpus for the decision-table map (default: the campaigns' own corpus)")
    p.add_argument("--no-triage", action="store_true",
                   help="do not triage a campaign that comes without a triage output (no cluster sections)")


COMMANDS: Commands = {}
COMMANDS["report"] = ("write one self-contained HTML page of campaigns, triage outputs and kernel comparisons",
                      cmd_report, _setup)
