"""``pfndiff corpus build`` (seeds -> libFuzzer corpora), ``pfndiff corpus decode`` (an input
file, e.g. a ``crash-<sha1>``, back to a readable scenario) and ``pfndiff corpus dict`` (the
libFuzzer dictionary, for engines that run the target themselves)."""

from __future__ import annotations

import argparse
import os

from kvmsim import dump_scenario
from kvmsim.yamlsrc import MAX_INPUT_BYTES, read_bytes

from . import corpus_minimize
from .artifacts import content_mismatch
from .cli import COMMANDS, UsageError, output_dir
from .codec import decode, libfuzzer_dictionary
from .corpus import OUT, SEEDS, build_corpus, seed_files


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.action in ("minimize", "stats"):
        return corpus_minimize.cmd(args)
    if args.action == "build":
        if not seed_files(args.seeds):      # an empty build would replace the corpus with nothing
            raise UsageError(f"{args.seeds}: no seed scenarios (*.yaml) to build a corpus from")
        output_dir(args.out, "--out")
        counts = build_corpus(args.seeds, args.out)
        for target, n in counts.items():
            print(f"{os.path.join(args.out, target)}: {n} input(s) from {args.seeds}")
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


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "decode", "dict", "minimize", "stats"),
                   help="build: encode the seeds; decode: show inputs; dict: print the libFuzzer dictionary; "
                        "minimize/stats: see fuzz.corpus_minimize")
    p.add_argument("files", nargs="*", help="decode: input files; minimize/stats: corpus directories")
    p.add_argument("--seeds", default=SEEDS, help="seed directory (build)")
    p.add_argument("--out", default=OUT, help="output directory, one subdirectory per target (build)")
    corpus_minimize.add_arguments(p)


COMMANDS["corpus"] = ("build the libFuzzer corpora from the YAML seeds, decode inputs, minimise a corpus, "
                      "show its decision-table cells", cmd_corpus, _setup)
