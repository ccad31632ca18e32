"""CPU masks (include/linux/cpumask.h): ``struct cpumask { DECLARE_BITMAP(bits, NR_CPUS) }``.

The kernel's global masks are ``__cpu_possible_mask``, ``__cpu_online_mask``,
``__cpu_present_mask`` and ``__cpu_active_mask`` (since v4.5, commit c4c54dd1caf1
"kernel/cpu.c: change type of cpu_possible_bits and friends"); iterations stop at
``nr_cpu_ids`` as ``for_each_cpu()`` does."""

from __future__ import annotations

from typing import Iterator

from ..target.base import Target, TargetError
from .bitops import for_each_set_bit, read_bitmap

__all__ = ("cpu_active_mask", "cpu_dying_mask", "cpu_online_mask", "cpu_possible_mask", "cpu_present_mask",
           "cpumask_bits", "cpumask_weight", "for_each_cpu", "for_each_online_cpu",
           "for_each_possible_cpu", "for_each_present_cpu", "nr_cpu_ids")


def nr_cpu_ids(t: Target) -> int:
    """``nr_cpu_ids``: one more than the highest possible CPU number (1 without SMP, where
    it is a constant)."""
    if not t.has_symbol("nr_cpu_ids"):
        return 1
    return t.read_u32(t.symbol("nr_cpu_ids"))


def _mask(t: Target, name: str) -> int:
    try:
        return t.symbol(f"__cpu_{name}_mask")
    except TargetError:
        raise TargetError(f"this kernel has no __cpu_{name}_mask") from None


def cpu_possible_mask(t: Target) -> int:
    """The address of ``cpu_possible_mask`` (``struct cpumask *``)."""
    return _mask(t, "possible")


def cpu_online_mask(t: Target) -> int:
    """The address of ``cpu_online_mask`` (``struct cpumask *``)."""
    return _mask(t, "online")


def cpu_present_mask(t: Target) -> int:
    """The address of ``cpu_present_mask`` (``struct cpumask *``)."""
    return _mask(t, "present")


def cpu_active_mask(t: Target) -> int:
    """The address of ``cpu_active_mask`` (``struct cpumask *``)."""
    return _mask(t, "active")


def cpu_dying_mask(t: Target) -> int:
    """The address of ``cpu_dying_mask`` (``struct cpumask *``; since v5.14, commit
    e40f74c535b8 "cpumask: Introduce DYING mask"); raises TargetError before it."""
    return _mask(t, "dying")


def cpumask_bits(t: Target, mask: int) -> int:
    """The bits of the ``struct cpumask`` at MASK below ``nr_cpu_ids`` (bit N: CPU N)."""
    return read_bitmap(t, mask, nr_cpu_ids(t))


def for_each_cpu(t: Target, mask: int) -> Iterator[int]:
    """``for_each_cpu(cpu, mask)``: the CPUs of the ``struct cpumask`` at MASK, in order."""
    n = nr_cpu_ids(t)
    return for_each_set_bit(read_bitmap(t, mask, n), n)


def cpumask_weight(t: Target, mask: int) -> int:
    """``cpumask_weight(mask)``: how many CPUs the mask at MASK holds."""
    return cpumask_bits(t, mask).bit_count()


def for_each_possible_cpu(t: Target) -> Iterator[int]:
    """``for_each_possible_cpu(cpu)``."""
    return for_each_cpu(t, cpu_possible_mask(t))


def for_each_online_cpu(t: Target) -> Iterator[int]:
    """``for_each_online_cpu(cpu)``."""
    return for_each_cpu(t, cpu_online_mask(t))


def for_each_present_cpu(t: Target) -> Iterator[int]:
    """``for_each_present_cpu(cpu)``."""
    return for_each_cpu(t, cpu_present_mask(t))
