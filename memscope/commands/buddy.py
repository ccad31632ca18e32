"""The buddy allocator: ``buddyinfo``, ``pagetypeinfo``, ``freelists``, ``check``.

JSON output (``--format json``), stable keys:

``buddyinfo``: a list, one object per populated zone (online nodes, node_zones order)::

    {"node": int, "zone": str, "nr_free": [int per order]}

``pagetypeinfo``::

    {"pageblock_order": int, "pages_per_block": int,
     "migratetypes": [str, ...],            # migratetype_names[], enum order
     "nodes": [int, ...],                   # nodes with memory, as printed
     "zones": [{"node": int, "zone": str,
                "free": {migratetype: [int per order]},      # list entries, capped
                "overflow": {migratetype: [bool per order]},  # count stopped at 100000
                "blocks": {migratetype: int}}]}               # pageblocks of that type

``freelists``: a list, one object per populated zone::

    {"node": int, "zone": str,
     "nr_free": [int per order],                     # free_area[order].nr_free
     "blocks": [{"order": int, "migratetype": str, "pfn": int}],   # free_list order
     "pcp": [{"cpu": int, "index": int, "order": int, "migratetype": str,
              "pfns": [int]}],                       # per-CPU lists (pcp->lists[index])
     "pcp_count": {"<cpu>": int},                    # pcp->count, in pages
     "free_pages_counter": int | null,               # NR_FREE_PAGES incl. per-CPU diffs
     "problems": [problem]}

``check``::

    {"ok": bool,
     "slabs": {"caches": int, "slabs": int, "objects": int,   # the slab half (every slab
               "debug_caches": int, "debug_objects": int},    # walked; red zones checked)
     "zones": [{"node": int, "zone": str, "nr_free": [int per order],
                "walked": [int per order],           # blocks found on the lists
                "free_pages": int,                   # pages on the lists (all but Isolate)
                "free_pages_counter": int | null,
                "pcp_pages": int}],
     "problems": [problem]}

where ``problem`` is ``{"kind": str, "node": int, "zone": str, "where": str,
"message": str}`` and ``kind`` one of: cycle, outside_memory, unreadable, broken_link,
not_buddy, wrong_order, misaligned, outside_zone, cross_linked, too_long, gave_up,
nr_free_mismatch, free_pages_counter_mismatch, pcp_count_mismatch; the slab half's
``where`` is the cache's name and its kinds those of :mod:`memscope.mm.slub_debug`
(cycle, bad_pointer, too_long, inuse_mismatch, double_free, unlisted, wrong_slab,
bad_sheaf, unknown_cache; under SLUB debugging left_redzone, right_redzone,
kmalloc_redzone, alignment_padding, poison, end_poison, object_padding, padding, each
message starting with the kernel's own name, "Left Redzone overwritten: ...").

``check`` exits with status 1 when it finds any problem, 0 otherwise.  The free-page
counter is compared exactly (global ``vm_stat`` plus every CPU's ``vm_stat_diff``): on a
frozen dump they agree; on a live target (``--qemu``, ``-k``) lists and counters move under
the read, and whatever disagrees is reported (exit 1), never an exception.
"""

from __future__ import annotations

import dataclasses

from tabulate import tabulate

from ..mm import buddy, check as mm_check, freelists as fl
from . import Result, command


@command("buddyinfo", "free blocks per order in each zone (free_area[].nr_free)",
         formats=("table", "json", "proc"))
def buddyinfo(ctx, args) -> Result:
    rows = buddy.buddyinfo(ctx)
    orders = list(range(ctx.nr_orders))

    def table() -> str:
        return tabulate([[r.node, r.zone, *r.nr_free] for r in rows],
                        headers=["node", "zone", *orders]) + "\n"

    return Result([dataclasses.asdict(r) for r in rows], table,
                  lambda: buddy.format_buddyinfo(rows))


@command("pagetypeinfo", "free blocks per migratetype and order, pageblocks per migratetype",
         formats=("table", "json", "proc"))
