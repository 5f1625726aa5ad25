"""``pfndiff kernels fetch|add|remove|list|compare``: real legacy and merged kernels side by side in QEMU.
The ``qemu:<kernel>`` backend names are registered by ``kernel_shim.plugin``."""

from __future__ import annotations

import argparse
import json
import sys

from fuzz.campaigns import progress
from fuzz.cli.common import Commands, UsageError
from kernel_shim.kernels.cache import cached_kernels, kernels_dir
from kvmsim import load_scenario
from kvmsim.backend import get_backend


def cmd_kernels(args: argparse.Namespace) -> int:
    return {"fetch": cmd_fetch, "add": cmd_add, "remove": cmd_remove, "list": cmd_list,
            "compare": cmd_compare}[args.kernels_cmd](args)


def cmd_add(args: argparse.Namespace) -> int:
    from kernel_shim.kernels.local import AddError, add_kernel
    from kernel_shim.kernels.qemu import INSTALL_HINT, qemu_missing
    try:
        add_kernel(args.path, args.name, args.modules, log=print)
    except AddError as e:
        raise UsageError(f"pfndiff kernels add: {e}") from None
    if qemu_missing():
        print(f"note: kernels are booted with qemu-system-x86_64, which is not installed; {INSTALL_HINT}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from kernel_shim.kernels.local import remove_kernel
    if not remove_kernel(args.name):
        raise UsageError(f"pfndiff kernels remove: no kernel was added as {args.name!r} (pfndiff kernels list)")
    print(f"removed qemu:{args.name}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from kernel_shim.kernels.apt_private import SUITES
    from kernel_shim.kernels.fetch import SPECS, FetchError, fetch_suite
    from kernel_shim.kernels.qemu import INSTALL_HINT, qemu_missing
    suites = args.suite or ["bookworm", "sid"]
    for s in suites:
        if s not in SPECS or s not in SUITES:
            raise UsageError(f"pfndiff kernels fetch: unknown suite {s!r} (known: {', '.join(SPECS)})")
    bad = 0
    with progress.stage("kernels fetch", len(suites), "suite(s)") as st:
        for s in suites:
            try:
                fetch_suite(s, log=lambda m: st.log(m, sys.stdout))
            except FetchError as e:
                print(f"pfndiff kernels fetch: {s}: {e}", file=sys.stderr)
                bad += 1
            st.advance(note=s)
    if qemu_missing():
        print(f"note: kernels are booted with qemu-system-x86_64, which is not installed; {INSTALL_HINT}")
    return 1 if bad else 0


def cmd_list(args: argparse.Namespace) -> int:
    ks = cached_kernels()
    if args.json:
        print(json.dumps([{"backend": f"qemu:{e.name}", "release": e.release, "suite": e.suite,
                           "generation": e.generation, "kvm_api": e.api, "packages": e.packages,
                           "directory": e.directory} for e in ks], indent=2))
        return 0
    if not ks:
        print(f"no kernels cached in {kernels_dir()} (pfndiff kernels fetch --suite bookworm --suite sid)")
        return 0
    print(f"{'backend':<12} {'release':<26} {'suite':<16} {'gen':<4} {'kvm.ko':<22} packages")
    for e in ks:
        pk = ", ".join(f"{n} {v}" for n, v in e.packages.items())
        print(f"qemu:{e.name:<7} {e.release:<26} {e.suite:<16} {e.generation:<4} {e.api:<22} {pk}")
    print(f"cache: {kernels_dir()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kernel_shim.kernels.compare import build_matrix, format_matrix, kernel_backends
    if args.backend:                    # named explicitly: each must exist and run here, or one line
        for name in args.backend:
            why = get_backend(name).available()             # BackendError: unknown name (one line)
            if why is not None:
                raise UsageError(f"pfndiff kernels compare: backend {name} is not available here: {why}")
        if not any(b.startswith("qemu:") for b in args.backend):
            raise UsageError("pfndiff kernels compare: --backend names no qemu:<kernel> backend")
    backends = args.backend or kernel_backends(include_host=not args.no_host)
    if not any(b.startswith("qemu:") for b in backends):
        raise UsageError("pfndiff kernels compare: no kernel cached (run `pfndiff kernels fetch` first)")
    if args.jobs <= 0:
        raise UsageError("pfndiff kernels compare: --jobs must be positive")
    for f in args.scenarios or []:
        load_scenario(f)                # a bad scenario is one line before any guest boots
    with progress.stage("kernels compare: running the seeds", len(backends), "backend(s)") as st:
        m = build_matrix(backends, args.scenarios or None, jobs=args.jobs, on_done=lambda n: st.advance(note=n))
    if args.json:
        print(json.dumps(m.to_dict(), indent=2, default=str))
    else:
        print(format_matrix(m))
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kernels_cmd", metavar="SUBCOMMAND", parser_class=type(p))
    sub.required = True
    pf = sub.add_parser("fetch", help="download Debian kernels (private apt config) into the user cache")
    pf.add_argument("--suite", action="append", metavar="SUITE",
                    help="bookworm (6.1), trixie (6.12), trixie-backports, sid (newest); repeatable; "
                         "default: bookworm and sid")
    pa = sub.add_parser("add", help="a kernel you built (bzImage/vmlinux + modules, or a build tree) as qemu:NAME")
    pa.add_argument("path", help="bzImage, vmlinuz or vmlinux; or a build tree / directory holding one and its modules")
    pa.add_argument("--name", help="the backend becomes qemu:NAME (default: <version>-local)")
    pa.add_argument("--modules", metavar="DIR", help="where its modules are (.ko, .ko.xz, .ko.zst; searched "
                    "recursively; default: PATH when it is a directory)")
    pr = sub.add_parser("remove", help="forget a kernel added with `kernels add`")
    pr.add_argument("name", help="the NAME it was added as")
    pl = sub.add_parser("list", help="cached kernels, their versions and generations")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pc = sub.add_parser("compare", help="the bundled corpus on every cached kernel and this host, as a matrix")
    pc.add_argument("scenarios", nargs="*", help="scenario files (default: corpus/seeds/*.yaml)")
    pc.add_argument("--backend", action="append", help="backends to compare (default: every cached kernel + host)")
    pc.add_argument("--no-host", action="store_true", help="leave this host's kernel out")
    pc.add_argument("--jobs", type=int, default=2, help="guests booted at a time (default 2)")
    pc.add_argument("--json", action="store_true", help="machine-readable output")


COMMANDS: Commands = {}
COMMANDS["kernels"] = ("real kernels in QEMU: fetch, add, remove, list, compare", cmd_kernels, _setup)
