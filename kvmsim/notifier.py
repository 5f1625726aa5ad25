"""The mmu_notifier invalidation counters of ``struct kvm`` (spec §1.5).

The sequence starts at 0 (``struct kvm`` is zero-allocated) and only invalidations that overlap
a memslot move it.  The in-progress range is the union of all in-flight ranges, tracked both in
hvas (kernels ≤ 6.7, G1/G2/G2s) and in gfns (≥ 6.8, G3).
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import PAGE_SHIFT
from .memslot import Memslots


@dataclass(slots=True)
class MmuNotifier:
    seq: int = 0
    in_progress: int = 0
    seq_bits: int = 64
    hva_start: int = 0
    hva_end: int = 0
    gfn_start: int = 0
    gfn_end: int = 0

    def begin(self, slots: Memslots, hva_start: int, hva_end: int) -> bool:
        """``kvm_mmu_notifier_invalidate_range_start``; returns whether a memslot overlapped
        (only then do the counters move)."""
        gfns = []
        for s in slots.slots:
            lo, hi = max(hva_start, s.userspace_addr), min(hva_end, s.hva_end)
            if lo < hi:
                gfns.append((s.base_gfn + ((lo - s.userspace_addr) >> PAGE_SHIFT),
                             s.base_gfn + ((hi - 1 - s.userspace_addr) >> PAGE_SHIFT) + 1))
        if not gfns:
            return False
        g_lo, g_hi = min(g for g, _ in gfns), max(g for _, g in gfns)
        if self.in_progress == 0:
            self.hva_start, self.hva_end, self.gfn_start, self.gfn_end = hva_start, hva_end, g_lo, g_hi
        else:
            self.hva_start, self.hva_end = min(self.hva_start, hva_start), max(self.hva_end, hva_end)
            self.gfn_start, self.gfn_end = min(self.gfn_start, g_lo), max(self.gfn_end, g_hi)
        self.in_progress += 1
        return True

    def end(self) -> None:
        """``kvm_mmu_invalidate_end``: bump the sequence (wrapping at seq_bits), then in_progress--."""
        self.seq = (self.seq + 1) & ((1 << self.seq_bits) - 1)
        self.in_progress -= 1

    # --- retry predicates ------------------------------------------------------------
    def retry(self, seq: int) -> bool:
        return self.in_progress != 0 or self.seq != seq

    def retry_hva(self, seq: int, hva: int) -> bool:
        """``mmu_invalidate_retry_hva`` (≤ 6.7)."""
        if self.in_progress and self.hva_start <= hva < self.hva_end:
            return True
        return self.seq != seq

    def retry_gfn(self, seq: int, gfn: int) -> bool:
        """``mmu_invalidate_retry_gfn`` / ``_unsafe`` (≥ 6.8)."""
        if self.in_progress and self.gfn_start <= gfn < self.gfn_end:
            return True
        return self.seq != seq
