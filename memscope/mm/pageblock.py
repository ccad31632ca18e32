"""Pageblocks: the migratetype, skip and isolate bits of every pageblock
(include/linux/pageblock-flags.h, mm/page_alloc.c get_pfnblock_flags_mask), and the free
pages sitting on another migratetype's free list than their block's ("mixed" blocks).

With SPARSEMEM the bits live in ``mem_section[nr]->usage->pageblock_flags[]``: block
``(pfn & (PAGES_PER_SECTION - 1)) >> pageblock_order`` of a section uses the
NR_PAGEBLOCK_BITS bits from ``block * NR_PAGEBLOCK_BITS`` (little-endian words, so the
same bit index in bytes).

- 5.10-6.12: bits 0-2 migratetype (MIGRATE_ISOLATE is a migratetype value), bit 3
  PB_migrate_skip, NR_PAGEBLOCK_BITS 4.
- 7.2: bits 0-2 migratetype, bit 3 PB_compact_skip, bit 4 PB_migrate_isolate (a separate
  bit: get_pfnblock_migratetype() returns MIGRATE_ISOLATE when it is set),
  NR_PAGEBLOCK_BITS = roundup_pow_of_two(__NR_PAGEBLOCK_BITS) = 8.

JSON records (``pageblocks -f json``): a list of zones, each
``{"node", "zone", "start_pfn", "end_pfn", "pageblock_order", "counts": {migratetype:
blocks}, "skip", "isolate", "mixed": {migratetype: blocks}, "mixed_free_pages",
"list_findings": [...]}``; ``counts`` follows /proc/pagetypeinfo's "Number of blocks type".
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from ..kernel.problem import Problem
from ..target.base import FaultError, TargetError
from . import freelists as fl
from . import memmap
from .context import KernelContext
from . import zone as _zone
from .zone import Zone


@dataclasses.dataclass(frozen=True)
class PageblockBits:
    """
    Where a pageblock's state lies in its NR_PAGEBLOCK_BITS bits (``enum pageblock_bits``,
    include/linux/pageblock-flags.h): bit numbers within the block's group.

    - ``nbits``: NR_PAGEBLOCK_BITS (4 on 5.10-6.12, 8 on 7.2).
    - ``skip_bit``: PB_migrate_skip (6.16+ PB_compact_skip).
    - ``isolate_bit``: PB_migrate_isolate (6.16+), None where isolation is the
      migratetype value MIGRATE_ISOLATE.
    - ``migratetype_mask``: the migratetype bits (0-2).
    """

    nbits: int  # NR_PAGEBLOCK_BITS
    skip_bit: int
    isolate_bit: int | None  # 7.2+: PB_migrate_isolate; None: isolation is a migratetype
    migratetype_mask: int = 0x7


def pageblock_bits(ctx: KernelContext) -> PageblockBits:
    """
    Probe :class:`PageblockBits` from ``enum pageblock_bits`` in the debug info.

    :param ctx: the context of the target
    :raises TargetError: the kernel has no ``enum pageblock_bits``
    """
    e = ctx.t.enum("enum pageblock_bits")
    if "NR_PAGEBLOCK_BITS" in e:
        nbits = e["NR_PAGEBLOCK_BITS"]
    else:
        # 6.16+ (commit 42f4a8ea8fb4 "mm/page_isolation: make page isolation a standalone
        # bit"): the enum ends with __NR_PAGEBLOCK_BITS, rounded up to a power of two.
        n = e["__NR_PAGEBLOCK_BITS"]
        nbits = 1 << (n - 1).bit_length()
    skip = e.get("PB_migrate_skip", e.get("PB_compact_skip", 3))
    return PageblockBits(nbits, skip, e.get("PB_migrate_isolate"))


def pageblock_order(ctx: KernelContext) -> int:
    """pageblock_order.  It is a macro on every lab kernel (HPAGE_PMD_ORDER capped by the
    top buddy order); a variable with CONFIG_HUGETLB_PAGE_SIZE_VARIABLE.  Otherwise it is
    derived from the size of ``struct mem_section_usage`` as sparse_init allocated them:
    the usage structs of a node's boot sections are packed at mem_section_usage_size() =
    sizeof(struct mem_section_usage) + the bitmap, and the bitmap holds
    NR_PAGEBLOCK_BITS bits per pageblock of a section."""
    return ctx.probe("pageblock_order", lambda: _pageblock_order(ctx))


def _pageblock_order(ctx: KernelContext) -> int:
    """Compute :func:`pageblock_order` (not cached)."""
    t = ctx.t
    order = None
    if t.has_symbol("pageblock_order"):
        order = t.read_u32(t.symbol("pageblock_order"))
    else:
        s = memmap.sections(ctx)
        use = s.usage[s.present() & (s.usage != 0)].astype(np.int64)
        strides = Counter(int(d) for d in np.diff(use) if d > 0)
        base = t.layout("struct mem_section_usage").offset("pageblock_flags")
        nbits = pageblock_bits(ctx).nbits
        for stride, _ in strides.most_common(1):
            blocks = (stride - base) * 8 // nbits
            if blocks > 0 and blocks & (blocks - 1) == 0 and s.pages_per_section % blocks == 0:
                order = (s.pages_per_section // blocks).bit_length() - 1
        if order is None:
            # Fallback: HPAGE_PMD_ORDER (a page of 8-byte entries), capped as the kernel does.
            order = min((t.page_size // 8).bit_length() - 1, ctx.nr_orders - 1)
    return order


def _all_flags(ctx: KernelContext) -> np.ndarray:
    """The NR_PAGEBLOCK_BITS value of every pageblock of pfns [0, max_pfn) (uint8);
    0xff where the section has no usage map; read once per snapshot."""
    return ctx.snapshot("pageblock_flags", lambda: _read_all_flags(ctx))


def _read_all_flags(ctx: KernelContext) -> np.ndarray:
    """Read :func:`_all_flags` from every section's usage map (not cached)."""
    t = ctx.t
    s = memmap.sections(ctx)
    po = pageblock_order(ctx)
    bits = pageblock_bits(ctx)
    per_sec = s.pages_per_section >> po
    nbytes = (per_sec * bits.nbits + 7) // 8
    base = t.layout("struct mem_section_usage").offset("pageblock_flags")
    out = np.full(len(s.mem_map) * per_sec, 0xFF, np.uint8)
    for nr in np.flatnonzero(s.present() & (s.usage != 0)):
        try:
            raw = np.frombuffer(t.read(int(s.usage[nr]) + base, nbytes), np.uint8)
        except FaultError:
            continue
        if bits.nbits == 8:
            vals = raw
        elif bits.nbits == 4:
            vals = np.empty(per_sec, np.uint8)
            vals[0::2] = raw & 0xF
            vals[1::2] = raw >> 4
        else:
            b = np.unpackbits(raw, bitorder="little").reshape(-1, bits.nbits)
            vals = np.packbits(b, axis=1, bitorder="little")[:, 0]
        out[nr * per_sec:(nr + 1) * per_sec] = vals[:per_sec]
    return out


