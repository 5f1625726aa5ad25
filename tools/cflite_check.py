"""``make cflite-check``: the ClusterFuzzLite/OSS-Fuzz integration, verified here without Docker or
network.

1. lint: actionlint on .github/workflows (with shellcheck for their ``run:`` scripts), shellcheck
   on build.sh and the local compile_python_fuzzer;
2. build: ``.clusterfuzzlite/build.sh`` with SRC/OUT/WORK in a temporary directory, the tools
   venv's pip/pyinstaller (pinned as the image pins them) and tools/cflite/compile_python_fuzzer;
3. discovery: the executables in $OUT that OSS-Fuzz would take for targets (executable, ELF or
   shell script, mentioning LLVMFuzzerTestOneInput, not ``.so``) are exactly the continuous
   targets of fuzz/targets, each with its ``.pkg`` (not executable, holding every package data
   file of pyproject.toml), seed corpus zip, dictionary and ``[libfuzzer]`` options;
4. every target: ``-runs=4`` from an empty corpus ("Done 4 runs", the image's bad-build check),
   its seed corpus replayed without a crash (ClusterFuzzLite starts from it) and with the same
   coverage as the un-bundled target (atheris instruments the bundle), ``-merge=1``;
5. planted findings: the literal sketch pair (PFNDIFF_PAIRS, its bugs are findings by design) on
   two seeds of one root cause and one seed of another; each run must exit non-zero with a
   ``crash-<sha1>`` of its input, and ClusterFuzz's own parser (clusterfuzz 2.6.0) must read type
   "Uncaught exception" and the crash state fuzz.judging.crash promises: one state for the one cause, a
   different and not similar one for the other.

``--quick`` (the test in ``make test``) runs 1 and 5 on the un-bundled target only.
"""

from __future__ import annotations

import argparse
import configparser
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kvmsim.checkout import ROOT

REPO = Path(ROOT)
TOOLS_BIN = REPO / ".venv-cflite" / "bin"
LOCAL_COMPILE = REPO / "tools" / "cflite"
WORKFLOWS = REPO / ".github" / "workflows"
SHELL_SCRIPTS = [REPO / ".clusterfuzzlite" / "build.sh", LOCAL_COMPILE / "compile_python_fuzzer"]
PLANT_PAIRS = "sim:g2~sim:g2s-literal"
RUN_TIMEOUT = 600


class CheckError(Exception):
    """A check that failed: one line saying what."""


@dataclass
class Planted:
    name: str               # the seed it comes from
    data: bytes
    cause: str              # root cause id
    state: list[str]        # the crash state fuzz.judging.crash promises


# --- environment -------------------------------------------------------------------------------

def tools_env(extra_path: list[Path] | None = None) -> dict[str, str]:
    """The environment of the tools venv (what the image's python3/pip3/pyinstaller are)."""
    if not (TOOLS_BIN / "python").exists():
        raise CheckError(f"{TOOLS_BIN.parent} is missing: run `make cflite-tools` (make test and make cflite-check do)")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(p) for p in extra_path or []] + [str(TOOLS_BIN), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: int = RUN_TIMEOUT) -> tuple[int, str]:
    """Run with stdout and stderr in one stream (atheris prints the traceback to stdout, libFuzzer
    to stderr; an engine reads both), keep it in ``log``."""
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckError(f"{' '.join(cmd)}: no result within {timeout}s") from None
    text = p.stdout.decode("utf-8", errors="replace")
    log.write_text(text)
    return p.returncode, text


# --- 1. lint -------------------------------------------------------------------------------------

def lint(work: Path) -> list[str]:
    env = tools_env()
    workflows = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    if not workflows:
        raise CheckError(f"no workflow in {WORKFLOWS}")
    rc, out = run([str(TOOLS_BIN / "actionlint"), "-shellcheck", str(TOOLS_BIN / "shellcheck"), *workflows],
                  env, REPO, work / "actionlint.log")
    if rc != 0:
        raise CheckError("actionlint:\n" + out)
    rc, out = run([str(TOOLS_BIN / "shellcheck"), *map(str, SHELL_SCRIPTS)], env, REPO, work / "shellcheck.log")
    if rc != 0:
        raise CheckError("shellcheck:\n" + out)
    return [os.path.relpath(p, REPO) for p in [*workflows, *map(str, SHELL_SCRIPTS)]]


