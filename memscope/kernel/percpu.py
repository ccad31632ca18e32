"""Per-CPU data (include/linux/percpu-defs.h): ``per_cpu_ptr(ptr, cpu)`` is
``ptr + __per_cpu_offset[cpu]`` on SMP kernels (x86_64 and arm64 alike; ``ptr`` is a
``__percpu`` pointer or the address of a per-CPU variable such as ``&runqueues``)."""

from __future__ import annotations

import struct
from typing import Iterator

from ..target.base import Target, TargetError
from .cpumask import (cpu_dying_mask, cpu_online_mask, cpumask_bits, for_each_possible_cpu,
                      nr_cpu_ids)
from .bitops import for_each_set_bit

__all__ = ("per_cpu", "per_cpu_offsets", "per_cpu_ptr", "per_cpu_ptrs", "percpu_counter_sum")

_MASK64 = (1 << 64) - 1


def per_cpu_offsets(t: Target) -> list[int]:
    """``__per_cpu_offset[0..nr_cpu_ids)`` in one read ([0] without SMP, where the array
    does not exist and per-CPU variables are plain ones)."""
    if not t.has_symbol("__per_cpu_offset"):
        return [0]
    n = nr_cpu_ids(t)
    return list(struct.unpack(f"<{n}Q", t.read(t.symbol("__per_cpu_offset"), 8 * n)))


def per_cpu_ptr(t: Target, ptr: int, cpu: int) -> int:
    """``per_cpu_ptr(ptr, cpu)``: the address of CPU's copy of the per-CPU object PTR."""
    if not t.has_symbol("__per_cpu_offset"):
        return ptr
    return (ptr + t.read_u64(t.symbol("__per_cpu_offset") + 8 * cpu)) & _MASK64


def per_cpu(t: Target, name: str, cpu: int) -> int:
    """``&per_cpu(name, cpu)``: the address of CPU's copy of the per-CPU variable NAME."""
    return per_cpu_ptr(t, t.symbol(name), cpu)


def per_cpu_ptrs(t: Target, ptr: int) -> Iterator[tuple[int, int]]:
    """(cpu, ``per_cpu_ptr(ptr, cpu)``) for each possible CPU
    (``for_each_possible_cpu``), with ``__per_cpu_offset`` read once."""
    offsets = per_cpu_offsets(t)
    for cpu in for_each_possible_cpu(t):
        yield cpu, (ptr + offsets[cpu if len(offsets) > 1 else 0]) & _MASK64


def percpu_counter_sum(t: Target, fbc: int) -> int:
    """``__percpu_counter_sum(fbc)`` (lib/percpu_counter.c): the ``struct percpu_counter``
    at FBC, its global ``count`` plus each CPU's ``s32`` in ``counters``, for the CPUs in
    ``cpu_online_mask | cpu_dying_mask`` (the dying mask is in the sum since v6.4,
    commit 8b57b11cca88 "pcpcntrs: fix dying cpu summation race"; a kernel without
    ``__cpu_dying_mask`` sums the online CPUs alone; a frozen kernel has no CPU dying,
    so both rules agree on every dump that is not taken in the middle of a hotplug).

    ``percpu_counter_sum_positive()`` is this clamped at 0; ``percpu_counter_read()`` is
    ``count`` alone (what a kernel reads where it does not need the sum).

    :return: the signed sum
    :raises TargetError: no ``struct percpu_counter`` or CPU masks; FaultError: the counter
        or a CPU's part cannot be read
    """
    lay = t.layout("struct percpu_counter")
    raw = t.read(fbc, lay.size)
    count = int.from_bytes(raw[lay.offset("count"):lay.offset("count") + 8], "little",
                           signed=True)
    counters = int.from_bytes(raw[lay.offset("counters"):lay.offset("counters") + 8],
                              "little")
    cpus = cpumask_bits(t, cpu_online_mask(t))
    try:
        cpus |= cpumask_bits(t, cpu_dying_mask(t))
    except TargetError:
        pass
    offsets = per_cpu_offsets(t)
    for cpu in for_each_set_bit(cpus, nr_cpu_ids(t)):
        off = offsets[cpu if len(offsets) > 1 else 0]
        count += int.from_bytes(t.read((counters + off) & _MASK64, 4), "little", signed=True)
    return count