def _online_pfn(ctx: KernelContext, pfns: np.ndarray) -> np.ndarray:
    """pfn_to_online_page() != NULL: the section is online and, with ZONE_DEVICE (Debian
    has it), the pfn's subsection is in usage->subsection_map (pfn_section_valid)."""
    t = ctx.t
    s = memmap.sections(ctx)
    nr = pfns // s.pages_per_section
    ok = s.online()[nr]
    sub_shift = memmap.SUBSECTION_SHIFT - (t.page_size.bit_length() - 1)
    smap_off = t.layout("struct mem_section_usage").offset("subsection_map")
    smaps: dict[int, int] = {}
    for i in np.flatnonzero(ok):
        n = int(nr[i])
        if n not in smaps:
            try:
                smaps[n] = t.read_u64(int(s.usage[n]) + smap_off)
            except FaultError:
                smaps[n] = 0
        sub = (int(pfns[i]) & (s.pages_per_section - 1)) >> sub_shift
        ok[i] = bool(smaps[n] >> sub & 1)
    return ok


def pageblock_migratetypes(ctx: KernelContext, zone: Zone) -> np.ndarray:
    """The migratetype of each pageblock of ZONE, as get_pageblock_migratetype() returns it
    (MIGRATE_ISOLATE when 7.2's isolate bit is set), for the pageblocks containing
    zone_start_pfn + k * pageblock_nr_pages, k = 0, 1, ... while < zone_end_pfn: the blocks
    /proc/pagetypeinfo counts (pagetypeinfo_showblockcount_print).  -1 where the kernel
    skips the pfn (no online struct page there).  numpy int16 array."""
    po = pageblock_order(ctx)
    bits = pageblock_bits(ctx)
    flags = _all_flags(ctx)
    pfns = np.arange(zone.zone_start_pfn, zone.end_pfn, 1 << po, dtype=np.int64)
    f = flags[pfns >> po].astype(np.int16)
    mt = f & bits.migratetype_mask
    if bits.isolate_bit is not None:
        mt = np.where((f >> bits.isolate_bit) & 1 == 1,
                      ctx.migratetypes.get("MIGRATE_ISOLATE", mt), mt)
    ok = (f != 0xFF) & _online_pfn(ctx, pfns)
    deferred = _zone.deferred_pfns(ctx, zone.node)
    if deferred is not None:
        # struct pages not initialised yet (early in boot): page_zone() of such a page is
        # not ZONE, and the kernel sets their pageblocks' migratetype only when it
        # initialises them (deferred_init_memmap)
        ok &= (pfns < deferred[0]) | (pfns >= deferred[1])
    return np.where(ok, mt, -1).astype(np.int16)