# --- 2./3. build and discovery -----------------------------------------------------------------------

def source_files() -> list[str]:
    """What a checkout holds: tracked and untracked-but-not-ignored files (a fresh clone: the same)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (REPO / f).is_file())


def build(work: Path) -> Path:
    src, out, wrk = work / "src", work / "out", work / "work"
    for d in (src / "pfndiff", out, wrk):
        d.mkdir(parents=True)
    for f in source_files():
        (src / "pfndiff" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / "pfndiff" / f)
    shutil.copy2(REPO / ".clusterfuzzlite" / "build.sh", src / "build.sh")
    env = tools_env([LOCAL_COMPILE])
    env.update(SRC=str(src), OUT=str(out), WORK=str(wrk), SANITIZER="address", FUZZING_LANGUAGE="python",
               ARCHITECTURE="x86_64", FUZZING_ENGINE="libfuzzer")
    rc, text = run(["bash", "-eu", str(src / "build.sh")], env, src / "pfndiff", work / "build.log")
    if rc != 0:
        raise CheckError(f"build.sh failed (exit {rc}):\n" + text[-4000:])
    return out


def discover(out: Path) -> list[str]:
    """OSS-Fuzz's rule for what in $OUT is a fuzz target."""
    found = []
    for p in sorted(out.iterdir()):
        if not p.is_file() or not os.access(p, os.X_OK) or p.name.endswith(".so"):
            continue
        head = p.read_bytes()
        if not (head.startswith(b"\x7fELF") or head.startswith(b"#!")) or b"LLVMFuzzerTestOneInput" not in head:
            continue
        found.append(p.name)
    return found


def check_layout(out: Path) -> dict[str, tuple[int, int]]:
    """Targets found == the continuous targets; each with its bundle, seeds, dict and options.
    Returns {target: (seed files, seed bytes)}."""
    from fuzz.corpus.seeds import seed_files
    from fuzz.targets import CONTINUOUS
    found = discover(out)
    if sorted(found) != sorted(CONTINUOUS):
        raise CheckError(f"targets in $OUT: {found}, expected {sorted(CONTINUOUS)} (fuzz/targets CONTINUOUS)")
    sizes = {}
    for t in found:
        pkg = out / f"{t}.pkg"
        if not pkg.is_file() or os.access(pkg, os.X_OK):
            raise CheckError(f"{pkg.name}: missing, or executable (OSS-Fuzz would take it for a target)")
        with zipfile.ZipFile(out / f"{t}_seed_corpus.zip") as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) != len(seed_files()):
            raise CheckError(f"{t}_seed_corpus.zip: {len(infos)} inputs, corpus/seeds has {len(seed_files())}")
        sizes[t] = (len(infos), sum(i.file_size for i in infos))
        opts = configparser.ConfigParser()
        opts.read(out / f"{t}.options")
        if opts.get("libfuzzer", "dict", fallback="") != f"{t}.dict" or not (out / f"{t}.dict").is_file():
            raise CheckError(f"{t}.options: no [libfuzzer] dict = {t}.dict, or the dictionary is missing")
        lines = (out / f"{t}.dict").read_text().splitlines()
        if not lines or not all(x.startswith('"') and x.endswith('"') for x in lines):
            raise CheckError(f"{t}.dict: not a libFuzzer dictionary")
    return sizes


