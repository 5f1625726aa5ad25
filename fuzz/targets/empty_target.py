#!/usr/bin/env python3
"""libFuzzer target that does nothing: the baseline for bench/throughput.py (the cost of
atheris and libFuzzer themselves)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from fuzz.targets.atheris_compat import fuzz  # noqa: E402


def test_one_input(data: bytes) -> None:
    pass


if __name__ == "__main__":
    fuzz(test_one_input)