def migratetype_names(ctx: KernelContext) -> list[str]:
    """Names as /proc/pagetypeinfo prints them (the kernel's migratetype_names[]), by value:
    :attr:`memscope.mm.freelists.FreeListWalker.migratetype_names`."""
    return fl.walker(ctx).migratetype_names


# --- free lists ------------------------------------------------------------------------
#: Problems of the counters, not of the lists' structure: not list findings here.
_COUNTER_PROBLEMS = ("nr_free_mismatch", "free_pages_counter_mismatch")


def free_lists(ctx: KernelContext,
               zone: Zone) -> tuple[dict[tuple[int, int], np.ndarray], list[Problem]]:
    """The pfns of the first pages of the free blocks on each ``free_area[order]
    .free_list[migratetype]`` of ZONE: {(order, migratetype): pfns}, plus findings.

    The lists are walked by :meth:`memscope.mm.freelists.FreeListWalker.zone` (bounded,
    cycle-detecting, on bulk-read struct pages); its problems with the lists (the
    counter checks left out) are the findings."""
    w = fl.walker(ctx)
    zl = w.zone(zone, pcp=False)
    index = {(w.migratetype_names[mt] if mt < len(w.migratetype_names) else str(mt)): mt
             for mt in range(w.nr_lists)}
    pfns: dict[tuple[int, int], list[int]] = {(o, mt): [] for o in range(ctx.nr_orders)
                                              for mt in range(w.nr_lists)}
    for b in zl.blocks:
        pfns[(b.order, index[b.migratetype])].append(b.pfn)
    findings = [p for p in zl.problems if p.kind not in _COUNTER_PROBLEMS]
    return {k: np.array(v, np.int64) for k, v in pfns.items()}, findings


@dataclasses.dataclass
class ZoneBlocks:
    """The state of every pageblock of one zone: the one place where a block's skip, isolate
    and "mixed" state is decided, for the table, the JSON and the PNG alike.

    All arrays have one entry per block, for the pfns ``zone_start_pfn + k *
    pageblock_nr_pages`` below ``zone_end_pfn`` (the blocks /proc/pagetypeinfo counts).

    - ``block``: pageblock index (pfn >> pageblock_order), int64.
    - ``migratetype``: :func:`pageblock_migratetypes` (-1: no online struct page), int16.
    - ``skip``: the compaction skip bit (PB_migrate_skip; 6.16+ PB_compact_skip), bool.
    - ``isolate``: isolated (7.2: the PB_migrate_isolate bit; before: the migratetype bits
      hold MIGRATE_ISOLATE), bool.
    - ``mixed``: the block holds free pages on another migratetype's free list than the
      block's own (as get_pfnblock_migratetype() gives it, isolation included), bool.
    - ``mixed_by_type``: block migratetype value -> number of mixed blocks;
      ``mixed_free_pages``: the free pages on a list other than their block's type.
    - ``list_findings``: what the bounded free-list walk found wrong
      (:class:`~memscope.kernel.problem.Problem` records).
    Blocks whose section has no usage map are neither skip nor isolate."""

    zone: Zone
    block: np.ndarray
    migratetype: np.ndarray
    skip: np.ndarray
    isolate: np.ndarray
    mixed: np.ndarray
    mixed_by_type: dict[int, int]
    mixed_free_pages: int
    list_findings: list[Problem]


