"""The guest side: a tiny 64-bit access loop, its control block, and identity-mapped page tables.

Only guest code in long mode at CPL3 takes KVM's real fault path (``kvm_faultin_pfn`` →
``hva_to_pfn``) on a shadow-paging host; CPL0 code is run by the instruction emulator, which
reaches memory through ``gfn_to_hva`` + ``copy_{from,to}_user``.  So the vCPU starts directly in
64-bit user mode (segments loaded through ``KVM_SET_SREGS``; no guest kernel, GDT or IDT) and runs
a loop that performs a batch of accesses described in guest memory, storing read results next to
each descriptor, and rings a doorbell (a write to a GPA without memslot → ``KVM_EXIT_MMIO``) when
the batch is done.  The VMM reads progress and results straight from its own mapping, so a batch
of N accesses costs one exit, not N.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .kvm_ioctl import PAGE, Regs, Sregs

# Assembled from (GNU as, intel syntax); rbx = control block VA, r12 = doorbell VA:
#   loop:  mov rcx,[rbx+8]; cmp rcx,[rbx]; jae done
#          mov rsi,rcx; shl rsi,5; lea rsi,[rbx+rsi+64]      ; descriptor i (32 bytes)
#          mov rdi,[rsi]; mov rax,[rsi+8]; cmp qword [rsi+16],0; jne do_write
#          mov rax,[rdi]; mov [rsi+24],rax; jmp next          ; the read access, result stored
#   do_write: mov [rdi],rax                                    ; the write access
#   next:  inc qword [rbx+8]; jmp loop
#   done:  mov [r12],rax; jmp loop                             ; doorbell: KVM_EXIT_MMIO
CODE = bytes.fromhex(
    "488b4b08483b0b732c4889ce48c1e605488d743340488b3e488b460848837e10007509488b0748894618eb03"
    "48890748ff4308ebcb49890424ebc5")
LOOP_OFFSET = 0

# Shim region, in pages from its base GPA.  The region sits in its own memslot, never dirty-logged.
CODE_PAGE = 0
CTRL_PAGE = 1
CTRL_PAGES = 8
STACK_PAGE = CTRL_PAGE + CTRL_PAGES
PT_FIRST = 64
SHIM_PAGES = 1024                       # slot size: code, control, stack and the page-table pool
DOORBELL_PAGE = SHIM_PAGES              # first page after the slot: no memslot → MMIO
SHIM_SPAN = 8 << 20                     # GPA space reserved for the region (slot + doorbell frame)
HEADER = 64
DESC = 32
MAX_BATCH = (CTRL_PAGES * PAGE - HEADER) // DESC

PTE_P, PTE_W, PTE_U = 1, 2, 4
USER_VA_LIMIT = 1 << 47
GUEST_MAXPHYADDR = 48


UPPER_HALF = 0xFFFF_8000_0000_0000


def va_of(gpa: int) -> int | None:
    """The guest virtual address of gpa (identity below 2^47; the upper canonical half, still
    user pages, for [2^47, 2^48)); None beyond the 48-bit physical space."""
    if gpa >> GUEST_MAXPHYADDR:
        return None
    return gpa if gpa < USER_VA_LIMIT else UPPER_HALF + (gpa - USER_VA_LIMIT)


@dataclass
class IdentityMap:
    """Guest page tables (4 levels, 4 KiB user pages) mapping VA → GPA, grown on demand.

    4 KiB leaves give every gfn its own guest PTE, so the accessed/dirty bits that a
    shadow-paging host keeps in them (and that decide whether a read fault gets a writable
    SPTE) belong to that gfn alone.

    Entries are only ever added, never changed: KVM's shadow MMU re-walks the guest tables on
    every fault through a not-present entry, so an added entry needs no invalidation, and an
    existing one never goes stale.  When the pool is full the caller starts a fresh map (and
    recreates the shim memslot, which zaps all shadow pages).
    """
    base_gpa: int
    mem: memoryview
    next_pt: int = PT_FIRST
    tables: dict[tuple[int, int], int] = field(default_factory=dict)
    mapped: dict[int, int] = field(default_factory=dict)   # 4 KiB frame -> offset of its leaf PTE

    def __post_init__(self) -> None:
        self.root = self._alloc()

    @property
    def cr3(self) -> int:
        return self.base_gpa + self.root * PAGE

    def _alloc(self) -> int:
        if self.next_pt >= SHIM_PAGES:
            raise OverflowError("guest page-table pool exhausted")
        p = self.next_pt
        self.next_pt += 1
        self.mem[p * PAGE:(p + 1) * PAGE] = bytes(PAGE)
        return p

    def ensure(self, gpa: int) -> None:
        """Map the page holding gpa (raises OverflowError when the pool is full)."""
        frame = gpa >> 12
        if frame in self.mapped:
            return
        va = va_of(frame << 12)
        assert va is not None
        table = self.root
        for level in (3, 2, 1):
            shift = 12 + 9 * level
            key = (level, va >> shift)
            nxt = self.tables.get(key)
            if nxt is None:
                nxt = self._alloc()
                struct.pack_into("<Q", self.mem, table * PAGE + ((va >> shift) & 511) * 8,
                                 (self.base_gpa + nxt * PAGE) | PTE_P | PTE_W | PTE_U)
                self.tables[key] = nxt
            table = nxt
        off = table * PAGE + ((va >> 12) & 511) * 8
        struct.pack_into("<Q", self.mem, off, (frame << 12) | PTE_P | PTE_W | PTE_U)
        self.mapped[frame] = off

    def clear_ad(self, gpa: int) -> None:
        """Forget the accessed/dirty bits the guest left in gpa's PTE in an earlier execution.
        Safe because no SPTE of the page survives between executions (its backing was unmapped,
        which zapped them); the next fault re-walks the guest tables."""
        off = self.mapped.get(gpa >> 12)
        if off is not None:
            struct.pack_into("<Q", self.mem, off, (gpa & ~0xFFF) | PTE_P | PTE_W | PTE_U)


def write_code(mem: memoryview) -> None:
    mem[CODE_PAGE * PAGE:CODE_PAGE * PAGE + len(CODE)] = CODE


def set_batch(mem: memoryview, accesses: list[tuple[int, bool, int]]) -> None:
    """Write descriptors (va, write, value) and reset the header: n, idx = 0."""
    off = CTRL_PAGE * PAGE
    flat = [x for va, write, value in accesses for x in (va, value & (2**64 - 1), int(write), 0)]
    struct.pack_into(f"<{len(flat)}Q", mem, off + HEADER, *flat)
    struct.pack_into("<QQ", mem, off, len(accesses), 0)


def progress(mem: memoryview) -> int:
    return struct.unpack_from("<Q", mem, CTRL_PAGE * PAGE + 8)[0]


def skip_current(mem: memoryview) -> None:
    off = CTRL_PAGE * PAGE + 8
    struct.pack_into("<Q", mem, off, struct.unpack_from("<Q", mem, off)[0] + 1)


def results(mem: memoryview, n: int) -> tuple[int, ...]:
    """The result word of descriptors 0..n-1."""
    return struct.unpack_from(f"<{4 * n}Q", mem, CTRL_PAGE * PAGE + HEADER)[3::4]


def result(mem: memoryview, i: int) -> int:
    return struct.unpack_from("<Q", mem, CTRL_PAGE * PAGE + HEADER + i * DESC + 24)[0]


def initial_regs(base_gpa: int) -> Regs:
    r = Regs()
    r.rbx = base_gpa + CTRL_PAGE * PAGE
    r.r12 = base_gpa + DOORBELL_PAGE * PAGE
    r.rsp = base_gpa + (STACK_PAGE + 1) * PAGE
    r.rip = base_gpa + CODE_PAGE * PAGE + LOOP_OFFSET
    r.rflags = 0x2
    return r


def long_mode_sregs(sregs: Sregs, cr3: int, cpl: int) -> None:
    """64-bit mode at the given CPL, paging on; hidden segment state set directly."""
    def seg(s, sel: int, typ: int, code: bool) -> None:
        s.base, s.limit, s.selector, s.type = 0, 0xFFFFFFFF, sel, typ
        s.present, s.dpl, s.s, s.g, s.avl, s.unusable = 1, cpl, 1, 1, 0, 0
        s.l, s.db = (1, 0) if code else (0, 1)
    seg(sregs.cs, (0x33 if cpl else 0x08), 0xB, True)
    for s in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        seg(s, (0x2B if cpl else 0x10), 0x3, False)
    sregs.tr.base, sregs.tr.limit, sregs.tr.selector, sregs.tr.type = 0, 0x67, 0x40, 0xB
    sregs.tr.present, sregs.tr.s, sregs.tr.dpl, sregs.tr.unusable = 1, 0, 0, 0
    sregs.ldt.unusable = 1
    sregs.cr0 = 0x80050033                    # PG WP NE ET MP PE
    sregs.cr4 = 0x20                          # PAE
    sregs.efer = 0x500                        # LMA LME
    sregs.cr3 = cr3
