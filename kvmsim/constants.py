"""Kernel constants the model shares across generations (spec §1.1, §1.3, §1.4, §2.7).

Values are the kernel's (include/linux/kvm_host.h, include/linux/mm.h, arch/x86/kvm/mmu);
names are kept so the generation modules read like the code they model.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# --- kvm_pfn_t error encodings (§1.1) -------------------------------------------------------
KVM_PFN_ERR_MASK = 0x7FF << 52
KVM_PFN_ERR_NOSLOT_MASK = 0xFFF << 52
KVM_PFN_NOSLOT = 1 << 63
KVM_PFN_ERR_FAULT = KVM_PFN_ERR_MASK + 0
KVM_PFN_ERR_HWPOISON = KVM_PFN_ERR_MASK + 1
KVM_PFN_ERR_RO_FAULT = KVM_PFN_ERR_MASK + 2
KVM_PFN_ERR_SIGPENDING = KVM_PFN_ERR_MASK + 3
KVM_PFN_ERR_NEEDS_IO = KVM_PFN_ERR_MASK + 4  # G2f v7+, merged v6.13

# x86-64 PAGE_OFFSET (direct map base, no KASLR); KVM's generic hva error values (§1.1).
PAGE_OFFSET = 0xFFFF_8880_0000_0000
KVM_HVA_ERR_BAD = PAGE_OFFSET
KVM_HVA_ERR_RO_BAD = PAGE_OFFSET + PAGE_SIZE


def is_error_pfn(pfn: int) -> bool:
    return bool(pfn & KVM_PFN_ERR_MASK)


def is_error_noslot_pfn(pfn: int) -> bool:
    return bool(pfn & KVM_PFN_ERR_NOSLOT_MASK)


def is_noslot_pfn(pfn: int) -> bool:
    return pfn == KVM_PFN_NOSLOT


def is_sigpending_pfn(pfn: int) -> bool:
    return pfn == KVM_PFN_ERR_SIGPENDING


def kvm_is_error_hva(hva: int) -> bool:
    return hva >= PAGE_OFFSET


_PFN_NAMES = {
    KVM_PFN_NOSLOT: "NOSLOT",
    KVM_PFN_ERR_FAULT: "ERR_FAULT",
    KVM_PFN_ERR_HWPOISON: "ERR_HWPOISON",
    KVM_PFN_ERR_RO_FAULT: "ERR_RO_FAULT",
    KVM_PFN_ERR_SIGPENDING: "ERR_SIGPENDING",
    KVM_PFN_ERR_NEEDS_IO: "ERR_NEEDS_IO",
    KVM_HVA_ERR_BAD: "HVA_ERR_BAD_AS_PFN",  # G2s literal, S5
    KVM_HVA_ERR_RO_BAD: "HVA_ERR_RO_BAD_AS_PFN",  # G2s literal, S5
}


def pfn_class(pfn: int) -> str:
    """The result class of a kvm_pfn_t: 'pfn' for a real frame, else the error's name."""
    if not is_error_noslot_pfn(pfn):
        return "pfn"
    return _PFN_NAMES.get(pfn, f"ERR_UNKNOWN_{pfn:#x}")


# --- FOLL_* (include/linux/mm_types.h); values as in v6.x --------------------------------------
FOLL_WRITE = 0x01
FOLL_GET = 0x04
FOLL_NOWAIT = 0x20
FOLL_HWPOISON = 0x100
FOLL_PIN = 0x40000
FOLL_INTERRUPTIBLE = 0x200000
FOLL_HONOR_NUMA_FAULT = 0x400000

# --- VMA flags -----------------------------------------------------------------------------
VM_READ = 0x1
VM_WRITE = 0x2
VM_SHARED = 0x8
VM_IO = 0x4000
VM_PFNMAP = 0x400
VM_MIXEDMAP = 0x10000000
VM_REMAPPED = VM_IO | VM_PFNMAP

# --- errno ---------------------------------------------------------------------------------
ENOENT = 2
EINTR = 4
EAGAIN = 11
EFAULT = 14
EINVAL = 22
EHWPOISON = 133
ERRNO_NAMES = {ENOENT: "ENOENT", EINTR: "EINTR", EAGAIN: "EAGAIN", EFAULT: "EFAULT",
               EINVAL: "EINVAL", EHWPOISON: "EHWPOISON"}

# --- x86 RET_PF_* (arch/x86/kvm/mmu/mmu_internal.h, §2.7) ------------------------------------
RET_PF_CONTINUE = 0
RET_PF_RETRY = 1
RET_PF_EMULATE = 2
RET_PF_INVALID = 3
RET_PF_FIXED = 4
RET_PF_SPURIOUS = 5
RET_PF_NAMES = {0: "CONTINUE", 1: "RETRY", 2: "EMULATE", 3: "INVALID", 4: "FIXED", 5: "SPURIOUS"}


def ret_name(r: int) -> str:
    """RET_PF_* name, or '-ERRNO' for a negative return."""
    if r < 0:
        return "-" + ERRNO_NAMES.get(-r, str(-r))
    return RET_PF_NAMES.get(r, str(r))


# --- memslots (include/uapi/linux/kvm.h, include/linux/kvm_host.h) ---------------------------
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
KVM_MEMSLOT_INVALID = 1 << 16
KVM_USER_MEM_SLOTS = 32764  # x86: KVM_MAX_NR_USER_MEMSLOTS
# x86 internal slots (arch/x86/include/asm/kvm_host.h)
TSS_PRIVATE_MEMSLOT = KVM_USER_MEM_SLOTS + 0
APIC_ACCESS_PAGE_PRIVATE_MEMSLOT = KVM_USER_MEM_SLOTS + 1
IDENTITY_PAGETABLE_PRIVATE_MEMSLOT = KVM_USER_MEM_SLOTS + 2
INTERNAL_SLOT_IDS = {"tss": TSS_PRIVATE_MEMSLOT, "apic_access": APIC_ACCESS_PAGE_PRIVATE_MEMSLOT,
                     "identity_map": IDENTITY_PAGETABLE_PRIVATE_MEMSLOT}

# 2 MiB host/SPTE level
HPAGE_PAGES = 512
