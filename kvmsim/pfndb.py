"""The pfn database: struct pages and frames without one (spec §1.3 "pfn database").

KVM's own references are what the fuzzer compares, so each page separates the references held
by everyone else (``base_refs``: the mapping, the driver, the page cache) from the total
``refcount``; KVM's share is the difference.  Every mutation records the page in ``touched`` so
that an op's per-page deltas are computed without scanning the whole database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .scenario.vocabulary import (  # noqa: F401 - the page kinds, re-exported for their users
    NO_STRUCT_PAGE,
    NORMAL,
    PAGE_KINDS,
    REFCOUNT0,
    RESERVED,
    ZERO,
    ZONE_DEVICE,
)

ZERO_PFN = 0x1000
FIRST_DECLARED_PFN = 0x80000
ALLOC_PFN_BASE = 0x4000000


@dataclass(slots=True, eq=False)
class Page:
    pfn: int
    name: str
    kind: str
    refcount: int
    base_refs: int
    pincount: int = 0
    accessed: bool = False
    dirty: bool = False
    hwpoison: bool = False
    memremap_ok: bool = True
    data: dict[int, int] = field(default_factory=dict)

    @property
    def pfn_valid(self) -> bool:
        """Has a struct page (``pfn_valid``)."""
        return self.kind != NO_STRUCT_PAGE

    @property
    def reserved(self) -> bool:
        """PG_reserved: reserved pages, the zero page and ZONE_DEVICE pages have it."""
        return self.kind in (RESERVED, ZERO, ZONE_DEVICE)

    @property
    def kvm_refs(self) -> int:
        return self.refcount - self.base_refs


class PfnDB:
    """All frames of the simulated host, by pfn."""

    def __init__(self) -> None:
        zero = self.zero = Page(ZERO_PFN, "zero", ZERO, 1000, 1000)
        self.pages: dict[int, Page] = {ZERO_PFN: zero}
        self.by_name: dict[str, Page] = {"zero": zero}
        self.touched: dict[Page, tuple[int, int, bool, bool]] = {}   # page -> state before the op
        self.underflows: list[str] = []
        self._next_declared = FIRST_DECLARED_PFN

    def add(self, page: Page) -> Page:
        self.pages[page.pfn] = page
        self.by_name[page.name] = page
        return page

    def declare(self, name: str, kind: str, pfn: int | None = None, refcount: int | None = None,
                memremap_ok: bool = True) -> Page:
        """A page named by the scenario (device memory, reserved pages, ...)."""
        if pfn is None:
            while self._next_declared in self.pages:
                self._next_declared += 1
            pfn = self._next_declared
            self._next_declared += 1
        if refcount is None:
            refcount = 0 if kind in (REFCOUNT0, NO_STRUCT_PAGE) else 1
        page = Page(pfn, name, kind, refcount, refcount)    # positional: keywords cost a third more
        if not memremap_ok:
            page.memremap_ok = False
        return self.add(page)

    def alloc(self, owner: str, hva_index: int) -> Page:
        """A fresh page for a fault at a given hva; its name and pfn depend only on where it was
        allocated, so that every generation names the same page the same way."""
        k = 0
        while True:
            pfn = ALLOC_PFN_BASE + (hva_index << 4) + k
            if pfn not in self.pages:
                break
            k += 1
        return self.add(Page(pfn, f"{owner}#{k}", NORMAL, 1, 1))

    def lookup(self, pfn: int) -> Page | None:
        return self.pages.get(pfn)

    # --- reference and flag operations (each records the page's prior state once) -------
    def touch(self, pg: Page) -> None:
        if pg not in self.touched:
            self.touched[pg] = (pg.refcount - pg.base_refs, pg.pincount, pg.accessed, pg.dirty)   # kvm_refs

    def get(self, pg: Page) -> None:
        self.touch(pg)
        pg.refcount += 1

    def get_unless_zero(self, pg: Page) -> bool:
        """``get_page_unless_zero``."""
        if pg.refcount <= 0:
            return False
        self.get(pg)
        return True

    def put(self, pg: Page) -> None:
        self.touch(pg)
        pg.refcount -= 1
        if pg.refcount < pg.base_refs and pg.name not in self.underflows:
            self.underflows.append(pg.name)

    def pin(self, pg: Page) -> None:
        if pg.kind == ZERO:
            return   # mm/gup.c since v6.5 (c8070b787519): FOLL_PIN leaves the zero page unpinned
        self.touch(pg)
        pg.refcount += 1  # FOLL_PIN also elevates the refcount (GUP_PIN_COUNTING_BIAS simplified to 1)
        pg.pincount += 1

    def unpin(self, pg: Page) -> None:
        if pg.kind == ZERO:
            return   # unpin_user_page() ignores the zero page (gup_put_folio), matching pin()
        self.touch(pg)
        pg.pincount -= 1
        self.put(pg)

    def set_accessed(self, pg: Page) -> None:
        if not pg.accessed:
            self.touch(pg)
            pg.accessed = True

    def set_dirty(self, pg: Page) -> None:
        if not pg.dirty:
            self.touch(pg)
            pg.dirty = True

    # --- mm-owned references (not KVM's) -------------------------------------------------
    def mm_get(self, pg: Page) -> None:
        pg.refcount += 1
        pg.base_refs += 1

    def mm_put(self, pg: Page) -> None:
        pg.refcount -= 1
        pg.base_refs -= 1