def zone_blocks(ctx: KernelContext, z: Zone) -> ZoneBlocks:
    """:class:`ZoneBlocks` of zone Z, from the pageblock bits (usage->pageblock_flags) and
    the zone's free lists (walked by :func:`free_lists`)."""
    po = pageblock_order(ctx)
    bits = pageblock_bits(ctx)
    flags = _all_flags(ctx)
    iso = ctx.migratetypes.get("MIGRATE_ISOLATE")
    block = np.arange(z.zone_start_pfn, z.end_pfn, 1 << po, dtype=np.int64) >> po
    inside = block < len(flags)
    f = np.where(inside, flags[np.where(inside, block, 0)], 0xFF)
    known = f != 0xFF
    skip = known & ((f >> bits.skip_bit) & 1 == 1)
    if bits.isolate_bit is not None:
        isolate = known & ((f >> bits.isolate_bit) & 1 == 1)
    elif iso is not None:
        isolate = known & ((f & bits.migratetype_mask) == iso)
    else:
        isolate = np.zeros(len(block), bool)
    lists, findings = free_lists(ctx, z)
    mixed_blocks: dict[int, set[int]] = {}
    mixed_pages = 0
    for (o, lmt), pfns in lists.items():
        if not len(pfns):
            continue
        bmt = flags[pfns >> po].astype(np.int16) & bits.migratetype_mask
        if bits.isolate_bit is not None:
            bmt = np.where((flags[pfns >> po] >> bits.isolate_bit) & 1 == 1, iso, bmt)
        off = bmt != lmt
        mixed_pages += int(np.count_nonzero(off)) << o
        for b, m in zip((pfns[off] >> po).tolist(), bmt[off].tolist()):
            mixed_blocks.setdefault(int(m), set()).add(b)
    every_mixed = sorted(set().union(*mixed_blocks.values())) if mixed_blocks else []
    return ZoneBlocks(z, block, pageblock_migratetypes(ctx, z), skip, isolate,
                      np.isin(block, every_mixed),
                      {m: len(bs) for m, bs in sorted(mixed_blocks.items())}, mixed_pages,
                      findings)


@dataclasses.dataclass
class ZonePageblocks:
    """
    The pageblocks of one zone, counted (:func:`zone_pageblocks`, the ``pageblocks``
    command).  Blocks are those of :class:`ZoneBlocks`: the pfns ``zone_start_pfn + k *
    pageblock_nr_pages`` below the zone's end; every count is in pageblocks of
    2^pageblock_order pages except ``mixed_free_pages``.

    - ``node``, ``zone``: node id and zone name.
    - ``start_pfn``, ``end_pfn``: ``zone_start_pfn`` and ``zone_start_pfn +
      spanned_pages`` (exclusive).
    - ``pageblock_order``: ``pageblock_order`` (9 on the lab kernels).
    - ``counts``: migratetype name -> blocks of that migratetype
      (get_pageblock_migratetype(), MIGRATE_ISOLATE for 7.2's isolate bit), blocks
      without an online struct page left out, as /proc/pagetypeinfo's "Number of blocks
      type" counts them (mm/vmstat.c pagetypeinfo_showblockcount_print(); unlike it, a
      block whose page belongs to another zone with an overlapping span is counted).
    - ``skip``: blocks with the compaction skip bit set (mm/compaction.c
      set_pageblock_skip()).
    - ``isolate``: blocks isolated (7.2: PB_migrate_isolate; before: migratetype
      MIGRATE_ISOLATE).
    - ``mixed``: block migratetype name -> blocks holding free pages that are on
      another migratetype's free list.
    - ``mixed_free_pages``: pages in free blocks on a list other than their block's
      migratetype.
    - ``list_findings``: what the free-list walk found wrong with the lists themselves
      (:class:`~memscope.kernel.problem.Problem` records, counter mismatches left out;
      the JSON and the table print each as ``str()``).
    """

    node: int
    zone: str
    start_pfn: int
    end_pfn: int
    pageblock_order: int
    counts: dict[str, int]  # migratetype name -> blocks (pagetypeinfo's count)
    skip: int  # blocks with the compaction skip bit
    isolate: int  # blocks isolated
    mixed: dict[str, int]  # block migratetype -> blocks holding free pages of another list
    mixed_free_pages: int  # free pages on a list other than their block's type
    list_findings: list[Problem]


