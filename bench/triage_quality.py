#!/usr/bin/env python3
"""Triage quality: plant bugs into copies of the generation modules, fuzz, triage, and check
that each planted bug is found in a realistic pair and becomes exactly one cluster.

Each bug is a one-line change of a decision of one generation (g1, g2, g2f, g3): in its module,
or in the GUP-era path it builds on (``kvmsim/gup_era.py``), as that generation alone uses it.  The
real modules are never edited: a patched copy is written to a temporary directory, loaded under
its own module name and registered as a backend (a patched GUP-era path is loaded first under a
name of its own and imported by that generation's copy alone) (``sim:g3-b16``; ``kvmsim.backend.load_plugins``,
passed to the campaign's libFuzzer processes through ``PFNDIFF_BACKEND_PLUGINS``).  Bugs are run in
mixtures of four, one per module; each mutated generation is compared with an *unmutated other*
generation, catalogue on (the realistic pair: a developer compares their new generation with the
old one), so a bug that makes a generation behave like another one is only found through the
catalogue's assertions (``missing:<entry>``).

Per bug: found (a cluster of its pair that disappears when the mutated backend is replaced by the
original), how many clusters it became, and the time to its first finding.  A bug whose copy never
behaves differently from the original on any seed or campaign input is "equivalent" and left out
of the found share.  Targets: clusters-per-bug accuracy (found bugs with exactly one cluster of
their own) >= 0.9, and >= 90 % of the non-equivalent bugs found within 60 s.

Each feedback mode asked for (default: semantic and bytecode) runs every mixture, one mode after
the other, and is reported on its own.

    .venv/bin/python bench/triage_quality.py [--time 60] [--only m1,m3] [--keep DIR] [--feedback semantic]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from fuzz.campaigns.campaign import Campaign  # noqa: E402
from fuzz.corpus.seeds import build_corpus  # noqa: E402
from fuzz.inputs.codec import decode  # noqa: E402
from fuzz.judging.judge import Judge  # noqa: E402
from fuzz.targets.atheris_compat import FEEDBACK_ENV, FEEDBACK_MODES  # noqa: E402
from fuzz.triage.run import Options  # noqa: E402
from fuzz.triage.run import run as triage  # noqa: E402
from kvmsim import load_scenario  # noqa: E402
from kvmsim.backend import PLUGINS_ENV, load_plugins  # noqa: E402
from kvmsim.checkout import ROOT  # noqa: E402

REPO = ROOT
MODULES = {"g1": ("kvmsim/g1_legacy.py", "G1Legacy"), "g2": ("kvmsim/g2_noref.py", "G2Noref"),
           "g2f": ("kvmsim/g2f_posted.py", "G2fPosted"), "g3": ("kvmsim/g3_merged.py", "G3Merged")}
# The GUP-era path G1 and G2 build on (``from . import gup_era``): bugs in its shared lines are planted
# into a copy that only the mutated generation's copy imports.
GUP_ERA = "gup_era"
# The unmutated generation each mutated one is compared with (the realistic pair).
OTHER = {"g1": "sim:g2", "g2": "sim:g3", "g2f": "sim:g3", "g3": "sim:g2"}


@dataclass
class Bug:
    id: str
    gen: str
    old: str
    new: str
    what: str
    backend: str = ""
    found: bool = False
    clusters: list[str] = field(default_factory=list)
    first_s: float | None = None
    equivalent: bool = False
    shared: bool = False                 # one of its clusters is also another bug's
    module: str = ""                     # the line is in kvmsim/<module>.py, which the generation imports


BUGS = [
    # g1 (v6.3/6.4)
    Bug("b01", "g1", "if n == -EINTR:\n        return KVM_PFN_ERR_SIGPENDING",
        "if n == -11:                               # -EAGAIN (kvmsim.constants)\n"
        "        return KVM_PFN_ERR_SIGPENDING",
        "slow GUP: -EINTR no longer SIGPENDING (-EAGAIN is)",
        module=GUP_ERA),
    Bug("b02", "g1", "if writable_out is not None and slot is not None and slot.readonly:",
        "if writable_out is not None and slot is not None and slot.readonly and write_fault:",
        "RO slot offers RW to read lookups", module=GUP_ERA),
    Bug("b03", "g1",
        "if write_fault and not pte.writable:\n        return 0, KVM_PFN_ERR_RO_FAULT, False      # success",
        "if not pte.writable:\n        return 0, KVM_PFN_ERR_RO_FAULT, False      # success",
        "remapped read of a RO PTE says RO_FAULT", module=GUP_ERA),
    Bug("b04", "g1", "async_out.value = True                 # \"needs I/O\"",
        "async_out.value = False                # \"needs I/O\"", "never signals needs-I/O (behaves like no async)",
        module=GUP_ERA),
    Bug("b05", "g1", "if pg is not None and not w.db.get_unless_zero(pg):    # under the PTE lock",
        "if pg is not None and w.db.get_unless_zero(pg):    # under the PTE lock",
        "remapped refcounted pages refused, refcount-0 accepted"),
    # g2 (noref v6)
    Bug("b06", "g2", "page_out.value = pg                        # the slow path's *page",
        "page_out.value = None                      # the slow path's *page", "slow path hands back no *page",
        module=GUP_ERA),
    Bug("b07", "g2", "        writable_out.value = pte.writable\n    assert pte.page is not None",
        "        writable_out.value = True\n    assert pte.page is not None", "remapped: always writable",
        module=GUP_ERA),
    Bug("b08", "g2", "(FOLL_NOWAIT if async_out is not None else 0)", "(FOLL_NOWAIT if async_out is None else 0)",
        "NOWAIT inverted", module=GUP_ERA),
    Bug("b09", "g2", "if n == -EHWPOISON or (async_out is None and probe_hwpoison(w, hva)):",
        "if n == -EHWPOISON:", "no hwpoison probe (the probe GUP faults pages in: not equivalent)",
        module=GUP_ERA),
    Bug("b10", "g2", "        page_out.value = None                      # set on entry (§3.2)",
        "        pass                                       # set on entry (§3.2)", "*page not reset on entry",
        module=GUP_ERA),
    # g2f (kvm_follow_pfn v11)
    Bug("b11", "g2f", "if not kfp.flags & FOLL_GET and not kfp.guarded_by_mmu_notifier:",
        "if not kfp.flags & FOLL_GET and kfp.guarded_by_mmu_notifier:", "guard inverted"),
    Bug("b12", "g2f", "    if not kfp.flags & FOLL_GET:\n        w.db.put(pg)",
        "    if kfp.flags & FOLL_GET:\n        w.db.put(pg)", "drops the reference a FOLL_GET caller wanted"),
    Bug("b13", "g2f", "    if kfp.slot is not None and kfp.slot.readonly:\n        kfp.try_map_writable = False",
        "    if kfp.slot is not None and not kfp.slot.readonly:\n        kfp.try_map_writable = False",
        "RO-slot check inverted"),
    Bug("b14", "g2f",
        "if kfp.refcounted_page is None and not kfp.guarded_by_mmu_notifier and not w.allow_unsafe_mappings:",
        "if kfp.refcounted_page is None and not kfp.guarded_by_mmu_notifier and w.allow_unsafe_mappings:",
        "unguarded remapped pfns accepted without allow_unsafe_mappings (behaves like G1)"),
    Bug("b15", "g2f", "if n == -EINTR:\n        return KVM_PFN_ERR_SIGPENDING",
        "if n == -EINTR:\n        return KVM_PFN_ERR_FAULT", "signal during GUP is FAULT"),
    # g3 (v6.13)
    Bug("b16", "g3", "if kfp.pin and not w.allow_unsafe_mappings:", "if kfp.pin and w.allow_unsafe_mappings:",
        "pins PFNMAP memory without allow_unsafe_mappings (behaves like <= 6.12, D6)"),
    Bug("b17", "g3", "    if write and not pte.writable:\n        return 0, KVM_PFN_ERR_RO_FAULT",
        "    if not pte.writable:\n        return 0, KVM_PFN_ERR_RO_FAULT", "remapped read of a RO PTE says RO_FAULT"),
    Bug("b18", "g3", "if not (kfp.flags & FOLL_WRITE or kfp.map_writable is not None):",
        "if not (kfp.flags & FOLL_WRITE):", "read lookups skip fast GUP (behaves like <= 6.12, D12)"),
    Bug("b19", "g3", "if n == -EHWPOISON:\n        return KVM_PFN_ERR_HWPOISON",
        "if n == -EFAULT:\n        return KVM_PFN_ERR_HWPOISON", "hwpoison not recognised"),
    Bug("b20", "g3", "    if unused:\n        w.db.put(pg)", "    if unused:\n        pass",
        "a retried fault leaks its page"),
]
MIXTURES = {f"m{i + 1}": [b for b in BUGS if int(b.id[1:]) % 5 == (i + 1) % 5] for i in range(5)}


def plant(bugs: list[Bug], tmp: str) -> str:
    """Write the patched copies and the plugin file; returns the plugin file's path."""
    specs: list[dict[str, str]] = []
    for b in bugs:
        rel, cls = MODULES[b.gen]
        src = _read(rel)
        if b.module:                             # the line is in a module the generation imports
            copy = f"_planted_{b.id}_{b.module}"
            path = _write(tmp, copy, _patched(b, f"kvmsim/{b.module}.py"))
            specs.append({"module": f"kvmsim.{copy}", "file": path})
            imp = f"from . import {b.module}\n"
            if src.count(imp) != 1:
                raise SystemExit(f"{b.id}: {rel} does not import {b.module} as `{imp.strip()}`")
            src = src.replace(imp, f"from . import {copy} as {b.module}\n")
        else:
            src = _patched(b, rel)
        path = _write(tmp, f"planted_{b.id}", src)
        b.backend = f"sim:{b.gen}-{b.id}"
        specs.append({"backend": b.backend, "module": f"kvmsim._planted_{b.id}", "file": path, "class": cls})
    plugins = os.path.join(tmp, "plugins.json")
    with open(plugins, "w", encoding="utf-8") as fh:
        json.dump(specs, fh)
    return plugins


