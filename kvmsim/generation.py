"""What every API generation provides, and the small types their code shares.

A generation module (g1_legacy, g2_noref, g2s_sketch, g2f_posted, g3_merged) holds only its own
decisions, side by side with its spec section: it maps the generation-neutral ops onto its own entry
points (documented in each ``lookup``) and supplies the x86 fault-path steps that ``x86.page_fault``
strings together (``faultin`` → ``x86.faultin_attempts`` → ``faultin_lookup``; ``is_stale``;
``finish``).  What the pre-6.13 generations share lives once in ``gup_era`` and the VMA walk every
generation keeps in ``vma_walk``; a generation composes those functions (``builds_on`` names the
modules), it does not inherit another generation's behaviour.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .constants import KVM_PFN_NOSLOT

if TYPE_CHECKING:
    from .memslot import Memslot
    from .pfndb import Page
    from .scenario import Op
    from .world import Spte, World


class Out:
    """A C out-parameter: ``None`` in place of an ``Out`` models a NULL pointer."""
    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value


class _Uninit:
    """An out-parameter the callee never wrote (G2 ``*page`` on early returns, D26)."""

    def __repr__(self) -> str:
        return "<uninitialised>"


UNINIT = _Uninit()


class KernelBug(Exception):
    """A BUG()/BUG_ON(): the op ends here, the VMM thread is gone."""


def nothing() -> None:
    """Release callback for results that hold nothing."""


@dataclass(slots=True)
class Lookup:
    """The outcome of one raw lookup, before the canonical release."""
    api: str
    pfn: int
    page_out: Page | None | _Uninit = None     # the page the API handed back (G2 on), if any
    writable: bool | None = None               # None: the caller passed no writable pointer
    hva: int | None = None
    async_: bool | None = None                 # G1/G2 `*async`; None where the API has none
    release: Callable[[], None] = nothing


@dataclass(slots=True)
class PageResult:
    """``gfn_to_page``: a page (caller owns one reference) or an error value."""
    api: str
    page: Page | None
    error: str | None                          # "ERR_PTR_BAD_PAGE" (G1/G2/G2f) or "NULL" (G3)
    release: Callable[[], None] = nothing


@dataclass(slots=True)
class HostMap:
    """``struct kvm_host_map`` across generations."""
    gfn: int
    pfn: int = 0
    hva: str | None = None                     # "kmap" | "memremap" | None
    page: Page | None = None
    pinned_page: Page | None = None            # G3
    refcounted: bool = True                    # G2f: map->is_refcounted_page
    writable: bool = True                      # G3: map->writable


@dataclass(slots=True)
class Fault:
    """``struct kvm_page_fault`` (the fields the fault-in paths use)."""
    gfn: int
    write: bool
    prefetch: bool = False
    slot: Memslot | None = None
    pfn: int = KVM_PFN_NOSLOT
    map_writable: bool = False
    hva: int = 0
    page: Page | None = None                   # G2 fault->page; G3 fault->refcounted_page
    mmu_seq: int = 0
    attempts: list[str] = field(default_factory=list)   # api calls made, for the trace
    results: list[int] = field(default_factory=list)    # what each call returned (where recorded)
    async_pf: str | None = None               # "queued" | "halt" when async #PF took over
    mmio_spte: bool = False
    noslot: bool = False                       # the path decided "no slot" without a gfn->pfn call


class Generation(ABC):
    """One API generation on top of the shared world model."""

    name: str = ""
    title: str = ""
    spec: str = ""
    # The modules besides its own whose functions make this generation's decisions (root-cause
    # analysis records the calls made in them).
    builds_on: tuple[ModuleType, ...] = ()

    def __init_subclass__(cls, *, name: str, title: str, spec: str, builds_on: tuple[ModuleType, ...] = (),
                          **kwargs: Any) -> None:
        """A generation states what it is in its class statement: its backend name, title, spec
        section and the modules it builds on."""
        super().__init_subclass__(**kwargs)
        cls.name, cls.title, cls.spec, cls.builds_on = name, title, spec, builds_on

    # --- raw API ------------------------------------------------------------------------
    @abstractmethod
    def lookup(self, w: World, op: Op) -> Lookup:
        """The neutral lookup request mapped onto this generation's entry point."""

    @abstractmethod
    def gfn_to_page(self, w: World, op: Op) -> PageResult: ...

    @abstractmethod
    def vcpu_map(self, w: World, op: Op) -> tuple[int, HostMap]: ...

    @abstractmethod
    def vcpu_unmap(self, w: World, m: HostMap, dirty: bool) -> None: ...

    # --- x86 fault path -----------------------------------------------------------------
    @abstractmethod
    def faultin(self, w: World, f: Fault) -> int:
        """``kvm_faultin_pfn`` (``kvm_mmu_faultin_pfn`` in G3): RET_PF_* or -errno."""

    @abstractmethod
    def faultin_lookup(self, w: World, f: Fault, sync: bool) -> tuple[int, bool]:
        """One gfn→pfn lookup of the fault path (``x86.faultin_attempts``): the first (``sync``
        False: may not wait for I/O) or the synchronous, interruptible second; (pfn, needs I/O)."""

    @abstractmethod
    def is_stale(self, w: World, f: Fault) -> bool:
        """``is_page_fault_stale`` under mmu_lock."""

    @abstractmethod
    def finish(self, w: World, f: Fault, r: int) -> None:
        """Release the fault-in result once the SPTE is (or is not) installed."""

    def huge_ok(self, f: Fault) -> bool:
        """Whether ``kvm_mmu_hugepage_adjust`` may use the host mapping level."""
        return True

    def spte_zapped(self, w: World, spte: Spte) -> None:  # noqa: B027 - G3 propagates nothing
        """A/D propagation from a zapped SPTE to struct page (spec D17); G3 does none (§6.5)."""