def zone_pageblocks(ctx: KernelContext) -> list[ZonePageblocks]:
    """
    Count the pageblocks of every populated zone (the counts of :func:`zone_blocks`).

    :param ctx: the context of the target
    :return: one :class:`ZonePageblocks` per populated zone, online nodes then
        ``node_zones[]`` order
    :raises TargetError: a type, member or enumerator is missing, or the memmap cannot be
        located (``mem_section``, SECTION_SIZE_BITS)
    :raises FaultError: a ``struct zone``, its ``free_area[]`` or a ``mem_section[]`` root
        cannot be read (an unreadable ``usage`` map leaves its blocks unknown instead)
    """
    po = pageblock_order(ctx)
    names = migratetype_names(ctx)
    out = []
    for z in ctx.all_zones():
        b = zone_blocks(ctx, z)
        counts = {names[i]: int(np.count_nonzero(b.migratetype == i))
                  for i in range(len(names))}
        mixed = {names[m]: n for m, n in b.mixed_by_type.items() if m < len(names)}
        out.append(ZonePageblocks(z.node, z.name, z.zone_start_pfn, z.end_pfn, po, counts,
                                  int(np.count_nonzero(b.skip)),
                                  int(np.count_nonzero(b.isolate)), mixed,
                                  b.mixed_free_pages, b.list_findings))
    return out


def format_blockcount(ctx: KernelContext, rows: list[ZonePageblocks]) -> str:
    """
    Print the "Number of blocks type" section of /proc/pagetypeinfo from ROWS' counts,
    byte for byte (:func:`format_blockcount_rows`), starting with its blank line.

    :param ctx: the context of the target (for ``migratetype_names[]``)
    :param rows: :func:`zone_pageblocks`'s records
    """
    return format_blockcount_rows(migratetype_names(ctx),
                                  [(r.node, r.zone, r.counts) for r in rows])


def format_blockcount_rows(names: list[str],
                           rows: list[tuple[int, str, dict[str, int]]]) -> str:
    """
    Print the "Number of blocks type" section of /proc/pagetypeinfo, byte for byte
    (mm/vmstat.c pagetypeinfo_showblockcount() and pagetypeinfo_showblockcount_print():
    a blank line, the header ``"%-23s"`` then ``"%12s "`` per migratetype, then per zone
    ``"Node %d, zone %8s "`` and ``"%12lu "`` per migratetype).

    :param names: ``migratetype_names[]``, in ``enum migratetype`` order
    :param rows: (node id, zone name, migratetype name -> pageblocks) per zone, in order
    :return: the text, ending with a newline
    """
    s = "\n%-23s" % "Number of blocks type "
    s += "".join("%12s " % n for n in names) + "\n"
    for node, zone, counts in rows:
        s += "Node %d, zone %8s " % (node, zone)
        s += "".join("%12lu " % counts[n] for n in names) + "\n"
    return s


__all__ = ["zone_blocks", "ZoneBlocks", "pageblock_migratetypes", "pageblock_order", "pageblock_bits", "zone_pageblocks",
           "free_lists", "format_blockcount", "format_blockcount_rows", "migratetype_names",
           "TargetError"]
