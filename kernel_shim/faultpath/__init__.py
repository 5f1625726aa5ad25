"""A real kernel's x86 fault path, traced: tracepoints (``kvm``, ``kvmmmu``) and, where the kernel
has them, kprobe/kretprobe events on KVM's gfn->pfn entry point, set up once per batch of
scenarios in tracefs, attributed to the scenario's accesses through ``trace_marker`` lines, and
parsed into the fault-path record the model writes (``kvmsim.fault_record``)."""