def _read(rel: str) -> str:
    with open(os.path.join(REPO, rel), encoding="utf-8") as fh:
        return fh.read()


def _patched(b: Bug, rel: str) -> str:
    src = _read(rel)
    if src.count(b.old) != 1:
        raise SystemExit(f"{b.id}: the line to change occurs {src.count(b.old)} times in {rel}")
    return src.replace(b.old, b.new)


def _write(tmp: str, name: str, src: str) -> str:
    path = os.path.join(tmp, f"{name}.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(src)
    return path


def pair_of(b: Bug) -> tuple[str, str]:
    """Older generation on the left, as the catalogue's entries read."""
    return (OTHER[b.gen], b.backend) if b.gen == "g3" else (b.backend, OTHER[b.gen])


def attribute(bugs: list[Bug], art_dir: str, tri_dir: str) -> None:
    """Which clusters are which bug's: a cluster of the bug's pair whose signature disappears
    when the mutated backend is replaced by the original."""
    with open(os.path.join(tri_dir, "triage.json"), encoding="utf-8") as fh:
        clusters = json.load(fh)["clusters"]
    firsts: dict[str, float] = {}
    for side in glob.glob(os.path.join(art_dir, "crash-*.yaml")):
        with open(side, encoding="utf-8") as fh:
            import yaml
            doc = yaml.safe_load(fh)
        firsts[os.path.basename(side)[:-5]] = float(doc.get("found_after_s") or 0)
    owner: dict[str, list[str]] = {}
    for c in clusters:
        sc = load_scenario(os.path.join(tri_dir, c["reproducer"]["yaml"]))
        for b in bugs:
            pair = pair_of(b)
            sigs = [s for s in c.get("signatures") or [c["signature"]] if f" {pair[0]}~{pair[1]} " in s
                    or f" {b.backend} " in s]
            if not sigs:
                continue
            orig = f"sim:{b.gen}"
            left, right = (orig if n == b.backend else n for n in pair)
            j = Judge([(left, right)]).judge(sc)
            renamed = c["signature"].replace(b.backend, orig)
            if renamed in j.signatures and not j.signatures[renamed]:
                continue                              # shows without the bug: not this bug's
            owner.setdefault(c["id"], []).append(b.id)
            b.found = True
            b.clusters.append(c["id"])
            for m in c["members"]:
                t = firsts.get(os.path.basename(m["path"]))
                if t is not None and (b.first_s is None or t < b.first_s):
                    b.first_s = t
    for b in bugs:
        b.shared = any(len(owner[c]) > 1 for c in b.clusters)


def equivalent(b: Bug, corpus: str) -> bool:
    """No seed and no campaign input makes the copy behave differently from the original."""
    j = Judge([(b.backend, f"sim:{b.gen}")])
    for p in glob.glob(os.path.join(REPO, "corpus", "seeds", "*.yaml")):
        if j.judge(load_scenario(p)).divs:
            return False
    for p in glob.glob(os.path.join(corpus, "*"))[:3000]:
        with open(p, "rb") as fh:
            if j.judge(decode(fh.read())).divs:
                return False
    return True


def run_mixtures(chosen: list[str], seconds: int, tmp: str, feedback: str) -> list[Bug]:
    """Campaign, triage and attribute each mixture in one feedback mode; the bugs, marked."""
    os.environ[FEEDBACK_ENV] = feedback                     # the campaign's targets inherit it
    bugs: list[Bug] = []
    for m in chosen:
        mix = MIXTURES[m]
        for b in mix:                                       # a mode's results start from nothing
            b.found, b.clusters, b.first_s, b.equivalent, b.shared = False, [], None, False, False
        bugs += mix
        d = os.path.join(tmp, feedback, m)
        shutil.rmtree(d, ignore_errors=True)
        pairs = [pair_of(b) for b in mix]
        print(f"{m} [{feedback}]: {', '.join(b.id + ' ' + b.backend for b in mix)}; {seconds}s", flush=True)
        Campaign(pairs, seconds, 1, os.path.join(d, "corpus"), os.path.join(d, "artifacts"),
                 [os.path.join(REPO, "corpus", "libfuzzer", "diff")], status_every=10**9, out=lambda s: None,
                 minimize=False).run()
        triage(Options([os.path.join(d, "artifacts")], os.path.join(d, "triage"), minimize=False,
                       err=lambda s: None))
        attribute(mix, os.path.join(d, "artifacts"), os.path.join(d, "triage"))
        for b in mix:
            if not b.found:
                b.equivalent = equivalent(b, os.path.join(d, "corpus"))
    return bugs


def report(bugs: list[Bug], feedback: str) -> None:
    print(f"\n[{feedback}]\n{'bug':<4} {'backend':<12} {'found':<5} {'clusters':>8} {'first@s':>8}  what")
    for b in bugs:
        first = f"{b.first_s:8.1f}" if b.first_s is not None else "       -"
        state = "yes" if b.found else ("equiv" if b.equivalent else "no")
        print(f"{b.id:<4} {b.backend:<12} {state:<5} {len(b.clusters):>8} {first}  {b.what}"
              f"{'  (cluster shared with another bug)' if b.shared else ''}")
    found = [b for b in bugs if b.found]
    relevant = [b for b in bugs if not b.equivalent]
    exact = [b for b in found if len(b.clusters) == 1 and not b.shared]
    in60 = [b for b in relevant if b.found and b.first_s is not None and b.first_s <= 60]
    acc = len(exact) / len(found) if found else 0.0
    print(f"\n[{feedback}] planted {len(bugs)} bugs ({len(bugs) - len(relevant)} equivalent); found {len(found)}")
    print(f"[{feedback}] clusters-per-bug accuracy: {acc:.2f} ({len(exact)}/{len(found)} found bugs are exactly one "
          f"cluster of their own; mean {sum(len(b.clusters) for b in found) / max(1, len(found)):.2f} clusters per "
          f"found bug) [target >= 0.9]")
    print(f"[{feedback}] found within 60 s: {len(in60)}/{len(relevant)} non-equivalent bugs "
          f"({100 * len(in60) / max(1, len(relevant)):.0f} %) [target >= 90 %]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=int, default=60, help="seconds per mixture campaign")
    ap.add_argument("--only", help="comma-separated mixtures (m1..m5)")
    ap.add_argument("--keep", help="keep the campaigns and triages under this directory")
    ap.add_argument("--feedback", action="append", choices=FEEDBACK_MODES,
                    help="feedback modes to measure, one after the other (repeatable; default: semantic and bytecode)")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="pfndiff-tq-")
    os.makedirs(tmp, exist_ok=True)
    build_corpus()
    plugins = plant(BUGS, tmp)
    os.environ[PLUGINS_ENV] = plugins
    load_plugins(plugins)
    chosen = args.only.split(",") if args.only else list(MIXTURES)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)")
    t0 = time.time()
    for mode in args.feedback or ["semantic", "bytecode"]:
        report(run_mixtures(chosen, args.time, tmp, mode), mode)
    print(f"\nwall time {time.time() - t0:.0f}s; load {os.getloadavg()[0]:.2f}; work in {tmp}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
