"""The ``pfndiff`` command line: the one top layer.  It lists every command module explicitly;
every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import signal
import sys

from fuzz.cli import backends, corpus, diff, host, kernels, report, triage
from fuzz.cli import fuzz as campaign
from fuzz.cli.common import EXIT_USAGE, Commands, Parser, UsageError, os_error_line
from kvmsim import BackendError, ScenarioError

COMMANDS: Commands = {**backends.COMMANDS, **diff.COMMANDS, **campaign.COMMANDS, **corpus.COMMANDS,
                      **triage.COMMANDS, **report.COMMANDS, **host.COMMANDS, **kernels.COMMANDS}


def _restore_sigint() -> None:
    """A script that starts pfndiff in the background may hand it SIGINT ignored (POSIX shells do
    that for asynchronous commands); Ctrl-C/``kill -INT`` must still stop it cleanly (exit 130)."""
    try:
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:                  # not the main thread (an embedding caller): leave it alone
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pfndiff", description="Differential fuzzing of KVM's gfn→pfn APIs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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

