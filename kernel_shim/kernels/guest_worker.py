"""The worker child inside a QEMU guest: kernel_shim's worker with BAR-backed VM_PFNMAP VMAs."""

from __future__ import annotations

import sys

from kernel_shim import worker

from . import guest_pfnmap

if __name__ == "__main__":
    guest_pfnmap.install()
    sys.exit(worker.main())
