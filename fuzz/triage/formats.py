"""Triage outputs: the terminal table, ``summary.md``, ``triage.json`` (also what ``--join``
reads back), JUnit XML and SARIF 2.1.0.

Why JUnit and SARIF: a CI job fails on a JUnit failure (one per *new* cluster) and annotates the
reproducer file from SARIF results (``baselineState`` carries the ``--join`` comparison).
Everything here works on the plain cluster records of ``triage.json``, so a joined, vanished
cluster (known only from the earlier run) renders like any other.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_BASELINE = {"new": "new", "grew": "updated", "same": "unchanged", "vanished": "absent"}


def failing(c: dict[str, Any]) -> bool:
    """What fails a CI job: a new cluster the catalogue does not explain."""
    return c["delta"] == "new" and not c.get("known") and not c.get("seen_in")


def delta_shown(c: dict[str, Any]) -> str:
    """The delta as the user reads it: a cause already in ``corpus/regressions`` is "known"."""
    return "known" if c["delta"] == "new" and c.get("seen_in") else c["delta"]


def _what(c: dict[str, Any]) -> str:
    """A cluster in words: its root cause's title, and how many signatures it groups."""
    n = len(c.get("signatures") or [])
    title = c.get("title") or c["signature"]
    return title + (f" ({n} signatures)" if n > 1 else "")


def _repro_pct(c: dict[str, Any]) -> str:
    r = c["reproducibility"]
    return f"{r['hits']}/{r['runs']}"


def _spec_ids(c: dict[str, Any]) -> str:
    return ", ".join(c.get("spec_ids") or []) or "-"


