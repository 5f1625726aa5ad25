#!/usr/bin/env python3
"""libFuzzer target that does nothing: the baseline for bench/throughput.py (the cost of
atheris and libFuzzer themselves)."""

from fuzz.targets.atheris_compat import fuzz


def test_one_input(data: bytes) -> None:
    pass


if __name__ == "__main__":
    fuzz(test_one_input)
