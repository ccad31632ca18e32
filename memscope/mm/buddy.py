"""The buddy allocator's counters: ``zone->free_area[order].nr_free`` (mm/page_alloc.c)."""

from __future__ import annotations

import dataclasses

from .zone import MM, Zone


@dataclasses.dataclass(frozen=True)
class ZoneBuddyInfo:
    """One line of /proc/buddyinfo: free blocks per order in one zone."""

    node: int
    zone: str
    nr_free: list[int]  # index = order


def buddyinfo(mm: MM) -> list[ZoneBuddyInfo]:
    """``free_area[order].nr_free`` of every populated zone, as /proc/buddyinfo walks them
    (online nodes, then populated zones in node_zones order)."""
    t = mm.t
    fa_off = mm.zone_layout.offset("free_area")
    nr_off = t.layout("struct free_area").offset("nr_free")
    out = []
    for z in mm.all_zones():
        raw = t.read(z.address + fa_off, mm.nr_orders * mm.free_area_size)
        counts = [int.from_bytes(raw[o * mm.free_area_size + nr_off:][:8], "little")
                  for o in range(mm.nr_orders)]
        out.append(ZoneBuddyInfo(z.node, z.name, counts))
    return out


def format_buddyinfo(rows: list[ZoneBuddyInfo]) -> str:
    """/proc/buddyinfo, byte for byte (mm/vmstat.c frag_show_print)."""
    return "".join(f"Node {r.node}, zone {r.zone:>8} " + "".join(f"{n:6d} " for n in r.nr_free)
                   + "\n" for r in rows)


__all__ = ["ZoneBuddyInfo", "Zone", "buddyinfo", "format_buddyinfo"]