def table(records: list[dict[str, Any]], errors: list[str], meta: dict[str, Any]) -> str:
    """The terminal summary (also the body of summary.md, inside a code block)."""
    lines = [f"triage: {meta['artifacts']} artifact(s) -> {len([c for c in records if c['delta'] != 'vanished'])} "
             f"cluster(s); {meta['unclustered']} without divergence; {len(errors)} unreadable; "
             f"{meta['seconds']:.1f}s"]
    if meta.get("joined"):
        counts = {k: sum(1 for c in records if c["delta"] == k) for k in ("new", "grew", "same", "vanished")}
        lines.append("joined with " + meta["joined"] + ": " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    hdr = (f"{'id':<12}  {'delta':<8}  {'status':<16}  {'count':>5}  {'repro':>7}  {'ops':>3}  {'spec ids':<14}  "
           "root cause")
    lines.append(hdr)
    for c in records:
        rep = c.get("reproducer") or {}
        spec = ",".join(c.get("spec_ids") or []) or "-"
        lines.append(f"{c['id']:<12}  {delta_shown(c):<8}  {c['status']:<16}  {c['count']:>5}  {_repro_pct(c):>7}  "
                     f"{rep.get('ops', '-')!s:>3}  {spec[:14]:<14}  {_what(c)}")
    for e in errors:
        lines.append(f"unreadable: {e}")
    return "\n".join(lines)


def summary_md(records: list[dict[str, Any]], errors: list[str], meta: dict[str, Any]) -> str:
    out = ["# pfndiff triage", "",
           f"{meta['artifacts']} artifact(s) from {', '.join(meta['inputs'])}; triaged on {meta['host']['kernel']} "
           f"({meta['host']['time']}).", ""]
    out += ["| cluster | delta | status | count | reproducible | ops | spec ids | first seen | last seen "
            "| root cause: signature |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in records:
        rep = c.get("reproducer") or {}
        link = f"[{c['id']}](clusters/{c['id']}/report.md)" if c["delta"] != "vanished" else c["id"]
        out.append(f"| {link} | {delta_shown(c)} | {c['status']} | {c['count']} | {_repro_pct(c)} | "
                   f"{rep.get('ops', '-')} | {_spec_ids(c)} | {c['first_seen']} | {c['last_seen']} | "
                   f"{_what(c)}: `{c['signature']}` |")
    if errors:
        out += ["", "## Unreadable artifacts (kept, not triaged)", ""] + [f"- `{e}`" for e in errors]
    if meta.get("unclustered_list"):
        out += ["", "## Artifacts without an unknown divergence", ""] + \
            [f"- `{p}`: {why}" for p, why in meta["unclustered_list"]]
    out += ["", "```", table(records, errors, meta), "```", ""]
    return "\n".join(out)


def triage_json(records: list[dict[str, Any]], errors: list[str], meta: dict[str, Any]) -> str:
    return json.dumps({"format": "pfndiff-triage/1", "meta": meta, "clusters": records, "errors": errors},
                      indent=2, sort_keys=False)


def junit(records: list[dict[str, Any]], errors: list[str], meta: dict[str, Any]) -> str:
    """One testcase per cluster; a *new* cluster is a failure, a vanished one is skipped, an
    unreadable artifact is an error."""
    failures = sum(1 for c in records if failing(c))
    skipped = sum(1 for c in records if c["delta"] == "vanished")
    suites = ET.Element("testsuites", name="pfndiff triage")
    suite = ET.SubElement(suites, "testsuite", name="pfndiff.triage", tests=str(len(records) + len(errors)),
                          failures=str(failures), errors=str(len(errors)), skipped=str(skipped),
                          time=f"{meta['seconds']:.3f}", timestamp=meta["host"]["time"].rstrip("Z"))
    props = ET.SubElement(suite, "properties")
    for k in ("kernel", "machine", "python"):
        ET.SubElement(props, "property", name=f"host.{k}", value=str(meta["host"].get(k, "")))
    for c in records:
        case = ET.SubElement(suite, "testcase", classname="pfndiff.triage." + (c.get("pair") or "?").replace(".", "_"),
                             name=f"{c['id']} {_what(c)}", time="0")
        text = (f"{_what(c)}\n{c['signature']}\nstatus: {c['status']}, {c['count']} artifact(s), reproducible "
                f"{_repro_pct(c)}\nspec ids: {_spec_ids(c)}\n"
                f"reproducer: {(c.get('reproducer') or {}).get('yaml', '-')}")
        if failing(c):
            f = ET.SubElement(case, "failure", message=f"new divergence cluster {c['id']} (root cause): {_what(c)}",
                              type=c["status"])
            f.text = text
        elif c["delta"] == "vanished":
            ET.SubElement(case, "skipped", message="vanished: no artifact of this triage shows it")
        out = ET.SubElement(case, "system-out")
        out.text = text
    for i, e in enumerate(errors):
        case = ET.SubElement(suite, "testcase", classname="pfndiff.triage.unreadable", name=f"artifact {i}")
        err = ET.SubElement(case, "error", message=e, type="unreadable")
        err.text = e
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def sarif(records: list[dict[str, Any]], errors: list[str], meta: dict[str, Any], yaml_lines: dict[str, int],
          base_uri: str, prefix: str = "", base_id: str = "TRIAGEROOT") -> str:
    """SARIF 2.1.0: one rule and one result per cluster, located at the first differing op of its
    minimised reproducer (``<prefix>clusters/<id>/repro.yaml`` relative to ``base_uri``; the
    triage writes ``%SRCROOT%`` and a path from the working directory when the output lies under
    it, so that a CI job run from the checkout root gets annotations on real files)."""
    rules, results = [], []
    joined = bool(meta.get("joined"))
    for i, c in enumerate(records):
        rules.append({"id": c["id"], "name": "Divergence",
                      "shortDescription": {"text": _what(c)},
                      "fullDescription": {"text": f"{c['signature']} (spec ids: {_spec_ids(c)})"},
                      "defaultConfiguration": {"level": "error"},
                      "properties": {"spec_ids": c.get("spec_ids") or [], "pair": c.get("pair") or ""}})
        level = "error" if failing(c) else "warning" if c["delta"] == "grew" and not c.get("known") else "note"
        res: dict[str, Any] = {
            "ruleId": c["id"], "ruleIndex": i, "level": level,
            "message": {"text": f"{delta_shown(c)} cluster, {c['status']}: {_what(c)}: {c['signature']} "
                                f"({c['count']} artifact(s), reproducible {_repro_pct(c)})"},
            "partialFingerprints": {"pfndiffSignature/v1": c["id"]},
            "properties": {"count": c["count"], "status": c["status"], "first_seen": c["first_seen"],
                           "last_seen": c["last_seen"]},
        }
        if c["delta"] != "vanished":
            res["locations"] = [{"physicalLocation": {
                "artifactLocation": {"uri": f"{prefix}clusters/{c['id']}/repro.yaml", "uriBaseId": base_id},
                "region": {"startLine": max(1, yaml_lines.get(c["id"], 1))}}}]
        if joined:
            res["baselineState"] = _BASELINE[c["delta"]]
        results.append(res)
    notes = [{"level": "error", "message": {"text": e}, "descriptor": {"id": "unreadable-artifact"}} for e in errors]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "pfndiff", "semanticVersion": meta.get("version", "0.1.0"),
                            "rules": rules}},
        "originalUriBaseIds": {base_id: {"uri": base_uri}},
        "results": results,
        "invocations": [{"executionSuccessful": not errors, "toolExecutionNotifications": notes}],
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"


def op_line_in_yaml(text: str, index: int) -> int:
    """1-based line of the ``index``-th op of a dumped scenario (the ``ops:`` line if past the end)."""
    lines = text.splitlines()
    try:
        start = lines.index("ops:")
    except ValueError:
        return 1
    n = -1
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("- "):
            n += 1
            if n == index:
                return i + 1
    return start + 1
