"""The words a scenario describes host memory with (spec §1.3): page states of a normal VMA,
fault-handler outcomes of a remapped one, and the kinds of frame in the pfn database.

They belong to the format, not to the simulator: the loader, the codec and the real-host backend
read scenarios without the model, and the model's mm and pfn database take these names from here.
"""

from __future__ import annotations

# Normal-VMA page states (§1.3).
UNPOPULATED = "unpopulated"   # read fault: zero page (private anon) or a new page; write: new page
PRESENT_RW = "present_rw"
PRESENT_RO = "present_ro"     # COW-shared in a private VMA, write-protected in a shared one
RESIDENT = "resident"         # resident but unmapped: minor fault, no I/O
NEEDS_IO = "needs_io"         # major fault: swap-in or file read
HWPOISON = "hwpoison"
PAGE_STATES = (UNPOPULATED, PRESENT_RW, PRESENT_RO, RESIDENT, NEEDS_IO, HWPOISON)

# Remapped-VMA fault-handler outcomes for an absent PTE (§1.3).
H_POPULATES = "populates"
H_DROPS_LOCK = "drops_lock"   # drops the mmap lock, then populates: KVM retries the VMA lookup
H_FAILS = "fails"
HANDLERS = (H_POPULATES, H_DROPS_LOCK, H_FAILS)

# Page kinds (§1.3 "Notable kinds").
NORMAL = "normal"
RESERVED = "reserved"        # struct page with PG_reserved, not refcounted
REFCOUNT0 = "refcount0"      # struct page whose refcount is 0 (non-compound tail page, TTM)
ZERO = "zero"                # the shared zero page: PG_reserved, but refcounted (§2.4)
ZONE_DEVICE = "zone_device"  # ZONE_DEVICE page (refcounted in G1's helper)
NO_STRUCT_PAGE = "none"      # no struct page: device BAR, RAM outside the kernel's map
PAGE_KINDS = (NORMAL, RESERVED, REFCOUNT0, ZERO, ZONE_DEVICE, NO_STRUCT_PAGE)
DECLARABLE_KINDS = tuple(k for k in PAGE_KINDS if k != ZERO)   # the zero page exists; a world cannot add one
