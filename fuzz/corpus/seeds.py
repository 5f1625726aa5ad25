"""The bundled corpus: readable YAML seeds (``corpus/seeds``) and the promoted reproducers of
known findings (``corpus/regressions``, so a campaign re-finds every known root cause at once and
shows it as known) encoded into one libFuzzer corpus directory per target
(``corpus/libfuzzer/<target>/<sha1>``).

Why rebuild atomically: a campaign may be reading the directory; the new one is assembled next
to it and swapped in with renames, so a reader sees either the old or the new corpus.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile

from fuzz.inputs.codec import EncodeError, decode, encode
from fuzz.judging.artifacts import load_corpus_entry
from kvmsim.checkout import ROOT
from kvmsim.yamlsrc import ScenarioError

REPO = ROOT
SEEDS = os.path.join(REPO, "corpus", "seeds")
REGRESSIONS = os.path.join(REPO, "corpus", "regressions")
OUT = os.path.join(REPO, "corpus", "libfuzzer")
CORPUS_TARGETS = ("diff",)          # every seed suits the differential target (any pair)


def encode_seed(path: str) -> bytes:
    """A seed file -> bytes; ScenarioError (FILE:LINE) if it cannot be read, encoded or round-tripped."""
    sc = load_corpus_entry(path)
    try:
        data = encode(sc)
    except EncodeError as e:
        raise ScenarioError(f"cannot encode: {e}", 0, path) from None
    if decode(data) != sc:
        raise ScenarioError("does not survive encode/decode unchanged (codec bug)", 0, path)
    return data


class NoSeeds(ValueError):
    """A corpus build found no seed to encode (one line naming where it looked)."""


def seed_files(seeds: str | None = None) -> list[str]:
    return sorted(glob.glob(os.path.join(SEEDS if seeds is None else seeds, "*.yaml")))


def seeds_dir(seeds: str | None = None) -> str:
    """The seed directory (``None``: the bundled one) if it holds seeds, else ``NoSeeds``."""
    where = SEEDS if seeds is None else seeds
    if not seed_files(where):
        hint = (" (the bundled seeds come with a source checkout of pfndiff installed editable, "
                "pip install -e; or give --seeds DIR)") if seeds is None else ""
        raise NoSeeds(f"{where}: no seed scenarios (*.yaml) to build a corpus from{hint}")
    return where


def build_corpus(seeds: str | None = None, out: str | None = None, targets: tuple[str, ...] = CORPUS_TARGETS,
                 extra: tuple[str, ...] | None = None) -> dict[str, int]:
    """Encode every seed (and, for the bundled seeds, every promoted reproducer) into each
    target's directory; returns {target: files}.  ``NoSeeds`` when there is no seed: an empty
    build would replace a corpus with nothing (the bundled seeds are in the source tree, so an
    install that is not an editable one of a checkout has none)."""
    bundled = seeds is None or seeds == SEEDS
    seeds = seeds_dir(seeds)
    out = OUT if out is None else out
    if extra is None:
        extra = (REGRESSIONS,) if bundled else ()
    encoded = {path: encode_seed(path) for d in (seeds, *extra) for path in seed_files(d)}
    os.makedirs(out, exist_ok=True)
    counts = {}
    for target in targets:
        tmp = tempfile.mkdtemp(prefix=f".{target}.new-", dir=out)
        for data in encoded.values():
            with open(os.path.join(tmp, hashlib.sha1(data).hexdigest()), "wb") as fh:
                fh.write(data)
        final = os.path.join(out, target)
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".{target}.old-", dir=out)
            os.rmdir(old)
            os.rename(final, old)
        os.rename(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        counts[target] = len(set(encoded.values()))
    return counts
