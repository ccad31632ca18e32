"""CMA areas: ``cma``, ``cma NAME --map [--png FILE]``, ``cma NAME --can-alloc COUNT
[--align ORDER]`` (memscope.mm.cma).

A kernel without CONFIG_CMA, or with no area (x86_64 without ``cma=``): one line saying
so, exit status 0, whatever the flags.  An area name the kernel does not have: one line,
exit status 2.

JSON output (``--format json``), stable keys; pages are the target's pages:

``cma``: one record per area, ``cma_areas[]`` order::

    {"index": int, "address": int, "name": str,
     "nid": int | null,           # cma->nid (6.14+; -1 NUMA_NO_NODE)
     "node": int | null, "zone": str | null,   # the zone holding its first page
     "count": int,                # cma->count, pages
     "available_count": int | null,            # 6.14+
     "order_per_bit": int, "activated": bool,
     "ranges": [{"base_pfn": int, "count": int, "bits": int, "allocated": int,
                 "free": int, "maxchunk": int}],
     "allocated": int,            # pages taken in the bitmap
     "free": int,                 # pages free in the bitmap
     "maxchunk": int,             # the longest free run, pages (debugfs maxchunk)
     "buddy_free": int,           # pages on MIGRATE_CMA free lists inside the area
     "buddy_free_other": int,     # pages of free blocks inside it on other lists
     "pcp": int}                  # pages on per-CPU lists inside it

``cma NAME --map``: ``{"area": <the record above>, "runs": [{"start_pfn", "end_pfn",
"chunks", "state": "taken"|"free"|"movable"|"blocked", "pages": {class: pages},
"blockers": [{"pfn", "class"}]}]}``; classes are memscope.mm.page's (buddy, pcp, anon,
pagecache, slab, pagetable, reserved, kernel...) and ``pinned`` (pin_user_pages()) and
``referenced`` (references migration does not expect, e.g. a pipe holding the page after
splice()): memscope.mm.cma.page_kinds.

``cma NAME --can-alloc COUNT``: ``{"area", "count", "align", "ok", "start_pfn",
"end_pfn", "reason", "tried", "busy", "candidates": [{"range", "start_pfn", "end_pfn",
"blocking", "blockers": [{"pfn", "class"}]}], "blocking_pages": [{"pfn", "class"}]}``:
``candidates`` are the first 64 busy candidates (16 blockers each), ``blocking_pages``
every page that blocked a candidate tried.

A kernel without CMA, or without areas, gives ``[]`` (json) for every form.
"""

from __future__ import annotations

import numpy as np
from tabulate import tabulate

from ..mm import cma as mcma
from . import CommandError, Result, command, parse_number

#: The tables list at most this many blocking pages per run or candidate, and
#: --can-alloc's this many busy candidates.
TABLE_BLOCKERS = 8
TABLE_CANDIDATES = 10


def _args(p) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="a CMA area's name (cma->name)")
    p.add_argument("--map", action="store_true",
                   help="the area chunk by chunk: taken, or free in the bitmap and what "
                        "occupies the pages (free, movable, blocking pages named)")
    p.add_argument("--png", metavar="FILE",
                   help="draw the area's pages (taken chunks, page classes) into FILE "
                        "(a new file)")
    p.add_argument("--can-alloc", metavar="COUNT",
                   help="would cma_alloc(COUNT pages) succeed now, where, or what blocks it")
    p.add_argument("--align", metavar="ORDER", default=None,
                   help="with --can-alloc: cma_alloc()'s alignment order (default 0)")


def _no_area_note(areas) -> str | None:
    if areas is None:
        return "this kernel has no CMA (CONFIG_CMA is not set)\n"
    if not areas:
        return "this kernel has no CMA area (none reserved: cma= is 0 or absent)\n"
    return None


@command("cma", "CMA areas: bitmap use, free pages in the buddy, --map, --can-alloc",
         arguments=_args)
def cma(ctx, args) -> Result:
    name = getattr(args, "name", None)
    want_map = getattr(args, "map", False)
    png_path = getattr(args, "png", None)
    count_text = getattr(args, "can_alloc", None)
    align_text = getattr(args, "align", None)
    if (want_map or png_path is not None or count_text is not None) and name is None:
        raise CommandError("cma: --map, --png and --can-alloc need an area NAME")
    if want_map and count_text is not None:
        raise CommandError("cma: give --map or --can-alloc, not both")
    if align_text is not None and count_text is None:
        raise CommandError("cma: --align goes with --can-alloc")
    count = align = None
    if count_text is not None:
        count = parse_number("cma", "count", count_text)
        if count == 0:
            raise CommandError("cma: --can-alloc needs a count of at least 1 page")
    if align_text is not None:
        align = parse_number("cma", "align order", align_text)
        if align > 63:
            raise CommandError(f"cma: align order {align_text} is above 63")
    from .pages import png_path as checked_png

    png_path = checked_png("cma", png_path)
    areas = mcma.cma_areas(ctx)
    note = _no_area_note(areas)
    if note:
        return Result([], lambda: note)
    if name is None:
        return _summary(ctx, areas)
    area = mcma.find_area(areas, name)
    if area is None:
        raise CommandError(f"cma: no CMA area named {name!r} (areas: "
                           f"{', '.join(a.name for a in areas)})")
    if not area.activated:
        raise CommandError(f"cma: area {name!r} was not activated: it has no bitmap")
    if png_path:
        _png(ctx, area, png_path)
    if count is not None:
        return _can_alloc(ctx, area, count, align or 0)
    if want_map:
        return _map(ctx, area)
    return _summary(ctx, [area], with_totals=False)


