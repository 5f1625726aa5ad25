"""The source checkout the packages are imported from.  The bundled corpus (``corpus/seeds``,
``corpus/regressions``, ``corpus/libfuzzer``) and the fuzz targets' entry files are found relative
to it; this is the one place that says where it is."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def path(*parts: str) -> str:
    """A path inside the checkout."""
    return os.path.join(ROOT, *parts)
