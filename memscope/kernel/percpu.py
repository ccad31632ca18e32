"""Per-CPU data (include/linux/percpu-defs.h): ``per_cpu_ptr(ptr, cpu)`` is
``ptr + __per_cpu_offset[cpu]`` on SMP kernels (x86_64 and arm64 alike; ``ptr`` is a
``__percpu`` pointer or the address of a per-CPU variable such as ``&runqueues``)."""

from __future__ import annotations

import struct
from typing import Iterator

from ..target.base import Target
from .cpumask import for_each_possible_cpu, nr_cpu_ids

__all__ = ("per_cpu", "per_cpu_offsets", "per_cpu_ptr", "per_cpu_ptrs")

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
