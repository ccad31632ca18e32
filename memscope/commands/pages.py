"""pages, pageblocks, frag: physical memory as a whole.

JSON records:

``pages``: a list of zones ``{"node", "zone", "start_pfn", "end_pfn", "counts": {class:
pages}, "buddy_blocks": [blocks per order], "pcp_pages", "compound_tails",
"inconsistent"}`` (classes: memscope.mm.page.CLASSES; compound tails are counted in their
head's class), plus ``{"findings": [...]}`` as the last element when the per-CPU list walk
found problems.  ``pages --pfn A-B``: a list of pages ``{"pfn", "cls", "flags", "order",
"refcount", "mapcount", "page_type", "mapping", "index", "private", "head_pfn",
"inconsistent"}``.

``pageblocks``: see memscope.mm.pageblock; ``frag``: see memscope.mm.frag.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from tabulate import tabulate

from ..mm import frag as mfrag
from ..mm import page as mpage
from ..mm import pageblock as mpb
from . import CommandError, Result, command


_PFN = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)")


def _pfn_range(s: str) -> tuple[int, int]:
    a, sep, b = s.partition("-")
    if not _PFN.fullmatch(a) or (sep and not _PFN.fullmatch(b)):
        raise CommandError(f"--pfn {s!r}: expected A-B or A (decimal or 0x hex), "
                           "e.g. 0x1000-0x10ff")
    lo = int(a, 0)
    hi = int(b, 0) + 1 if sep else lo + 1
    if hi <= lo:
        raise CommandError(f"--pfn {s!r}: empty range")
    if hi - lo > 1 << 20:
        raise CommandError(f"--pfn {s!r}: at most {1 << 20} pages at a time")
    return lo, hi


def _pages_args(p) -> None:
    p.add_argument("--pfn", metavar="A-B", help="list the pages of pfns A..B (inclusive)")
    p.add_argument("--png", metavar="FILE", help="write a physical memory map (PNG)")


def _new_file(path: str) -> None:
    """Refuse, before any work, a --png path that exists (the user's file stays)."""
    import os

    if os.path.lexists(path):
        raise CommandError(f"{path} exists: memscope does not overwrite files; "
                           "name a new file")


def png_path(cmd: str, path: str | None) -> str | None:
    """A command's ``--png`` argument checked before any work: None when not given; an
    empty name, or a file that exists, is refused (:class:`CommandError`, one line)."""
    if path is not None and not path.strip():
        raise CommandError(f"{cmd}: --png needs a file name")
    if path:
        _new_file(path)
    return path or None


def _write(path: str, data: bytes) -> None:
    from ..report import png

    try:
        png.write_png(path, data)
    except FileExistsError:
        raise CommandError(f"{path} exists: memscope does not overwrite files; "
                           "name a new file") from None
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None


@command("pages", "classify every physical page (struct page decoded in bulk)",
         arguments=_pages_args)
def pages(ctx, args) -> Result:
    if args.pfn and args.png:
        raise CommandError("--png draws the whole memory; it does not combine with --pfn")
    if args.png:
        _new_file(args.png)
    if args.pfn:
        lo, hi = _pfn_range(args.pfn)
        recs = mpage.page_records(ctx, lo, hi)

        def table() -> str:
            return tabulate([[f"{r.pfn:#x}", r.cls + ("!" if r.inconsistent else ""),
                              ",".join(r.flags), "" if r.order is None else r.order,
                              r.refcount, "" if r.mapcount is None else r.mapcount,
                              r.page_type or "", f"{r.mapping:#x}" if r.mapping else "",
                              r.index, r.private,
                              "" if r.head_pfn is None else f"{r.head_pfn:#x}"] for r in recs],
                            headers=["pfn", "class", "flags", "order", "ref", "map", "type",
                                     "mapping", "index", "private", "head"]) + "\n"

        return Result([dataclasses.asdict(r) for r in recs], table)

    # The memmap streamed in pieces: memory bounded whatever the machine's size (one
    # byte a page more for --png, the map's pixels).
    sc = mpage.scan(ctx, classes=bool(args.png))
    rows = sc.rows
    if args.png:
        from ..report import png

        row = 1 << mpb.pageblock_order(ctx)
        origin = min(z.zone_start_pfn for z in sc.zones) // row * row  # the first zone's row
        cls = sc.cls[origin:]
        counts = {c: int(np.count_nonzero(cls == i)) for i, c in enumerate(mpage.CLASSES)}
        zones = [(f"node {z.node} {z.name}", z.zone_start_pfn, z.end_pfn) for z in sc.zones]
        title = (f"{ctx.t.release}: physical memory, pfn {origin:#x}-{len(sc.cls) - 1:#x} "
                 f"({png.human_bytes(len(cls) * ctx.t.page_size)})")
        _write(args.png, png.page_map(cls, list(mpage.CLASSES), counts, zones, row, title,
                                      ctx.t.page_size, origin))
    classes = [c for c in mpage.CLASSES if any(r.counts[c] for r in rows)]
    data = [dataclasses.asdict(r) for r in rows]
    if sc.pcp_findings:
        data.append({"findings": [str(p) for p in sc.pcp_findings]})

    def table() -> str:
        kb = ctx.t.page_size // 1024
        body = [[r.node, r.zone, *[r.counts[c] for c in classes], r.compound_tails,
                 r.inconsistent] for r in rows]
        tot = ["", "total", *[sum(r.counts[c] for r in rows) for c in classes],
               sum(r.compound_tails for r in rows), sum(r.inconsistent for r in rows)]
        out = tabulate(body + [tot], headers=["node", "zone", *classes, "(tails)",
                                              "inconsistent"]) + "\n"
        out += "\n" + tabulate([[c, tot[2 + i], tot[2 + i] * kb] for i, c in enumerate(classes)],
                               headers=["class", "pages", "kB"]) + "\n"
        out += ("\nfree buddy blocks per order: "
                + "; ".join(f"N{r.node} {r.zone}: {r.buddy_blocks}" for r in rows) + "\n")
        for f in sc.pcp_findings:
            out += f"finding: {f}\n"
        if sc.unreadable_pages:
            out += f"{sc.unreadable_pages} struct pages unreadable (counted as hole)\n"
        return out

    return Result(data, table, exit_status=0)


def _pageblocks_args(p) -> None:
    p.add_argument("--png", metavar="FILE", help="write a pageblock map (PNG)")


@command("pageblocks", "migratetype, skip and isolate bits of every pageblock; mixed blocks",
         formats=("table", "json", "proc"), arguments=_pageblocks_args)
def pageblocks(ctx, args) -> Result:
    if args.png:
        _new_file(args.png)
    rows = mpb.zone_pageblocks(ctx)
    names = mpb.migratetype_names(ctx)
    if args.png:
        from ..report import png

        po = mpb.pageblock_order(ctx)
        zones_ = ctx.all_zones()
        origin = min(z.zone_start_pfn for z in zones_) >> po << po  # the first zone's block
        nblocks = (max(z.end_pfn for z in zones_) + (1 << po) - 1 >> po) - (origin >> po)
        blocks = []
        for zi, z in enumerate(zones_):
            b = mpb.zone_blocks(ctx, z)
            blocks += zip(b.block.tolist(), b.migratetype.tolist(), [zi] * len(b.block),
                          b.skip.tolist(), b.isolate.tolist(), b.mixed.tolist())
        counts = {n: sum(r.counts[n] for r in rows) for n in names}
        title = (f"{ctx.t.release}: {nblocks} pageblocks of {1 << po} pages, "
                 f"pfn {origin:#x}-{origin + (nblocks << po) - 1:#x}")
        _write(args.png, png.pageblock_map(
            names, blocks, [(f"node {z.node} {z.name}", z.zone_start_pfn, z.end_pfn)
                            for z in zones_], po, nblocks, title, counts, ctx.t.page_size,
            origin))

    def table() -> str:
        out = tabulate([[r.node, r.zone, *[r.counts[n] for n in names], r.skip, r.isolate,
                         sum(r.mixed.values()), r.mixed_free_pages] for r in rows],
                       headers=["node", "zone", *names, "skip", "isolate", "mixed blocks",
                                "mixed free pages"]) + "\n"
        out += f"\npageblock order {rows[0].pageblock_order if rows else '?'}\n"
        for r in rows:
            if r.mixed:
                out += f"N{r.node} {r.zone} mixed blocks by type: {r.mixed}\n"
            for f in r.list_findings:
                out += f"finding: N{r.node} {r.zone}: {f}\n"
        return out

    data = [dataclasses.asdict(r) | {"list_findings": [str(p) for p in r.list_findings]}
            for r in rows]
    return Result(data, table, lambda: mpb.format_blockcount(ctx, rows).lstrip("\n"))


def _frag_args(p) -> None:
    p.add_argument("--gfp", choices=mfrag.GFP_CLASSES, default="kernel",
                   help="allocation class for the watermark check (default: kernel)")
    p.add_argument("--proc-file", choices=("unusable_index", "extfrag_index"),
                   default="unusable_index",
                   help="which /sys/kernel/debug/extfrag file --format proc prints")


@command("frag", "fragmentation indices and allocation feasibility per zone and order",
         formats=("table", "json", "proc"), arguments=_frag_args)
def frag(ctx, args) -> Result:
    rows = mfrag.zone_frag(ctx, args.gfp)

    def table() -> str:
        out = []
        for r in rows:
            out.append(f"Node {r.node}, zone {r.zone}: NR_FREE_PAGES {r.free_pages_counter}, "
                       f"watermarks min/low/high {r.watermarks['min']}/{r.watermarks['low']}/"
                       f"{r.watermarks['high']} boost {r.watermarks['boost']}, "
                       f"highatomic reserved {r.highatomic['reserved']}, largest free order "
                       f"{r.largest_free_order}, gfp {r.gfp}")
            out.append(tabulate([[o.order, o.nr_free, o.free_pages, o.unusable, o.extfrag,
                                  "yes" if o.ok_fast else "no", "yes" if o.ok_min else "no",
                                  "yes" if o.succeeds else "NO"] for o in r.orders],
                                headers=["order", "nr_free", "free pages", "unusable",
                                         "extfrag", "fast (low)", "min", "succeeds now"],
                                disable_numparse=True))
            out.append("")
        return "\n".join(out) + "\n"

    def proc() -> str:
        if args.proc_file == "extfrag_index":
            return mfrag.format_extfrag_index(rows, mfrag.extfrag_index_width(ctx))
        return mfrag.format_unusable_index(rows)

    return Result([dataclasses.asdict(r) for r in rows], table, proc)
