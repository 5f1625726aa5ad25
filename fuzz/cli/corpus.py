"""``pfndiff corpus build`` (seeds -> libFuzzer corpora), ``pfndiff corpus decode`` (an input
file, e.g. a ``crash-<sha1>``, back to a readable scenario) and ``pfndiff corpus dict`` (the
libFuzzer dictionary, for engines that run the target themselves)."""

from __future__ import annotations

import argparse
import os

from kvmsim import dump_scenario
from kvmsim.yamlsrc import MAX_INPUT_BYTES, read_bytes

from fuzz.corpus import merge as corpus_minimize
from fuzz.judging.artifacts import content_mismatch
from fuzz.cli.common import UsageError, output_dir, Commands
from fuzz.inputs.codec import decode, libfuzzer_dictionary
from fuzz.corpus import seeds as corpus
from fuzz.corpus.seeds import NoSeeds, build_corpus, seeds_dir


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.action in ("minimize", "stats"):
        return corpus_minimize.cmd(args)
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


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "decode", "dict", "minimize", "stats"),
                   help="build: encode the seeds; decode: show inputs; dict: print the libFuzzer dictionary; "
                        "minimize/stats: see fuzz.corpus.merge")
    p.add_argument("files", nargs="*", help="decode: input files; minimize/stats: corpus directories")
    p.add_argument("--seeds", help="seed directory (build; default: the bundled corpus/seeds and corpus/regressions)")
    p.add_argument("--out", help="output directory, one subdirectory per target (build; default: corpus/libfuzzer)")
    corpus_minimize.add_arguments(p)


COMMANDS: Commands = {}
COMMANDS["corpus"] = ("build the libFuzzer corpora from the YAML seeds, decode inputs, minimise a corpus, "
                      "show its decision-table cells", cmd_corpus, _setup)
