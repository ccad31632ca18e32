"""The kernel's vm_stat counters (include/linux/vmstat.h, mm/vmstat.c): the one place
memscope reads them.

The kernel keeps each counter three ways:

- globally: ``atomic_long_t vm_zone_stat[NR_VM_ZONE_STAT_ITEMS]`` (indexed by ``enum
  zone_stat_item``), ``vm_node_stat[NR_VM_NODE_STAT_ITEMS]`` (``enum node_stat_item``);
  what ``global_zone_page_state()`` / ``global_node_page_state()`` read, and with them
  /proc/meminfo;
- per zone and per node: ``zone->vm_stat[]``, ``pgdat->vm_stat[]`` (what
  ``zone_page_state()`` reads, e.g. for the watermark checks);
- per CPU: not yet folded differences, ``vm_stat_diff[]`` (``s8``), added to the above by
  ``zone_page_state_snapshot()`` only.

The global and per-zone reads clamp a negative value at 0 on SMP kernels, as the kernel's
inline readers do (a counter may dip below zero while the per-CPU differences are not
folded).  Enumerator values come from the debug info (they move with the configuration:
NR_ZSPAGES, NR_UNACCEPTED, NR_KERNEL_SCS_KB, NR_SWAPCACHE... exist only when configured),
never from a table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernel.percpu import per_cpu_offsets
from ..kernel.cpumask import for_each_possible_cpu
from ..target.base import TargetError

if TYPE_CHECKING:
    from .context import KernelContext
    from .zone import Zone

__all__ = ("global_node_page_state", "global_zone_page_state", "has_node_stat",
           "has_zone_stat", "node_stat_items", "zone_page_state", "zone_page_state_snapshot",
           "zone_stat_items")

_MASK64 = (1 << 64) - 1

#: (enum, its NR_VM_*_ITEMS enumerator, the global array) of the two global arrays.
_GLOBAL = {"zone": ("enum zone_stat_item", "NR_VM_ZONE_STAT_ITEMS", "vm_zone_stat"),
           "node": ("enum node_stat_item", "NR_VM_NODE_STAT_ITEMS", "vm_node_stat")}


def zone_stat_items(ctx: KernelContext) -> dict[str, int]:
    """``enum zone_stat_item``: enumerator name -> index in ``vm_zone_stat[]`` and
    ``zone->vm_stat[]``."""
    return ctx.probe("vmstat.zone_items", lambda: ctx.t.enum("enum zone_stat_item"))


def node_stat_items(ctx: KernelContext) -> dict[str, int]:
    """``enum node_stat_item``: enumerator name -> index in ``vm_node_stat[]`` and
    ``pgdat->vm_stat[]``."""
    return ctx.probe("vmstat.node_items", lambda: ctx.t.enum("enum node_stat_item"))


def has_zone_stat(ctx: KernelContext, item: str) -> bool:
    """Whether this kernel has the zone counter ITEM (e.g. ``"NR_UNACCEPTED"``)."""
    return item in zone_stat_items(ctx)


def has_node_stat(ctx: KernelContext, item: str) -> bool:
    """Whether this kernel has the node counter ITEM (e.g. ``"NR_VMALLOC"``)."""
    return item in node_stat_items(ctx)


def _items(ctx: KernelContext, kind: str) -> dict[str, int]:
    return zone_stat_items(ctx) if kind == "zone" else node_stat_items(ctx)


def _global_array(ctx: KernelContext, kind: str) -> np.ndarray:
    """The whole global array of KIND ("zone" or "node"), signed, read in one piece once
    per snapshot."""
    enum, count, symbol = _GLOBAL[kind]

    def read() -> np.ndarray:
        items = _items(ctx, kind)
        if count not in items:
            raise TargetError(f"{enum} has no enumerator {count}")
        n = items[count]
        return np.frombuffer(ctx.t.read(ctx.t.symbol(symbol), 8 * n), dtype="<i8")

    return ctx.snapshot(f"vmstat.{symbol}", read)


def _index(ctx: KernelContext, kind: str, item: str) -> int:
    try:
        return _items(ctx, kind)[item]
    except KeyError:
        raise TargetError(f"{_GLOBAL[kind][0]} has no enumerator {item}") from None


def global_zone_page_state(ctx: KernelContext, item: str) -> int:
    """
    ``global_zone_page_state(item)`` (include/linux/vmstat.h): ``vm_zone_stat[item]``,
    clamped at 0 (CONFIG_SMP), per-CPU differences not folded in.

    :param item: an ``enum zone_stat_item`` enumerator, e.g. ``"NR_FREE_PAGES"``
    :return: pages
    :raises TargetError: the kernel has no such item or no ``vm_zone_stat``
    """
    return max(int(_global_array(ctx, "zone")[_index(ctx, "zone", item)]), 0)


def global_node_page_state(ctx: KernelContext, item: str) -> int:
    """
    ``global_node_page_state(item)`` and ``global_node_page_state_pages(item)``
    (include/linux/vmstat.h): ``vm_node_stat[item]``, clamped at 0 (CONFIG_SMP), per-CPU
    differences not folded in.  The ``*_B`` items (slab) are kept in pages in this array;
    ``NR_KERNEL_STACK_KB`` and ``NR_KERNEL_SCS_KB`` in KiB.

    :param item: an ``enum node_stat_item`` enumerator, e.g. ``"NR_SHMEM"``
    :return: pages (KiB for the ``*_KB`` items)
    :raises TargetError: the kernel has no such item or no ``vm_node_stat``
    """
    return max(int(_global_array(ctx, "node")[_index(ctx, "node", item)]), 0)


def zone_page_state(ctx: KernelContext, zone_bytes: bytes, item: str) -> int:
    """
    ``zone_page_state(zone, item)``: ``zone->vm_stat[item]`` out of the bytes of a
    ``struct zone`` already read, signed and not clamped (the caller clamps as the kernel
    function it reproduces does).

    :param zone_bytes: the ``struct zone`` (at least up to its ``vm_stat[]``)
    :param item: an ``enum zone_stat_item`` enumerator
    :return: pages
    :raises TargetError: no such item
    """
    off = ctx.zone_layout.offset("vm_stat") + 8 * _index(ctx, "zone", item)
    return int.from_bytes(zone_bytes[off:off + 8], "little", signed=True)


def _stat_diff(ctx: KernelContext) -> tuple[int, int] | None:
    """(zone member holding the ``__percpu`` pointer, offset of ``vm_stat_diff`` in what
    it points to), or None when the kernel has neither layout."""

    def probe():
        zl, t = ctx.zone_layout, ctx.t
        try:
            # 5.14+ (commit 28f836b6777b "mm/page_alloc: split per cpu page lists and zone
            # stats"): zone->per_cpu_zonestats (struct per_cpu_zonestat); before it,
            # zone->pageset (struct per_cpu_pageset).
            if zl.has("per_cpu_zonestats"):
                return (zl.offset("per_cpu_zonestats"),
                        t.layout("struct per_cpu_zonestat").offset("vm_stat_diff"))
            return zl.offset("pageset"), t.layout("struct per_cpu_pageset").offset("vm_stat_diff")
        except TargetError:
            return None

    return ctx.probe("vmstat.stat_diff", probe)


def zone_page_state_snapshot(ctx: KernelContext, z: Zone, item: str) -> int:
    """
    ``zone_page_state_snapshot(zone, item)`` (include/linux/vmstat.h): ``zone->vm_stat[item]``
    plus every possible CPU's not yet folded ``vm_stat_diff[item]``, not clamped.  Exact
    on a frozen dump (each update lands in one of the two); approximate on a live target.

    :param z: the zone
    :param item: an ``enum zone_stat_item`` enumerator
    :return: pages (may be negative)
    :raises TargetError: no such item; FaultError: the zone or a per-CPU area cannot be
        read
    """
    t = ctx.t
    idx = _index(ctx, "zone", item)
    v = t.read_int(z.address + ctx.zone_layout.offset("vm_stat") + 8 * idx, 8, signed=True)
    diff = _stat_diff(ctx)
    if diff is not None:
        member, diff_off = diff
        ptr = t.read_u64(z.address + member)
        offsets = per_cpu_offsets(t)
        for cpu in for_each_possible_cpu(t):
            off = offsets[cpu if len(offsets) > 1 else 0]
            v += t.read_int((ptr + off + diff_off + idx) & _MASK64, 1, signed=True)
    return v
