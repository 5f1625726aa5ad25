"""The literal kvm_follow_pfn sketch's quirks (spec §4.3) as backend names show them: which quirks a
backend enables, the backend with a given set, and what each quirk is.  The quirk names themselves
are the model's (``kvmsim.g2s_sketch.QUIRKS``)."""

from __future__ import annotations

from kvmsim.g2s_sketch import QUIRKS as SKETCH_QUIRKS

LITERAL = "sim:g2s-literal"
QUIRKS = SKETCH_QUIRKS
# spec §4.3: what each literal-sketch bug is, and its §7 divergence row (S6 has none of its own).
QUIRK_TITLES = {
    "S2": "the sketch WARNs and fails a no-reference lookup when mmu_seq == 0 (a new VM's sequence)",
    "S4": "the sketch's kvm_follow_pfn forces FOLL_GET|FOLL_WRITE (read faults become write faults)",
    "S5": "the sketch returns KVM_HVA_ERR_BAD/KVM_HVA_ERR_RO_BAD as a pfn (-EFAULT instead of MMIO/RO emulation)",
    "S6": "the sketch's x86 fault-in sets no memslot, so its first attempt sees 'no slot'",
    "S8": "the sketch's x86 exit path puts fault->page although the first attempt dropped its reference",
}
QUIRK_ROWS = {"S2": "D10", "S4": "D23", "S5": "D22", "S8": "D24"}


def quirks_of(backend: str) -> list[str]:
    """``sim:g2s-literal`` -> all five quirks; ``sim:g2s-literal:S4,S8`` -> S4, S8; others none."""
    if not backend.startswith(LITERAL):
        return []
    rest = backend[len(LITERAL):].lstrip(":")
    return [q for q in rest.split(",") if q] if rest else list(QUIRKS)


def with_quirks(qs: list[str] | set[str] | frozenset[str]) -> str:
    """The backend name of the sketch with exactly these quirks (none: the intended reading)."""
    qs = sorted(set(qs), key=QUIRKS.index)
    if not qs:
        return "sim:g2s"
    return LITERAL if len(qs) == len(QUIRKS) else f"{LITERAL}:{','.join(qs)}"
