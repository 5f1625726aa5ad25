"""Real Linux kernels booted in QEMU (TCG, AMD SVM): fetch them from Debian, build an initramfs,
and run scenarios on their KVM through the host backend's execution code (``qemu:<kernel>``)."""
