"""Debian packages through apt with a private configuration.

Why private: the machine's apt sources, state and cache are never touched.  Each suite gets its
own ``sources.list``, ``Dir::State`` (lists and an empty dpkg status, so installed packages do
not matter) and ``Dir::Cache`` under the pfndiff cache; ``apt-get update`` and ``apt-get download``
run against those only.  Packages are resolved at fetch time (the newest name matching a
pattern), because versions leave the archive as suites move.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
# suite -> (archive, suite name) lines; the security archive carries 6.1/6.12 kernel updates.
SUITES: dict[str, list[tuple[str, str]]] = {
    "bookworm": [("main", "bookworm"), ("security", "bookworm-security")],
    "trixie": [("main", "trixie"), ("security", "trixie-security")],
    "trixie-backports": [("main", "trixie-backports")],
    "sid": [("main", "sid")],
}
UPDATE_TIMEOUT = 900.0
DOWNLOAD_TIMEOUT = 1800.0


class AptError(Exception):
    """apt is missing, the archive is unreachable, or no package matches (the message says which)."""


@dataclass
class PrivateApt:
    suite: str
    root: Path | None = None

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise AptError(f"unknown suite {self.suite!r} (known: {', '.join(SUITES)})")
        if self.root is None:
            self.root = cache_root() / "apt" / self.suite
        if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
            raise AptError("apt-get/apt-cache not found (kernels are fetched from Debian's archive with apt)")
        if not os.path.exists(KEYRING):
            raise AptError(f"{KEYRING} is missing (install debian-archive-keyring)")

    @property
    def directory(self) -> Path:
        """The suite's private apt tree (``root``, which ``__post_init__`` always fills in)."""
        assert self.root is not None, "__post_init__ sets root"
        return self.root

    # --- configuration ---------------------------------------------------------------------
    def _layout(self) -> None:
        r = self.directory
        for d in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                  "cache/archives/partial", "downloads"):
            (r / d).mkdir(parents=True, exist_ok=True)
        status = r / "state" / "status"
        if not status.exists():
            status.write_text("")
        mirror = os.environ.get("PFNDIFF_DEBIAN_MIRROR", MIRROR)
        security = os.environ.get("PFNDIFF_DEBIAN_SECURITY", SECURITY)
        lines = [f"deb [signed-by={KEYRING} arch=amd64] {mirror if a == 'main' else security} {s} main"
                 for a, s in SUITES[self.suite]]
        (r / "etc" / "sources.list").write_text("\n".join(lines) + "\n")

    def options(self) -> list[str]:
        r = self.directory
        opts = {
            "Dir::Etc::SourceList": r / "etc" / "sources.list",
            "Dir::Etc::SourceParts": r / "etc" / "sources.list.d",
            "Dir::Etc::Preferences": r / "etc" / "preferences",
            "Dir::Etc::PreferencesParts": r / "etc" / "preferences.d",
            "Dir::State": r / "state",
            "Dir::State::Lists": r / "state" / "lists",
            "Dir::State::status": r / "state" / "status",
            "Dir::Cache": r / "cache",
            "Dir::Cache::archives": r / "cache" / "archives",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        out = []
        for k, v in opts.items():
            if v != "":
                out += ["-o", f"{k}={v}"]
        return out

    def _run(self, tool: str, args: list[str], timeout: float, cwd: Path | None = None) -> str:
        cmd = [tool, *self.options(), *args]
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
        except subprocess.TimeoutExpired:
            raise AptError(f"{tool} {' '.join(args[:2])}: no result within {timeout:g} s") from None
        if p.returncode != 0:
            err = [ln for ln in p.stderr.splitlines() if ln.startswith(("E:", "W:", "Err"))] or p.stderr.splitlines()
            raise AptError(f"{tool} {' '.join(args[:2])} failed: {' | '.join(err[-3:]) or 'exit ' + str(p.returncode)}")
        return p.stdout

    # --- operations --------------------------------------------------------------------------
    def update(self) -> None:
        self._layout()
        out = self._run("apt-get", ["update", "-q"], UPDATE_TIMEOUT)
        if "Err:" in out:
            bad = [ln for ln in out.splitlines() if ln.startswith("Err:")]
            raise AptError(f"apt-get update ({self.suite}): {bad[0]}")

    def versions(self, pattern: str) -> dict[str, str]:
        """Package names matching the regular expression (whole name) -> candidate version."""
        self._layout()
        names = self._run("apt-cache", ["pkgnames"], 120.0).split()
        rx = re.compile(pattern)
        out = {}
        for n in sorted(n for n in names if rx.fullmatch(n)):
            v = self.candidate(n)
            if v:
                out[n] = v
        return out

    def candidate(self, name: str) -> str | None:
        text = self._run("apt-cache", ["policy", name], 120.0)
        m = re.search(r"Candidate:\s*(\S+)", text)
        return None if m is None or m[1] == "(none)" else m[1]

    def newest(self, pattern: str) -> tuple[str, str]:
        """The newest package matching ``pattern`` (by Debian version ordering)."""
        found = self.versions(pattern)
        if not found:
            raise AptError(f"no package matching {pattern!r} in {self.suite}")
        best = None
        for n, v in found.items():
            if best is None or version_gt(v, best[1]) or (v == best[1] and n > best[0]):
                best = (n, v)
        assert best is not None
        return best

    def download(self, name: str, version: str) -> Path:
        """The .deb of ``name=version``, downloaded once into the suite's cache."""
        self._layout()
        dest = self.directory / "downloads"
        fname = f"{name}_{version.replace(':', '%3a')}_"
        hits = [p for p in dest.glob(f"{glob_escape(fname)}*.deb")]
        if hits:
            return hits[0]
        self._run("apt-get", ["download", "-q", f"{name}={version}"], DOWNLOAD_TIMEOUT, cwd=dest)
        hits = [p for p in dest.glob(f"{glob_escape(fname)}*.deb")]
        if not hits:
            raise AptError(f"apt-get download {name}={version} left no .deb in {dest}")
        return hits[0]


def glob_escape(s: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", s)


def version_gt(a: str, b: str) -> bool:
    """Debian version ordering (dpkg's own comparison)."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], timeout=30).returncode == 0
