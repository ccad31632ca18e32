"""memscope: read the Linux kernel's memory-management state from a vmcore, a live
kernel or a QEMU guest, and reconstruct what the allocators hold."""

__version__ = "0.1.0"
