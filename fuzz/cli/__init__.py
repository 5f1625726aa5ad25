"""The ``pfndiff`` command line (``fuzz.cli.app``); ``main`` is the console script."""

from fuzz.cli.app import main

__all__ = ["main"]
