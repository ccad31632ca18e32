"""The lab: real Debian kernels booted in QEMU, frozen, dumped, with /proc ground truth."""

from .kernels import DEFAULT_KERNEL, KERNELS, Kernel, cached, ensure, fetch
from .runner import RunOptions, run, stop

__all__ = ["DEFAULT_KERNEL", "KERNELS", "Kernel", "RunOptions", "cached", "ensure", "fetch",
           "run", "stop"]
