"""The real-host backends, registered with the model's backend registry through the
``pfndiff.backends`` entry point (pyproject.toml): ``host`` (this kernel, native CPL3 fault path),
``host:emulated`` (the same through KVM's instruction emulator), ``qemu:<kernel>`` for any kernel
release, and one listed ``qemu:<name>`` per cached kernel so that ``pfndiff backends`` shows them."""

from __future__ import annotations

from kvmsim.backend import REGISTRY, register_family

HOST = "kernel_shim.host_backend:HostBackend"
QEMU = "kernel_shim.kernels.qemu_backend:QemuBackend"


def register_backends() -> None:
    REGISTRY.setdefault("host", (HOST, {}))
    REGISTRY.setdefault("host:emulated", (HOST, {"path": "emulated"}))
    register_family("qemu", QEMU, "kernel")
    from kernel_shim.kernels.cache import cached_kernels
    for e in cached_kernels():
        REGISTRY.setdefault(f"qemu:{e.name}", (QEMU, {"kernel": e.name}))
