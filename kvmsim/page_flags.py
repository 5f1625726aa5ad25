"""KVM's page-based Accessed/Dirty setters, the same in every generation: PG_reserved pages
(the zero page among them) are never touched (``kvm_is_ad_tracked_page``, kvm_main.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pfndb import Page
    from .world import World


def kvm_set_page_accessed(w: World, pg: Page) -> None:
    if not pg.reserved:
        w.db.set_accessed(pg)


def kvm_set_page_dirty(w: World, pg: Page) -> None:
    if not pg.reserved:
        w.db.set_dirty(pg)
