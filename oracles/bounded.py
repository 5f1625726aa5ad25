"""A memo that keeps its last ``size`` entries, first in first out.

Why not a plain dict evicted with ``del d[next(iter(d))]``: a dict leaves a deleted entry's slot
in place until it is resized, so finding the oldest live entry scans every slot deleted before
it; measured at 8,192 entries, 3.5 us per eviction, against 0.16 us for ``OrderedDict.popitem``.
The checker's memos evict about once per new input.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(OrderedDict[K, V]):
    """``put`` drops the oldest entry when ``size`` are held and the key is new; reading is a plain
    mapping's."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.size and key not in self:
            self.popitem(last=False)
        self[key] = value
        return value