def _summary(ctx, areas, with_totals: bool = True) -> Result:
    tot = mcma.totals(ctx, areas) if with_totals else None

    def table() -> str:
        rows = []
        for a in areas:
            for i, r in enumerate(a.ranges):
                first = i == 0
                rows.append([a.name if first else "", "" if a.node is None or not first
                             else f"{a.node} {a.zone}", f"{r.base_pfn:#x}", r.count,
                             a.order_per_bit if first else "", r.allocated, r.free,
                             r.maxchunk, a.buddy_free if first else "",
                             a.pcp if first else ""])
        out = tabulate(rows, headers=["area", "node zone", "base_pfn", "pages",
                                      "order_per_bit", "allocated", "free in bitmap",
                                      "maxchunk", "buddy free (CMA lists)", "pcp"]) + "\n"
        if tot is not None:
            out += (f"total: {tot.count} pages in {tot.areas} areas (CmaTotal: "
                    f"totalcma_pages {tot.totalcma_pages}); {tot.allocated} allocated, "
                    f"{tot.free} free in the bitmaps\n"
                    f"free in the buddy allocator: {tot.buddy_free} pages on MIGRATE_CMA "
                    f"free lists (CmaFree: NR_FREE_CMA_PAGES {tot.nr_free_cma_pages}), "
                    f"{tot.pcp} more on per-CPU lists (not in CmaFree)")
            if tot.buddy_free_other:
                out += f", {tot.buddy_free_other} on other free lists"
            out += ("; the rest of the free bitmap is in use by movable or other pages "
                    "(cma NAME --map)\n")
        return out

    return Result([a.to_json() for a in areas], table)


def _map(ctx, area) -> Result:
    runs = mcma.chunk_map(ctx, area)

    def table() -> str:
        rows = []
        for r in runs:
            pages = " ".join(f"{k}={v}" for k, v in sorted(r.pages.items(),
                                                             key=lambda kv: -kv[1]))
            bl = " ".join(f"{p:#x}:{c}" for p, c in r.blockers[:TABLE_BLOCKERS])
            if len(r.blockers) > TABLE_BLOCKERS:
                bl += f" (+{len(r.blockers) - TABLE_BLOCKERS} more)"
            rows.append([f"{r.start_pfn:#x}", f"{r.end_pfn - 1:#x}", r.chunks, r.state,
                         pages, bl])
        counts = {s: sum(r.chunks for r in runs if r.state == s) for s in mcma.CHUNK_STATES}
        head = (f"CMA area {area.name}: {area.count} pages, chunks of "
                f"{1 << area.order_per_bit} pages: "
                + ", ".join(f"{counts[s]} {s}" for s in mcma.CHUNK_STATES) + "\n")
        return head + tabulate(rows, headers=["first pfn", "last pfn", "chunks", "state",
                                              "pages", "blocking pages"]) + "\n"

    return Result({"area": area.to_json(), "runs": [r.to_json() for r in runs]}, table)


def _can_alloc(ctx, area, count: int, align: int) -> Result:
    res = mcma.can_alloc(ctx, area, count, align)

    def table() -> str:
        out = (f"cma_alloc({area.name}, {count} pages, align {align}): "
               f"{'yes' if res.ok else 'no'}: {res.reason}\n")
        if res.busy:
            shown = res.candidates[:TABLE_CANDIDATES]
            rows = [[f"{c.start_pfn:#x}", f"{c.end_pfn - 1:#x}", c.blocking,
                     " ".join(f"{p:#x}:{k}" for p, k in c.blockers[:TABLE_BLOCKERS])
                     + (" ..." if c.blocking > TABLE_BLOCKERS else "")] for c in shown]
            out += tabulate(rows, headers=["busy candidate", "to", "blocking pages",
                                           "first of them (pfn:class)"]) + "\n"
            if res.busy > len(shown):
                out += f"... and {res.busy - len(shown)} more busy candidates\n"
            by_class: dict[str, int] = {}
            for _, c in res.blocking_pages:
                by_class[c] = by_class.get(c, 0) + 1
            out += (f"pages blocking the candidates tried: {len(res.blocking_pages)} ("
                    + ", ".join(f"{k} {v}" for k, v in sorted(by_class.items())) + ")\n")
        return out

    return Result(res.to_json(), table)


def _png(ctx, area, path: str) -> None:
    from ..report import png
    from .pages import _write

    parts = mcma.area_page_classes(ctx, area)
    row = 512
    origin = parts[0][0] // row * row
    end = max(b + len(c) for b, c in parts)
    names = [*mcma.PAGE_CLASSES, "cma_taken", "not_in_area"]
    cls = np.full(end - origin, len(names) - 1, np.uint8)
    for base, c in parts:
        cls[base - origin:base - origin + len(c)] = c
    counts = {names[i]: int(v) for i, v in enumerate(np.bincount(cls, minlength=len(names)))
              if v and i != len(names) - 1}
    ranges = [(f"{area.name} range {i}", r.base_pfn, r.end_pfn)
              for i, r in enumerate(area.ranges)]
    _write(path, png.page_map(cls, names, counts, ranges, row,
                              f"CMA area {area.name} of {ctx.t.release}: {area.count} pages, "
                              f"{area.allocated} allocated", ctx.t.page_size, origin))

