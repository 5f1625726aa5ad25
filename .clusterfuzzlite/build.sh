#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build of pfndiff.  Runs in gcr.io/oss-fuzz-base/base-builder-python
# (Dockerfile next to this file), or locally through `make cflite-check` with SRC, OUT and WORK
# pointing at temporary directories and an equivalent compile_python_fuzzer on PATH.
#
# For every target that fuzz/targets/__init__.py lists in CONTINUOUS, $OUT gets:
#   <target>, <target>.pkg   the wrapper (contains LLVMFuzzerTestOneInput) and the pyinstaller
#                            bundle, from compile_python_fuzzer; crash mode on (crash_mode_on.py)
#   <target>_seed_corpus.zip the bundled seeds, encoded by `pfndiff corpus build`
#   <target>.dict            the codec's libFuzzer dictionary (`pfndiff corpus dict`)
#   <target>.options         libFuzzer options ([libfuzzer] section)

cd "$SRC/pfndiff"

# The project and its pinned dependencies (atheris 3.0.0 is what the image builds too).
pip3 install .

corpus="$WORK/pfndiff-corpus"
rm -rf "$corpus"
pfndiff corpus build --seeds corpus/seeds --out "$corpus"
pfndiff corpus dict > "$WORK/pfndiff.dict"

# The codec bounds a scenario (16 ops, 4 VMAs, 4 memslots, 6 pages, short names); longer inputs
# only carry ignored tail bytes.
max_len=2048

targets=$(python3 -m fuzz.targets)
while read -r target seeds; do
  # Package data (the known-divergence catalogue, the JSON schemas) must be inside the bundle.
  compile_python_fuzzer "fuzz/targets/$target.py" \
    --collect-data oracles \
    --collect-data fuzz \
    --copy-metadata atheris \
    --copy-metadata pfndiff \
    --runtime-hook .clusterfuzzlite/crash_mode_on.py

  rm -f "$OUT/${target}_seed_corpus.zip"
  (cd "$corpus/$seeds" && zip -q -j "$OUT/${target}_seed_corpus.zip" ./*)
  cp "$WORK/pfndiff.dict" "$OUT/$target.dict"
  printf '[libfuzzer]\ndict = %s.dict\nmax_len = %s\n' "$target" "$max_len" > "$OUT/$target.options"
done <<< "$targets"
