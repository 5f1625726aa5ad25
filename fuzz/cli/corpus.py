"""``pfndiff corpus build`` (seeds -> libFuzzer corpora), ``pfndiff corpus decode`` (an input
file, e.g. a ``crash-<sha1>``, back to a readable scenario) and ``pfndiff corpus dict`` (the
libFuzzer dictionary, for engines that run the target themselves)."""

from __future__ import annotations

import argparse
import os
import sys

from fuzz.campaigns.campaign import TARGETS
from fuzz.cli.common import EXIT_USAGE, Commands, UsageError, output_dir
from fuzz.corpus import seeds as corpus
from fuzz.corpus.merge import MergeError, corpus_stats, format_stats, minimize_corpus
from fuzz.corpus.seeds import NoSeeds, build_corpus, seeds_dir
from fuzz.inputs.codec import decode, libfuzzer_dictionary
from fuzz.judging.artifacts import content_mismatch
from fuzz.judging.engine import parse_pairs
from kvmsim import dump_scenario
from kvmsim.yamlsrc import MAX_INPUT_BYTES, read_bytes


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.action in ("minimize", "stats"):
        return cmd_merge(args)
    if args.action == "build":
        try:                                # an empty build would replace the corpus with nothing
            seeds = seeds_dir(args.seeds)
        except NoSeeds as e:
            raise UsageError(str(e)) from None
        out = corpus.OUT if args.out is None else args.out
        output_dir(out, "--out")
        counts = build_corpus(args.seeds, out)
        for target, n in counts.items():
            print(f"{os.path.join(out, target)}: {n} input(s) from {seeds}")
        return 0
    if args.action == "dict":
        print(libfuzzer_dictionary(), end="")
        return 0
    if not args.files:
        raise UsageError("pfndiff corpus decode: give one or more input files")
    for path in args.files:
        data = read_bytes(path, MAX_INPUT_BYTES, "fuzzer input")
        if (problem := content_mismatch(path, data)) is not None:
            raise UsageError(problem)
        if len(args.files) > 1:
            print(f"# {path}")
        print(dump_scenario(decode(data)), end="")
    return 0


def _add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="minimize: output directory (must be empty or absent)")
    p.add_argument("--pair", action="append", default=[], metavar="LEFT~RIGHT",
                   help="minimize/stats: pairs whose oracle outcomes count as features (default: the fuzz defaults)")
    p.add_argument("--target", default=TARGETS["diff"], help=argparse.SUPPRESS)


def cmd_merge(args: argparse.Namespace) -> int:
    """``pfndiff corpus minimize|stats``."""
    try:
        pairs = parse_pairs(";".join(args.pair)) if args.pair else None
    except ValueError as e:
        raise UsageError(f"pfndiff corpus: {e}") from None
    if not args.files:
        raise UsageError(f"pfndiff corpus {args.action}: give one or more corpus directories")
    try:
        if args.action == "stats":
            n, counts = corpus_stats(args.files, pairs)
            print(format_stats(n, counts))
            return 0
        if not args.output:
            raise UsageError("pfndiff corpus minimize: give the output directory with -o OUT_DIR")
        output_dir(args.output, "-o")
        r = minimize_corpus(args.files, args.output, pairs, args.target)
    except MergeError as e:
        print(f"pfndiff corpus {args.action}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"before: {r.before_files} file(s), {r.before_bytes} bytes")
    print(f"libFuzzer -merge=1: {r.merged_files} file(s) keep the code coverage"
          + (f" ({r.coverage})" if r.coverage else ""))
    print(f"semantic cover: +{r.added_by_cover} file(s) for decision-table cells and oracle outcomes")
    print(f"after: {r.after_files} file(s), {r.after_bytes} bytes in {args.output}")
    print(f"features kept: {r.features_after}/{r.features_before} ({100 * r.share:.1f}%)")
    return 0 if r.share == 1.0 else 1


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "decode", "dict", "minimize", "stats"),
                   help="build: encode the seeds; decode: show inputs; dict: print the libFuzzer dictionary; "
                        "minimize/stats: see fuzz.corpus.merge")
    p.add_argument("files", nargs="*", help="decode: input files; minimize/stats: corpus directories")
    p.add_argument("--seeds", help="seed directory (build; default: the bundled corpus/seeds and corpus/regressions)")
    p.add_argument("--out", help="output directory, one subdirectory per target (build; default: corpus/libfuzzer)")
    _add_merge_arguments(p)


COMMANDS: Commands = {}
COMMANDS["corpus"] = ("build the libFuzzer corpora from the YAML seeds, decode inputs, minimise a corpus, "
                      "show its decision-table cells", cmd_corpus, _setup)
