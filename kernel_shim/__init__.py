"""The real-host backend: pfndiff scenarios on this kernel through /dev/kvm (see docs/host.md).

kvm_ioctl (the ABI via ctypes) · vm (one VM + vCPU) · guest_code (the CPL3 access loop and its
page tables) · layout (where the shim region and host mappings go) · backings (host mappings for
scenario VMAs) · uffd (needs-I/O pages) · host_exec/ (one execution, inside the worker) · worker /
runner (the child process and its hard timeout) · host_backend (the Backend) · probe · quirks ·
conformance / sweep (model vs host) · gmem (guest_memfd check) · cli (``pfndiff host``).
"""
