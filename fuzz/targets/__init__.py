"""Executable libFuzzer targets (atheris).  Run them directly: ``fuzz/targets/diff_target.py``."""
