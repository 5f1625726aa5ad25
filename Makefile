# `make test` and `make fuzz` each bootstrap .venv from nothing (Python 3.11 + pip).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test fuzz venv lint bench clean real-parts cflite-tools cflite-check

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (pfndiff needs Python 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# ruff (import order, complexity <= 10, lines <= 120), mypy, and the one direction of dependencies (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The real parts the tests run against (apt packages such as QEMU, Debian kernels): one list in
# tools/real_parts.py, installed or fetched when missing; what cannot be set up makes its tests skip.
real-parts: $(STAMP)
	$(BIN)/python tools/real_parts.py

# The ClusterFuzzLite tools, in their own venv (pyinstaller/coverage/setuptools pinned as the
# OSS-Fuzz Python image pins them, ClusterFuzz's stack parser, actionlint, shellcheck).
CFLITE_VENV  := .venv-cflite
CFLITE_STAMP := $(CFLITE_VENV)/.installed
$(CFLITE_STAMP): tools/cflite-requirements.txt
	$(PYTHON) -m venv $(CFLITE_VENV)
	$(CFLITE_VENV)/bin/pip install --quiet --upgrade pip
	$(CFLITE_VENV)/bin/pip install --quiet -r tools/cflite-requirements.txt
	@touch $(CFLITE_STAMP)

cflite-tools: $(CFLITE_STAMP)

# Builds the targets with .clusterfuzzlite/build.sh into a temporary $OUT and checks them as the
# engine would (tools/cflite_check.py): no Docker, no network after the tools are installed.
cflite-check: $(STAMP) $(CFLITE_STAMP)
	$(BIN)/python tools/cflite_check.py

test: lint real-parts $(CFLITE_STAMP)
	$(BIN)/python -m pytest

# The default campaign (its pairs: fuzz.campaigns.campaign.DEFAULT_PAIRS): a few minutes over the simulated pairs on the bundled seed corpus,
# findings in ./artifacts, the grown corpus in ./fuzz-out/corpus; ends with the findings table.
# One libFuzzer worker per core (FUZZ_JOBS=1 for one).
FUZZ_TIME ?= 180
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
fuzz: $(STAMP)
	$(BIN)/pfndiff fuzz --time $(FUZZ_TIME) --jobs $(FUZZ_JOBS) --corpus fuzz-out/corpus --artifacts artifacts

bench: $(STAMP)
	$(BIN)/python bench/sim_speed.py

clean:
	rm -rf $(VENV) $(CFLITE_VENV) build *.egg-info
