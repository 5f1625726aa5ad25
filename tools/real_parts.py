"""Set up the real parts the test suite runs against, on a fresh machine, idempotently.

``make test`` (through ``make real-parts``) runs this before pytest.  It is the ONE list of what
the tests need from outside Python: Debian packages (installed with apt-get when missing and the
user is root; otherwise the exact command is printed and the tests that need them skip, naming
it) and the Debian kernels booted in QEMU (fetched into the pfndiff cache when not cached).

A part that cannot be set up (no network, not root) is reported and left out: the tests that
need it skip with the reason, so ``make test`` never fails because an archive is unreachable.
The hugetlb pool is not set up here: pytest reserves it for the session and gives it back
(``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class AptPart:
    """A Debian package and the file whose presence shows it is installed."""
    package: str
    provides: str                       # a command on PATH, or an absolute path
    why: str

    def missing(self) -> bool:
        if self.provides.startswith("/"):
            return not os.path.exists(self.provides)
        return shutil.which(self.provides) is None


# Add a package the tests need here, one line each.
APT_PARTS: list[AptPart] = [
    AptPart("qemu-system-x86", "qemu-system-x86_64", "boots Debian kernels for the qemu:<kernel> backends"),
    AptPart("zstd", "zstd", "unpacks zstd-compressed kernels (sid)"),
    AptPart("debian-archive-keyring", "/usr/share/keyrings/debian-archive-keyring.gpg",
            "verifies the Debian archive the kernels come from"),
    AptPart("chromium", "chromium",
            "the real browser the report's page is checked in (tests/fuzz/triage/test_report.py)"),
    AptPart("fonts-dejavu-core", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "text in that browser's screenshots"),
]

# Debian suites whose newest kernel the tests boot: 6.1 (legacy), 6.12 (last legacy), newest 7.x (merged).
KERNEL_SUITES: list[str] = ["bookworm", "trixie", "sid"]


def apt_command(packages: list[str]) -> str:
    return f"apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)}"


def install_apt(parts: list[AptPart], log=print) -> list[str]:
    """Install the missing packages; returns the ones still missing afterwards."""
    missing = [p for p in parts if p.missing()]
    if not missing:
        return []
    names = [p.package for p in missing]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"real-parts: missing {', '.join(names)}; the tests needing them skip. Install with: "
            f"{apt_command(names)}")
        return names
    log(f"real-parts: installing {', '.join(names)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", "DPkg::Lock::Timeout=600"]           # another apt-get may hold the lock for a while
    for cmd in (["apt-get", *wait, "update", "-q"],
                # --reinstall: a package dpkg lists as installed whose program is gone comes back too
                ["apt-get", *wait, "install", "-y", "-q", "--reinstall", "--no-install-recommends", *names]):
        try:
            r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, timeout=1200)
        except subprocess.TimeoutExpired:
            log(f"real-parts: `{' '.join(cmd)}` timed out; the tests needing {', '.join(names)} skip")
            return names
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["?"])[-1]
            log(f"real-parts: `{' '.join(cmd)}` failed ({tail}); the tests needing {', '.join(names)} skip")
            return names
    return [p.package for p in missing if p.missing()]


def fetch_kernels(suites: list[str], log=print) -> list[str]:
    """Fetch each suite's kernel unless one is cached (no network when all are); returns failures."""
    from kernel_shim.kernels.cache import cached_kernels
    from kernel_shim.kernels.fetch import FetchError, fetch_suite
    have = {e.suite for e in cached_kernels()}
    failed = []
    for s in suites:
        if s in have:
            continue
        log(f"real-parts: fetching the {s} kernel (pfndiff kernels fetch --suite {s})")
        try:
            fetch_suite(s, log=lambda m: None)
        except FetchError as e:
            log(f"real-parts: {s}: {e}; the tests needing it skip")
            failed.append(s)
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-kernels", action="store_true", help="leave the kernel cache alone")
    args = ap.parse_args(argv)
    still = install_apt(APT_PARTS)
    failed = [] if args.no_kernels else fetch_kernels(KERNEL_SUITES)
    if not still and not failed:
        print("real-parts: all present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
