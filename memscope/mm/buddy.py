"""The buddy allocator's counters: ``zone->free_area[order].nr_free`` (mm/page_alloc.c)."""

from __future__ import annotations

import dataclasses

from .context import KernelContext
from .zone import Zone


@dataclasses.dataclass(frozen=True)
class ZoneBuddyInfo:
    """
    One line of /proc/buddyinfo (mm/vmstat.c frag_show_print()): the free blocks of each
    order in one zone.

    - ``node``: the node id (``pgdat->node_id``).
    - ``zone``: the zone's name (``zone->name``: "DMA", "DMA32", "Normal", "Movable").
    - ``nr_free``: ``zone->free_area[order].nr_free`` indexed by order, one entry per
      element of ``free_area[]`` (NR_PAGE_ORDERS); each counts free blocks of 2^order
      pages, on every migratetype's list.
    """

    node: int
    zone: str
    nr_free: list[int]  # index = order


def buddyinfo(ctx: KernelContext) -> list[ZoneBuddyInfo]:
    """
    Get ``free_area[order].nr_free`` of every populated zone, as /proc/buddyinfo walks
    them (mm/vmstat.c frag_show() and walk_zones_in_node(): online nodes, then populated
    zones in ``node_zones[]`` order), from one read of each zone's ``free_area[]``.

    :param ctx: the context of the target
    :return: one :class:`ZoneBuddyInfo` per populated zone
    :raises TargetError: ``struct zone`` or ``struct free_area`` lacks a member
    :raises FaultError: a zone's ``free_area[]`` cannot be read
    """
    t = ctx.t
    fa_off = ctx.zone_layout.offset("free_area")
    nr_off = t.layout("struct free_area").offset("nr_free")
    out = []
    for z in ctx.all_zones():
        raw = t.read(z.address + fa_off, ctx.nr_orders * ctx.free_area_size)
        counts = [int.from_bytes(raw[o * ctx.free_area_size + nr_off:][:8], "little")
                  for o in range(ctx.nr_orders)]
        out.append(ZoneBuddyInfo(z.node, z.name, counts))
    return out


def format_buddyinfo(rows: list[ZoneBuddyInfo]) -> str:
    """
    Print ROWS as /proc/buddyinfo, byte for byte (mm/vmstat.c frag_show_print():
    ``"Node %d, zone %8s "`` then ``"%6lu "`` per order, then a newline).

    :param rows: :func:`buddyinfo`'s records
    :return: the text, one line per zone
    """
    return "".join(f"Node {r.node}, zone {r.zone:>8} " + "".join(f"{n:6d} " for n in r.nr_free)
                   + "\n" for r in rows)


# /proc/pagetypeinfo has its own module; its names stay importable from here.
from .pagetypeinfo import (PageTypeInfo, ZonePageTypes, format_pagetypeinfo,  # noqa: E402
                           memory_nodes, pagetypeinfo)

__all__ = ["ZoneBuddyInfo", "Zone", "buddyinfo", "format_buddyinfo", "ZonePageTypes",
           "PageTypeInfo", "pagetypeinfo", "format_pagetypeinfo", "memory_nodes"]