def pagetypeinfo(ctx, args) -> Result:
    info = buddy.pagetypeinfo(ctx)

    def table() -> str:
        orders = list(range(ctx.nr_orders))
        free = tabulate(
            [[z.node, z.zone, mt, *[(">" if o else "") + str(n)
                                    for n, o in zip(z.free[mt], z.overflow[mt])]]
             for z in info.zones for mt in info.migratetypes],
            headers=["node", "zone", "migratetype", *orders])
        blocks = tabulate([[z.node, z.zone, *[z.blocks[mt] for mt in info.migratetypes]]
                           for z in info.zones], headers=["node", "zone", *info.migratetypes])
        return (f"pageblock order {info.pageblock_order} ({info.pages_per_block} pages)\n\n"
                f"free blocks\n{free}\n\npageblocks\n{blocks}\n")

    return Result(dataclasses.asdict(info), table, lambda: buddy.format_pagetypeinfo(info))


def _freelists_args(p) -> None:
    p.add_argument("--no-pcp", action="store_true", help="skip the per-CPU lists")


@command("freelists", "every free block on the buddy free lists and the per-CPU lists",
         arguments=_freelists_args)
def freelists(ctx, args) -> Result:
    zones = fl.freelists(ctx, pcp=not getattr(args, "no_pcp", False))
    data = [{
        "node": z.node, "zone": z.zone, "nr_free": z.nr_free,
        "blocks": [{"order": b.order, "migratetype": b.migratetype, "pfn": b.pfn}
                   for b in z.blocks],
        "pcp": [{"cpu": p.cpu, "index": p.index, "order": p.order,
                 "migratetype": p.migratetype, "pfns": p.pfns} for p in z.pcp],
        "pcp_count": {str(c): n for c, n in z.pcp_count.items()},
        "free_pages_counter": z.free_pages_counter,
        "problems": [p.to_json() for p in z.problems],
    } for z in zones]

    def table() -> str:
        out = []
        for z in zones:
            out.append(f"Node {z.node}, zone {z.zone}: {len(z.blocks)} free blocks, "
                       f"{sum(b and 1 << b.order for b in z.blocks)} pages")
            out.append(tabulate([[b.order, b.migratetype, f"{b.pfn:#x}",
                                  f"{b.pfn + (1 << b.order) - 1:#x}"] for b in z.blocks],
                                headers=["order", "migratetype", "first pfn", "last pfn"]))
            if z.pcp:
                out.append("")
                out.append(tabulate(
                    [[p.cpu, p.index, p.order, p.migratetype, len(p.pfns),
                      " ".join(f"{x:#x}" for x in p.pfns[:6]) + (" ..." if len(p.pfns) > 6
                                                                 else "")]
                     for p in z.pcp if p.pfns],
                    headers=["cpu", "list", "order", "migratetype", "blocks", "pfns"]))
            for p in z.problems:
                out.append(f"problem: {p}")
            out.append("")
        return "\n".join(out) + "\n"

    status = 1 if any(z.problems for z in zones) else 0
    return Result(data, table, None, status)


@command("check", "walk the free lists (against nr_free and NR_FREE_PAGES) and every slab "
         "(freelists, inuse, sheaves; red zones and poison under slub_debug); exit status 1 "
         "when anything is wrong")
def check(ctx, args) -> Result:
    report = mm_check.check(ctx)
    problems = report.problems
    rows = [dataclasses.asdict(z) for z in report.zones]
    sc = report.slabs
    slabs = {k: v for k, v in dataclasses.asdict(sc).items() if k != "problems"}
    data = {"ok": report.ok, "zones": rows, "slabs": slabs,
            "problems": [p.to_json() for p in problems]}

    def table() -> str:
        t = tabulate([[r["node"], r["zone"], sum(r["nr_free"]), sum(r["walked"]),
                       r["free_pages"], r["free_pages_counter"], r["pcp_pages"]] for r in rows],
                     headers=["node", "zone", "nr_free", "walked", "free pages",
                              "NR_FREE_PAGES", "pcp pages"])
        lines = [t, "", f"slabs: {sc.slabs} slabs of {sc.caches} caches walked, "
                 f"{sc.objects} objects; red zones and poison checked on {sc.debug_objects} "
                 f"objects of {sc.debug_caches} caches with SLUB debugging", ""]
        if problems:
            lines += [f"problem: {p}" for p in problems]
            lines.append(f"{len(problems)} problem(s) found")
        else:
            lines.append("ok: free lists agree with nr_free and NR_FREE_PAGES; every slab's "
                         "freelist, inuse and red zones are sound")
        return "\n".join(lines) + "\n"

    return Result(data, table, None, 0 if report.ok else 1)
