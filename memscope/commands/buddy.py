"""buddyinfo (and, to come, pagetypeinfo, freelists, check)."""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import buddy
from . import Result, command


@command("buddyinfo", "free blocks per order in each zone (free_area[].nr_free)",
         formats=("table", "json", "proc"))
def buddyinfo(mm, args) -> Result:
    rows = buddy.buddyinfo(mm)
    orders = list(range(mm.nr_orders))

    def table() -> str:
        return tabulate([[r.node, r.zone, *r.nr_free] for r in rows],
                        headers=["node", "zone", *orders]) + "\n"

    return Result([dataclasses.asdict(r) for r in rows], table,
                  lambda: buddy.format_buddyinfo(rows))
