"""The ``pfndiff`` command line.  Every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from typing import Any, NoReturn

import yaml

from kvmsim import BackendError, ScenarioError, backend_names, get_backend, load_scenario
from kvmsim.trace import Trace

from .report import flow_text, kvm_view

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad option or argument; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def output_dir(path: str, what: str, create: bool = True) -> None:
    """Check (and, with ``create``, make) an output directory before any work is done, so that a
    bad path is one line naming it, not a traceback after minutes of work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: {what} must be a directory, but it is a file")
    target = path if create else (os.path.dirname(os.path.abspath(path)) or ".")
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{path}: cannot create the {what} directory: {e.strerror}") from None
    _can_create_in(path if os.path.isdir(path) else target, path, what)


def output_file(path: str, what: str) -> None:
    """Check an output file path: not a directory, in a directory that exists and is writable."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: {what} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: {what}: directory {parent} does not exist")
    _can_create_in(parent, path, what)


def _can_create_in(directory: str, path: str, what: str) -> None:
    """Create (and drop) a scratch file: permission bits alone do not tell a root user about a
    read-only file system or sysfs."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".pfndiff-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"{path}: {what}: cannot write in {directory}: {e.strerror}") from None


def os_error_line(e: OSError) -> str:
    """One line for a file-system error that escaped the commands' own checks."""
    name = e.filename if e.filename is not None else ""
    return f"pfndiff: {name}: {e.strerror or e}" if name else f"pfndiff: {e.strerror or e}"


def _restore_sigint() -> None:
    """A script that starts pfndiff in the background may hand it SIGINT ignored (POSIX shells do
    that for asynchronous commands); Ctrl-C/``kill -INT`` must still stop it cleanly (exit 130)."""
    try:
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:                  # not the main thread (an embedding caller): leave it alone
        pass


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=120).rstrip()


def format_trace(trace: Trace) -> str:
    """Human-readable trace: one block per op."""
    lines = [f"backend: {trace.backend}  ({', '.join(f'{k}={v}' for k, v in trace.meta.items() if not isinstance(v, dict))})"]
    for r in trace.records:
        lines.append(f"[{r.index}] {r.op}")
        for level in ("api", "vmm"):
            val = getattr(r, level)
            if val:
                flow = flow_text(kvm_view(val))
                lines.append(f"    {level}: {flow}")
        if r.events:
            lines.append(f"    events: {', '.join(r.events)}")
    for key in ("refs_held_at_end", "pins_held_at_end"):
        if trace.meta.get(key):
            lines.append(f"{key}: {trace.meta[key]}")
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------

def cmd_backends(args: argparse.Namespace) -> int:
    rows = []
    for name in backend_names():
        try:
            b = get_backend(name)
        except BackendError as e:
            rows.append({"name": name, "available": False, "reason": str(e)})
            continue
        reason = b.available()
        rows.append({"name": name, "description": b.description(), "version": b.version(),
                     "available": reason is None, **({"reason": reason} if reason else {}), "info": b.info()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        desc = r.get("description", "")
        note = "" if r["available"] else f"  [unavailable: {r['reason']}]"
        print(f"{r['name']:<{width}}  {desc}{note}")
    print("\nsim:g2s-literal:Q1,Q2 enables only the named sketch quirks (S2 S4 S5 S6 S8).")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    sc = load_scenario(args.scenario)
    backend = get_backend(args.backend)
    reason = backend.available()
    if reason is not None:
        raise BackendError(f"backend {args.backend} is not available here: {reason}")
    trace = backend.run(sc)
    if args.json:
        print(json.dumps(trace.to_dict(), indent=2))
    else:
        print(format_trace(trace))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.scenarios:
        try:
            sc = load_scenario(path)
        except ScenarioError as e:
            print(str(e), file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: ok ({len(sc.world.memslots)} memslots, {len(sc.world.vmas)} vmas, {len(sc.ops)} ops)")
    return EXIT_USAGE if bad else 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_: str):
    def deco(setup: Callable[[argparse.ArgumentParser], None]):
        def register(fn: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help_, fn, setup)
            return fn
        return register
    return deco


def _setup_backends(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--backend", "-b", default="sim:g3", help="backend name (see `pfndiff backends`)")
    p.add_argument("--json", action="store_true", help="print the trace as JSON")


def _setup_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenarios", nargs="+", help="scenario YAML files")


COMMANDS.update({
    "backends": ("list the backends", cmd_backends, _setup_backends),
    "run": ("run a scenario on one backend and print its trace", cmd_run, _setup_run),
    "check": ("validate scenario files", cmd_check, _setup_check),
})


def _load_extensions() -> None:
    """Commands that live in their own modules register themselves on import."""
    import importlib
    for mod in ("fuzz.cli_diff", "fuzz.cli_fuzz", "fuzz.cli_corpus", "fuzz.cli_triage", "fuzz.cli_report", "kernel_shim.cli",
                "kernel_shim.kernels.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_extensions()
    parser = _Parser(prog="pfndiff", description="Differential fuzzing of KVM's gfn→pfn APIs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_, fn, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        setup(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    _restore_sigint()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except (ScenarioError, BackendError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    except OSError as e:
        print(os_error_line(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(str(e) or "pfndiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