def package_data() -> list[str]:
    """The package data files pyproject ships (``[tool.setuptools.package-data]``), repo-relative."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        globs = tomllib.load(fh)["tool"]["setuptools"]["package-data"]
    return sorted(os.path.relpath(f, REPO) for pkg, pats in globs.items() for pat in pats
                  for f in glob.glob(str(REPO / pkg / pat)))


def check_bundle(out: Path, target: str) -> int:
    """Every package data file is inside the target's bundle; returns how many."""
    p = subprocess.run([str(TOOLS_BIN / "pyi-archive_viewer"), "-l", "-b", str(out / f"{target}.pkg")], env=tools_env(),
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    listed = {line.strip() for line in p.stdout.splitlines()}
    missing = [f for f in package_data() if f not in listed]
    if p.returncode != 0 or missing:
        raise CheckError(f"{target}.pkg lacks package data: {missing or p.stderr[-500:]}")
    return len(package_data())


def check_runs(out: Path, target: str, work: Path) -> str:
    """The image's bad-build check, the seed corpus replayed, and a merge."""
    env = tools_env()
    env.pop("PFNDIFF_PAIRS", None)
    env.pop("PFNDIFF_CRASH", None)
    d = work / f"runs-{target}"
    seeds, merged = d / "seeds", d / "merged"
    for x in (seeds, merged):
        x.mkdir(parents=True)
    rc, text = run([str(out / target), "-seed=1337", "-runs=4"], env, d, d / "runs4.log")
    if rc != 0 or "Done 4 runs" not in text:
        raise CheckError(f"{target} -runs=4: exit {rc}, no 'Done 4 runs' (see {d / 'runs4.log'})")
    with zipfile.ZipFile(out / f"{target}_seed_corpus.zip") as z:
        z.extractall(seeds)
    rc, text = run([str(out / target), "-runs=0", str(seeds)], env, d, d / "seeds.log")
    if rc != 0 or "Uncaught Python exception" in text:
        raise CheckError(f"{target}: its seed corpus crashes it in crash mode (see {d / 'seeds.log'})")
    cmd, plain_env = unbundled(target)
    plain_env.pop("PFNDIFF_PAIRS", None)
    rc, plain = run([*cmd, "-runs=0", str(seeds)], plain_env, d, d / "seeds-unbundled.log")
    if rc != 0 or _coverage(text) != _coverage(plain) or not _coverage(text):
        raise CheckError(f"{target}: the bundle reaches coverage {_coverage(text)} on the seeds, the checkout "
                         f"{_coverage(plain)} (instrumentation lost in the bundle?)")
    rc, text = run([str(out / target), "-merge=1", str(merged), str(seeds)], env, d, d / "merge.log")
    if rc != 0 or "MERGE-OUTER: successful" not in text or not any(merged.iterdir()):
        raise CheckError(f"{target} -merge=1: exit {rc}, no successful merge or an empty result "
                         f"(see {d / 'merge.log'})")
    return f"{_coverage(plain)} on the seeds, as un-bundled; -merge=1 kept {len(list(merged.iterdir()))}"


# --- 5. planted findings -------------------------------------------------------------------------

def planted_inputs(pairs: str = PLANT_PAIRS) -> list[Planted]:
    """Two seeds whose finding has one root cause, one seed of another cause (seeds in name order)."""
    from fuzz.corpus.seeds import encode_seed, seed_files
    from fuzz.inputs.codec import decode
    from fuzz.judging import crash
    from fuzz.judging.engine import Checker, parse_pairs
    checker = Checker(parse_pairs(pairs), None)
    by_cause: dict[str, list[Planted]] = {}
    for path in seed_files():
        data = encode_seed(path)
        divs = checker.check(data)
        d = crash.primary(divs)
        if d is None:
            continue
        cause, parts = crash.crash_parts(decode(data), d, others=divs)
        planted = Planted(os.path.basename(path), data, cause.id, crash.crash_state(parts))
        by_cause.setdefault(cause.id, []).append(planted)
    twice = next((c for c, ps in by_cause.items() if len(ps) >= 2), None)
    other = next((c for c in by_cause if c != twice), None)
    if twice is None or other is None:
        raise CheckError(f"no seed pair of one cause and a seed of another on {pairs}: {sorted(by_cause)}")
    return by_cause[twice][:2] + by_cause[other][:1]


def check_planted(cmd: list[str], target: str, env: dict[str, str], planted: list[Planted], work: Path) -> list[dict]:
    """Run each planted input through the target (fuzzing mode, its one-input corpus first); each
    must crash with a crash-<sha1> of it; ClusterFuzz's parser must read the promised states."""
    env = dict(env)
    env["PFNDIFF_PAIRS"] = PLANT_PAIRS
    env.pop("PFNDIFF_ARTIFACTS", None)
    env.pop("PFNDIFF_CRASH", None)             # the build's default (on) or --crash decides
    logs = []
    for i, p in enumerate(planted):
        d = work / f"planted-{target}-{i}"
        corpus, arts = d / "corpus", d / "artifacts"
        corpus.mkdir(parents=True)
        arts.mkdir()
        (corpus / "input").write_bytes(p.data)
        rc, _ = run([*cmd, "-runs=100", "-seed=1", f"-artifact_prefix={arts}/", str(corpus)], env, d, d / "output.log")
        crash_file = arts / ("crash-" + hashlib.sha1(p.data).hexdigest())
        if rc == 0 or not crash_file.is_file():
            written = "written" if crash_file.is_file() else "missing"
            raise CheckError(f"planted {p.name}: exit {rc}, {crash_file.name} {written}")
        logs.append(d / "output.log")
    report = parse_crashes(target, logs)
    crashes = report["crashes"]
    for p, c in zip(planted, crashes):
        if c["crash_type"] != "Uncaught exception" or c["crash_state"] != p.state:
            raise CheckError(f"planted {p.name} (cause {p.cause}): ClusterFuzz reads {c['crash_type']!r} "
                             f"{c['crash_state']}, expected 'Uncaught exception' {p.state}")
    a1, a2, b = crashes
    if a1["crash_state"] != a2["crash_state"] or a1["crash_state"] == b["crash_state"] or [0, 2] in report["similar"]:
        raise CheckError(f"crash states do not follow the causes: {[c['crash_state'] for c in crashes]}, "
                         f"similar pairs {report['similar']}")
    return crashes


def parse_crashes(target: str, logs: list[Path]) -> dict:
    env = tools_env()
    p = subprocess.run([str(TOOLS_BIN / "python"), str(LOCAL_COMPILE / "crash_states.py"), target, *map(str, logs)],
                       env=env, capture_output=True, timeout=RUN_TIMEOUT)
    if p.returncode != 0:
        raise CheckError("ClusterFuzz's stack parser failed:\n" + p.stderr.decode(errors="replace")[-3000:])
    return json.loads(p.stdout)


def unbundled(target: str = "diff_target") -> tuple[list[str], dict[str, str]]:
    """A target run from the checkout (the project's venv python), crash mode on."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    env.pop("PFNDIFF_ARTIFACTS", None)
    return [str(REPO / "fuzz" / "targets" / f"{target}.py"), "--crash"], env


def _coverage(log: str) -> str:
    """libFuzzer's last ``cov: N ft: M`` figures."""
    found = re.findall(r"cov: (\d+) ft: (\d+)", log)
    return "cov {} ft {}".format(*found[-1]) if found else ""


# --- the whole check -----------------------------------------------------------------------------

def show_states(planted: list[Planted], crashes: list[dict]) -> None:
    for p, c in zip(planted, crashes):
        print(f"  {p.name} (cause {p.cause}): {c['crash_type']}")
        for frame in c["crash_state"]:
            print(f"      {frame}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="lint and the un-bundled target only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pfndiff-cflite-"))
    try:
        print("lint: " + ", ".join(lint(work)))
        planted = planted_inputs()
        if args.quick:
            cmd, env = unbundled()
            show_states(planted, check_planted(cmd, "diff_target", env, planted, work))
            return 0
        out = build(work)
        sizes = check_layout(out)
        for t, (n, size) in sizes.items():
            data = check_bundle(out, t)
            runs = check_runs(out, t, work)
            print(f"target {t}: built ({data} package data files inside); seed corpus {n} inputs, {size} bytes; "
                  f"-runs=4 ok; {runs}")
        for t in sizes:
            crashes = check_planted([str(out / t)], t, tools_env(), planted, work)
            print(f"target {t}: planted findings on {PLANT_PAIRS}, crash states as ClusterFuzz reads them:")
            show_states(planted, crashes)
        print("cflite-check: ok")
        return 0
    except CheckError as e:
        print(f"cflite-check: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
