"""Nodes and zones (include/linux/mmzone.h): ``pglist_data`` and ``struct zone``.

Debian kernels are built with CONFIG_NUMA, so nodes are found through ``node_data[]`` and
the ``node_states[N_ONLINE]`` mask even on a one-node guest; ``contig_page_data`` is used
when a kernel has it instead (!CONFIG_NUMA).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..kernel.fields import read_member
from ..kernel.nodemask import for_each_online_node
from ..target.base import TargetError

if TYPE_CHECKING:
    from .context import KernelContext


@dataclasses.dataclass(frozen=True)
class Zone:
    """
    One ``struct zone`` (include/linux/mmzone.h): where it is and the counters every
    command shares, read once per context.

    - ``node``: the node id; ``index``: its index in ``pgdat->node_zones[]`` (``enum
      zone_type``: ZONE_DMA, ZONE_DMA32, ZONE_NORMAL, ZONE_MOVABLE, ...).
    - ``name``: ``zone->name``.
    - ``address``: the ``struct zone``'s kernel virtual address.
    - ``zone_start_pfn``; ``spanned_pages``, ``present_pages`` and ``managed_pages``
      (pages: the span, the pages that exist in it, the pages the buddy allocator
      manages).  :attr:`end_pfn` is ``zone_start_pfn + spanned_pages`` (exclusive).
    """

    node: int
    index: int  # index in pgdat->node_zones (enum zone_type)
    name: str
    address: int
    zone_start_pfn: int
    spanned_pages: int
    present_pages: int
    managed_pages: int

    @property
    def populated(self) -> bool:
        # populated_zone(): zone->present_pages != 0
        return self.present_pages != 0

    @property
    def end_pfn(self) -> int:
        return self.zone_start_pfn + self.spanned_pages


def node_ids(ctx: KernelContext) -> list[int]:
    """The online nodes, in order (for_each_online_node); node 0 alone without
    ``node_data[]`` or when ``node_states[N_ONLINE]`` cannot be read."""
    t = ctx.t
    if t.has_symbol("node_data"):
        try:
            return list(for_each_online_node(t))
        except TargetError:
            return [0]
    return [0]


def pgdat(ctx: KernelContext, nid: int) -> int:
    """NODE_DATA(nid): ``node_data[nid]``, or ``&contig_page_data`` without NUMA."""
    t = ctx.t
    if t.has_symbol("node_data"):
        addr = t.read_u64(t.symbol("node_data") + 8 * nid)
        if not addr:
            # alloc_node_data() (setup_arch -> numa init) has not run: the kernel is early
            # in boot (e.g. stopped at start_kernel), before memblock sets up the nodes.
            raise TargetError(f"the memory-management structures are not set up yet "
                              f"(node_data[{nid}] is NULL: the kernel is early in boot)")
        return addr
    return t.symbol("contig_page_data")


def zones(ctx: KernelContext, nid: int) -> list[Zone]:
    """Every zone of node NID (populated or not), in node_zones order."""
    t, zl, pl = ctx.t, ctx.zone_layout, ctx.pgdat_layout
    pgdat_addr = pgdat(ctx, nid)
    nr = pl["node_zones"].array_length
    size = zl.size
    raw = t.read(pgdat_addr + pl.offset("node_zones"), nr * size)
    out = []
    for i in range(nr):
        z = raw[i * size:(i + 1) * size]

        def u(member: str) -> int:
            m = zl[member]
            return int.from_bytes(z[m.offset:m.offset + m.size], "little")

        name_ptr = u("name")
        name = t.read_cstr(name_ptr, 32) if name_ptr else f"zone{i}"
        managed = u("managed_pages")
        out.append(Zone(nid, i, name, pgdat_addr + pl.offset("node_zones") + i * size,
                        u("zone_start_pfn"), u("spanned_pages"), u("present_pages"),
                        managed))
    return out


def deferred_pfns(ctx: KernelContext, nid: int) -> tuple[int, int] | None:
    """The pfns [lo, hi) of node NID whose struct pages the kernel has not initialised yet,
    or None when every struct page of the node is initialised.

    With CONFIG_DEFERRED_STRUCT_PAGE_INIT (every Debian kernel) the memmap of a node is
    initialised at boot only up to ``pgdat->first_deferred_pfn``; the rest is initialised
    by page_alloc_init_late() (deferred_init_memmap(), which sets first_deferred_pfn to
    ULONG_MAX), called from kernel_init_freeable(): a kernel stopped earlier (e.g. at
    kernel_init) has struct pages there that hold whatever memblock left (mm/mm_init.c,
    mm/page_alloc.c before v6.4, early_page_initialised(): ``pfn >=
    NODE_DATA(nid)->first_deferred_pfn``).  They end at
    the node's end, ``node_start_pfn + node_spanned_pages``."""
    t, pl = ctx.t, ctx.pgdat_layout
    if not pl.has("first_deferred_pfn"):
        return None
    raw = t.read(pgdat(ctx, nid), pl.size)
    first, start, spanned = (read_member(pl[m], raw) for m in (
        "first_deferred_pfn", "node_start_pfn", "node_spanned_pages"))
    return (first, start + spanned) if first < start + spanned else None
