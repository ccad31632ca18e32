"""/proc/pagetypeinfo (mm/vmstat.c pagetypeinfo_show()): the free blocks on every
``free_area[order].free_list[migratetype]``, counted as the kernel counts them, and the
pageblocks of each migratetype; the records, their computation and the kernel's text.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.nodemask import for_each_node_state
from ..target.base import TargetError
from . import freelists as _fl
from . import pageblock as _pb
from .context import KernelContext
from .zone import Zone


@dataclasses.dataclass(frozen=True)
class ZonePageTypes:
    """
    One zone of /proc/pagetypeinfo (mm/vmstat.c pagetypeinfo_showfree_print() and
    pagetypeinfo_showblockcount_print()); keys are migratetype names as the kernel's
    ``migratetype_names[]`` spells them ("Unmovable", "Movable", ...).

    - ``node``, ``zone``: node id and zone name.
    - ``free``: migratetype -> entries (blocks of 2^order pages) on
      ``free_area[order].free_list[migratetype]``, indexed by order; a count stops at
      100000 as the kernel's does.
    - ``overflow``: migratetype -> per order, True where the count stopped at 100000
      (printed ``>100000``).
    - ``blocks``: migratetype -> pageblocks of that type in the zone.
    """

    node: int
    zone: str
    free: dict[str, list[int]]  # migratetype -> free blocks per order (list entries)
    overflow: dict[str, list[bool]]  # migratetype -> per order: count stopped at the cap
    blocks: dict[str, int]  # migratetype -> pageblocks of that type


@dataclasses.dataclass(frozen=True)
class PageTypeInfo:
    """
    /proc/pagetypeinfo's numbers (mm/vmstat.c pagetypeinfo_show()).

    - ``pageblock_order``: ``pageblock_order`` (9 on the lab kernels: 2 MiB blocks of
      4 KiB pages).
    - ``pages_per_block``: ``pageblock_nr_pages``, 2^pageblock_order pages.
    - ``migratetypes``: ``migratetype_names[]``, in ``enum migratetype`` order (which
      entries exist depends on CONFIG_CMA and CONFIG_MEMORY_ISOLATION).
    - ``zones``: one :class:`ZonePageTypes` per populated zone of the listed nodes.
    - ``nodes``: the online nodes with memory (``N_MEMORY``), each printed with its own
      header.
    """

    pageblock_order: int
    pages_per_block: int
    migratetypes: list[str]  # migratetype_names[], in enum order
    zones: list[ZonePageTypes]
    nodes: list[int]  # nodes with memory (N_MEMORY), each printed with its own header


def memory_nodes(ctx: KernelContext) -> list[int]:
    """
    Get the online nodes with memory: for_each_online_node() filtered by
    ``node_state(nid, N_MEMORY)`` (the ``node_states[N_MEMORY]`` nodemask), as
    mm/vmstat.c pagetypeinfo_show() skips memoryless nodes.

    :param ctx: the context of the target
    :return: node ids in increasing order; every online node when the kernel has no
        N_MEMORY mask or it cannot be read
    """
    nodes = ctx.node_ids()
    try:
        with_memory = set(for_each_node_state(ctx.t, "N_MEMORY"))
    except TargetError:
        return nodes
    return [n for n in nodes if n in with_memory]


def pagetypeinfo(ctx: KernelContext) -> PageTypeInfo:
    """
    Get /proc/pagetypeinfo's numbers: the length of every free list per migratetype and
    order, counted as mm/vmstat.c pagetypeinfo_showfree_print() counts (``list_for_each``
    stopping at 100000 entries), and the pageblocks per migratetype as
    pagetypeinfo_showblockcount_print() counts them (every ``zone_start_pfn + k *
    pageblock_nr_pages`` below the zone's end with an online struct page whose zone is
    this one, by ``get_pageblock_migratetype()``).

    :param ctx: the context of the target
    :return: a :class:`PageTypeInfo` over the nodes of :func:`memory_nodes`
    :raises TargetError: a type, member or enumerator is missing, or the memmap cannot be
        located (``mem_section``, vmemmap)
    :raises FaultError: a zone's ``free_area[]`` or a ``mem_section[]`` root cannot be read
    """
    w = _fl.walker(ctx)
    order = _pb.pageblock_order(ctx)
    names = w.migratetype_names
    nodes = memory_nodes(ctx)
    zones = []
    for z in ctx.all_zones():
        if z.node not in nodes:
            continue
        counts, flags = w.free_list_counts(z)
        free = {name: [counts[o][mt] for o in range(ctx.nr_orders)]
                for mt, name in enumerate(names)}
        over = {name: [flags[o][mt] for o in range(ctx.nr_orders)]
                for mt, name in enumerate(names)}
        mts = _pb.pageblock_migratetypes(ctx, z).astype(np.int64)
        # page_zone(page) != zone: a pageblock start that belongs to another zone (zones
        # that interleave, e.g. ZONE_MOVABLE or NUMA nodes sharing a span) is skipped.
        mts = _own_zone_only(ctx, z, mts, order)
        hist = np.bincount(mts[(mts >= 0) & (mts < len(names))], minlength=len(names))
        zones.append(ZonePageTypes(z.node, z.name, free, over,
                                   {name: int(hist[i]) for i, name in enumerate(names)}))
    return PageTypeInfo(order, 1 << order, names, zones, nodes)


def _own_zone_only(ctx: KernelContext, z: Zone, mts: np.ndarray, order: int) -> np.ndarray:
    """Drop block starts that another zone's span also covers unless their page's zone
    (page->flags) says it is Z.  Spans that overlap nothing need no page reads."""
    others = [o for o in ctx.all_zones(populated_only=False)
              if o.address != z.address and o.spanned_pages
              and o.zone_start_pfn < z.end_pfn and z.zone_start_pfn < o.end_pfn]
    if not others:
        return mts
    pfns = np.arange(z.zone_start_pfn, z.end_pfn, 1 << order, dtype=np.int64)
    out = mts.copy()
    for i, pfn in enumerate(pfns):
        if out[i] < 0 or not any(o.zone_start_pfn <= pfn < o.end_pfn for o in others):
            continue
        nz = _page_zone(ctx, int(pfn))
        if nz is not None and nz != (z.node, z.index):
            out[i] = -1
    return out


def _page_zone(ctx: KernelContext, pfn: int) -> tuple[int, int] | None:
    """(node, zone index) from page->flags: with SPARSEMEM_VMEMMAP the top bits are
    NODES_WIDTH (= NODES_SHIFT, log2 of node_data[]'s length) then ZONES_WIDTH (from
    MAX_NR_ZONES) (include/linux/page-flags-layout.h)."""
    t = ctx.t
    w = _fl.walker(ctx)
    try:
        flags = t.read_u64(w.vmemmap + pfn * w.page_size)
        nodes = ctx.pgdat_layout  # noqa: F841 (layout probe keeps node_data cached)
        max_numnodes = t.vmcoreinfo_length("node_data") if t.has_symbol("node_data") else 1
        nzones = t.enum_value("enum zone_type", "__MAX_NR_ZONES")
    except TargetError:
        return None
    nodes_shift = (max_numnodes - 1).bit_length()
    zones_shift = 0 if nzones < 2 else (nzones - 1).bit_length()
    zone = (flags >> (64 - nodes_shift - zones_shift)) & ((1 << zones_shift) - 1)
    node = (flags >> (64 - nodes_shift)) & ((1 << nodes_shift) - 1) if nodes_shift else 0
    return node, zone


def format_pagetypeinfo(info: PageTypeInfo) -> str:
    """
    Print INFO as /proc/pagetypeinfo, byte for byte (mm/vmstat.c pagetypeinfo_show(),
    identical in 5.10-7.2 but for the number of orders and of migratetypes, both read
    from the kernel).  The "Number of mixed blocks" section needs CONFIG_PAGE_OWNER with
    page_owner=on, which no lab kernel boots with: not printed.

    :param info: :func:`pagetypeinfo`'s result
    :return: the text, one header and two sections per node of ``info.nodes``
    """
    out = []
    names = info.migratetypes
    for nid in info.nodes:
        zones = [z for z in info.zones if z.node == nid]
        norders = len(next(iter(zones[0].free.values()))) if zones else 0
        out.append(f"Page block order: {info.pageblock_order}\n")
        out.append(f"Pages per block:  {info.pages_per_block}\n\n")
        out.append(f"{'Free pages count per migrate type at order':<43} "
                   + "".join(f"{o:6d} " for o in range(norders)) + "\n")
        for z in zones:
            for name in names:
                out.append(f"Node {nid:4d}, zone {z.zone:>8}, type {name:>12} " + "".join(
                    (">" if ov else "") + f"{n:6d} "
                    for n, ov in zip(z.free[name], z.overflow[name])) + "\n")
        out.append(_pb.format_blockcount_rows(names, [(nid, z.zone, z.blocks)
                                                      for z in zones]))
    return "".join(out)


__all__ = ["ZonePageTypes", "PageTypeInfo", "pagetypeinfo", "format_pagetypeinfo",
           "memory_nodes"]
