"""Nodes and zones (include/linux/mmzone.h): ``pglist_data`` and ``struct zone``.

Debian kernels are built with CONFIG_NUMA, so nodes are found through ``node_data[]`` and
the ``node_states[N_ONLINE]`` mask even on a one-node guest; ``contig_page_data`` is used
when a kernel has it instead (!CONFIG_NUMA).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

from ..target.base import Target, TargetError


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


class MM:
    """Layouts and addresses probed once per target and shared by the mm modules."""

    def __init__(self, target: Target):
        self.t = target

    @cached_property
    def zone_layout(self):
        return self.t.layout("struct zone")

    @cached_property
    def pgdat_layout(self):
        return self.t.layout("struct pglist_data")

    @cached_property
    def nr_orders(self) -> int:
        # Take the number of orders from the array: MAX_ORDER was exclusive up to v6.3,
        # inclusive from v6.4 (commit 23baf831a32c) and renamed MAX_PAGE_ORDER in v6.8;
        # free_area[] always has NR_PAGE_ORDERS entries.
        n = self.zone_layout["free_area"].array_length
        if not n:
            raise TargetError("struct zone.free_area has no array length")
        return n

    @cached_property
    def free_area_size(self) -> int:
        return self.t.sizeof("struct free_area")

    @cached_property
    def migratetypes(self) -> dict[str, int]:
        """enum migratetype without the MIGRATE_ prefix, e.g. {"Unmovable": 0, ...}.

        CMA and ISOLATE exist only with CONFIG_CMA / CONFIG_MEMORY_ISOLATION, so their
        values move: read them from the debug info."""
        return {k: v for k, v in self.t.enum("enum migratetype").items()}

    def node_ids(self) -> list[int]:
        """The online nodes, in order (for_each_online_node)."""
        t = self.t
        if t.has_symbol("node_data"):
            try:
                n_online = t.enum_value("enum node_states", "N_ONLINE")
                mask_size = t.sizeof("nodemask_t")
                base = t.symbol("node_states") + n_online * mask_size
                bits = int.from_bytes(t.read(base, mask_size), "little")
            except TargetError:
                bits = 1
            return [i for i in range(mask_size * 8) if bits >> i & 1]
        return [0]

    def pgdat(self, nid: int) -> int:
        t = self.t
        if t.has_symbol("node_data"):
            return t.read_u64(t.symbol("node_data") + 8 * nid)
        return t.symbol("contig_page_data")

    def zones(self, nid: int) -> list[Zone]:
        """Every zone of node NID (populated or not), in node_zones order."""
        t, zl, pl = self.t, self.zone_layout, self.pgdat_layout
        pgdat = self.pgdat(nid)
        nr = pl["node_zones"].array_length
        size = zl.size
        raw = t.read(pgdat + pl.offset("node_zones"), nr * size)
        out = []
        for i in range(nr):
            z = raw[i * size:(i + 1) * size]

            def u(member: str) -> int:
                m = zl[member]
                return int.from_bytes(z[m.offset:m.offset + m.size], "little")

            name_ptr = u("name")
            name = t.read_cstr(name_ptr, 32) if name_ptr else f"zone{i}"
            managed = u("managed_pages")
            out.append(Zone(nid, i, name, pgdat + pl.offset("node_zones") + i * size,
                            u("zone_start_pfn"), u("spanned_pages"), u("present_pages"),
                            managed))
        return out

    def all_zones(self, populated_only: bool = True) -> list[Zone]:
        # Read once per MM (every command asks, some several times); a new list each call.
        zones = self.__dict__.get("_all_zones")
        if zones is None:
            zones = self.__dict__["_all_zones"] = [z for nid in self.node_ids()
                                                   for z in self.zones(nid)]
        return [z for z in zones if z.populated or not populated_only]
