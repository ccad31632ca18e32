"""Every struct page classified: what each physical page is (include/linux/mm_types.h,
page-flags.h), counted per zone and listed per pfn.

The struct pages come from :mod:`memscope.mm.memmap` (the whole memmap read once, in bulk,
decoded into one numpy array per field) and the per-CPU lists from the one pcp walk of
:mod:`memscope.mm.freelists`.  The classified memmap (:class:`PageMap`, :func:`memmap`)
is kept in the snapshot state of the :class:`~memscope.mm.context.KernelContext` and
shared by ``pages``, ``pageblocks``, ``frag`` and whoever else needs pages.  The names of
the memmap plumbing (``page_layout``, ``sections``, ``vmemmap_base``...) and of the pcp
layout (``pcp_layout``, ``pindex_to_order``, ``pcp_set_up``) stay importable from here.

Classification (:func:`memmap`), in the order the decisions are taken:

``hole``        no struct page: the section is absent, or its memmap cannot be read, or the
                pfn lies outside every zone's span, or the kernel has not initialised the
                struct page yet (deferred memmap init, early in boot: mm/zone.py
                ``deferred_pfns``).
``buddy``       in a free buddy block: the first page is PageBuddy with its order in
                ``page->private``; the other 2^order - 1 pages of the block count as buddy
                too (only the first carries the type).
``pcp``         on a per-CPU free list (``zone->per_cpu_pageset`` / 5.10 ``zone->pageset``),
                with every page of a high-order pcp entry.
``slab``        PG_slab (to 6.9) or PGTY_slab (6.10+), tails included.
``kmalloc_large`` PGTY_large_kmalloc (7.2+; before 7.2 such pages carry no type and count
                as ``kernel``).
``pagetable``   PG_table / PGTY_table.
``hugetlb``     PGTY_hugetlb (6.10+); before, the first tail's compound_dtor is
                HUGETLB_PAGE_DTOR (5.10-6.5) or its flags have PG_hugetlb (6.6-6.9).
``offline``     PG_offline / PGTY_offline (balloon, memory hot-unplug).
``reserved``    PG_reserved (memblock reservations, the kernel image, holes inside a zone).
``anon``        ``page->mapping`` with PAGE_MAPPING_ANON (bit 0) set (KSM included).
``pagecache``   ``page->mapping`` a plain address_space pointer: file pages, shmem and
                tmpfs (the lab's workloads live in tmpfs, so this is /proc/meminfo's
                Cached, Shmem included).
``free``        refcount 0 but neither buddy nor pcp (being freed or allocated right now).
``kernel``      allocated (refcount > 0) with no visible owner: vmalloc backing, kernel
                stacks, per-CPU chunks, large kmalloc before 7.2, driver pages...  vmalloc and
                kernel stacks are not told apart from struct page alone.
``other``       other page types (guard, zsmalloc, unaccepted), non-LRU movable pages
                (mapping bit 1 without bit 0).

Compound tails take their head's class (so that a slab of order 3 counts 8 slab pages, as
/proc/meminfo's Slab does); :attr:`PageMap.tail` says which pages were tails.

A page is *inconsistent* when its struct page contradicts the rest: a tail whose head is
not PG_head, a buddy order out of range, buddy blocks that overlap, a pcp page that is
PageBuddy or referenced.  A frozen dump has none; a live target (``--qemu``, ``-k``)
changes under the read and reports them instead of failing.  This is a property of each
page (:attr:`PageMap.inconsistent`, counted per zone), kept beside its class; what the
walks find wrong with the lists themselves is :class:`~memscope.kernel.problem.Problem`
records (:attr:`PageMap.pcp_findings`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.problem import Problem
from ..target.base import TargetError
from .context import KernelContext
# The memmap plumbing and the one pcp walk, importable from here as before the split
# (memscope.mm.memmap, memscope.mm.freelists).
from .freelists import pcp_layout, pcp_set_up, pindex_to_order, walker  # noqa: F401
from .memmap import (FIELDS, OLD_PG_BUDDY, OLD_PG_OFFLINE, PAGE_TYPE_BASE,  # noqa: F401
                     SECTION_HAS_MEM_MAP, SECTION_IS_ONLINE, SECTION_MARKED_PRESENT,
                     SUBSECTION_SHIFT, PageField, PageLayout, Sections, _check_sections,
                     _read_memmap, _read_sections, compound_head_pfns, max_pfn,
                     page_is_buddy, page_layout, read_struct_pages, register_page_fields,
                     section_size_bits, section_size_bits_from_debuginfo, sections,
                     vmemmap_base, zones)
from . import zone as _zone
from .zone import Zone

#: The former name of :func:`memscope.mm.memmap.compound_head_pfns`.
_heads = compound_head_pfns

# Class codes (uint8) and names, in the order used for tables and maps.
CLASSES = ("hole", "buddy", "pcp", "slab", "kmalloc_large", "pagetable", "hugetlb", "offline",
           "reserved", "anon", "pagecache", "free", "kernel", "other")
C = {name: i for i, name in enumerate(CLASSES)}


PAGE_MAPPING_ANON = 0x1
PAGE_MAPPING_MOVABLE = 0x2


@dataclasses.dataclass
class PageMap:
    """The decoded memmap of pfns [0, nr_pages) and the classification of each page."""

    vmemmap: int
    page_size_struct: int
    # One contiguous array per decoded struct page field (memscope.mm.memmap
    # PageLayout.page_fields: "flags", "compound", "mapping", "index", "private",
    # "mapcount", "refcount", "dtor" where struct page has compound_dtor, and those of the
    # providers given to register_page_fields()), indexed by pfn; zeros where invalid.
    pages: dict[str, np.ndarray]
    valid: np.ndarray  # bool: a struct page was read
    cls: np.ndarray  # uint8 class code (CLASSES)
    order: np.ndarray  # int8: buddy/pcp order on the first page of a free block, else -1
    tail: np.ndarray  # bool: compound tail (class is its head's)
    inconsistent: np.ndarray  # bool
    zone_id: np.ndarray  # int16: index into zones, -1 outside every zone
    zones: list[Zone]
    # What the per-CPU list walk found wrong (memscope.mm.freelists.FreeListWalker.pcp).
    pcp_findings: list[Problem]
    unreadable_pages: int  # present in mem_section but the memmap read failed
    # bool: the page's own struct page says slab (PG_slab / PGTY_slab, a tail by its
    # head), even where a free block's span claims it (``cls`` then says buddy and
    # ``inconsistent`` is set): the slab walk trusts the slab's own word, the buddy check
    # reports the block.
    slab: np.ndarray | None = None

    @property
    def nr_pages(self) -> int:
        return len(self.cls)


def memmap(ctx: KernelContext) -> PageMap:
    """The decoded and classified memmap of the target, computed once per snapshot."""
    return ctx.snapshot("pagemap", lambda: _build(ctx))


def _zone_ids(zones: list[Zone], n: int) -> np.ndarray:
    zid = np.full(n, -1, np.int16)
    for i, z in enumerate(zones):
        zid[z.zone_start_pfn:min(z.end_pfn, n)] = i
    return zid


# Page type codes of _type_codes(), in increasing precedence (a later one wins when a
# page_type word matches several, which only the old bit encoding allows).
T_NONE, T_OTHER, T_OFFLINE, T_TABLE, T_HUGETLB, T_KMALLOC, T_SLAB = range(7)
_T_CLASS = {T_OTHER: "other", T_OFFLINE: "offline", T_TABLE: "pagetable",
            T_HUGETLB: "hugetlb", T_KMALLOC: "kmalloc_large", T_SLAB: "slab"}
_T_PGTY = ((T_OFFLINE, "PGTY_offline"), (T_TABLE, "PGTY_table"), (T_HUGETLB, "PGTY_hugetlb"),
           (T_KMALLOC, "PGTY_large_kmalloc"), (T_SLAB, "PGTY_slab"))


def _type_codes(pl: PageLayout, pt: np.ndarray) -> np.ndarray:
    """T_* code of every page_type word (uint8; T_NONE when the word is a mapcount)."""
    if pl.pagetype is not None:
        # 6.10+: the type is the top byte: a 256-entry table on that byte (little endian).
        lut = np.zeros(256, np.uint8)
        top = np.arange(256, dtype=np.uint32) << np.uint32(24)
        lut[pl.has_type(top)] = T_OTHER
        for code, name in _T_PGTY:
            if name in pl.pagetype:
                lut[pl.pagetype[name] & 0xFF] = code
        return lut[pt.view(np.uint8)[3::4]]
    codes = np.where(pl.has_type(pt), np.uint8(T_OTHER), np.uint8(T_NONE))
    for code, sel in ((T_OFFLINE, pl.is_offline(pt)), (T_TABLE, pl.is_table(pt))):
        codes[sel] = code
    return codes


def _head_class_lut() -> np.ndarray:
    """The class of an untyped-or-typed head page from an 8-bit key: bits 0-2 the T_* code,
    bit 3 PG_reserved, bits 4-5 page->mapping & 3, bit 6 mapping != 0, bit 7 refcount 0.

    The decisions, from the least to the most specific (a later one wins): refcount 0 is
    free; a plain mapping is page cache; PAGE_MAPPING_ANON is anon; PAGE_MAPPING_MOVABLE
    alone is other; PG_reserved; then the page type."""
    lut = np.empty(256, np.uint8)
    for key in range(256):
        tcode, res, low2, mnz, ref0 = key & 7, key >> 3 & 1, key >> 4 & 3, key >> 6 & 1, key >> 7
        c = C["kernel"]
        if ref0:
            c = C["free"]
        if mnz and not low2 & (PAGE_MAPPING_ANON | PAGE_MAPPING_MOVABLE):
            c = C["pagecache"]
        if low2 & PAGE_MAPPING_ANON:
            c = C["anon"]
        elif low2 & PAGE_MAPPING_MOVABLE:
            c = C["other"]
        if res:
            c = C["reserved"]
        if tcode in _T_CLASS:
            c = C[_T_CLASS[tcode]]
        lut[key] = c
    return lut


_HEAD_CLASS = _head_class_lut()


def _flag(flags: np.ndarray, bit: int | None) -> np.ndarray:
    """Bit BIT of every flags word, as a bool array (reads the one byte that holds it)."""
    if bit is None:
        return np.zeros(len(flags), bool)
    return (flags.view(np.uint8)[bit >> 3::8] & np.uint8(1 << (bit & 7))) != 0


def _old_hugetlb_heads(pl: PageLayout, pages: dict[str, np.ndarray], is_head: np.ndarray,
                       tail: np.ndarray) -> np.ndarray | None:
    """Heads of hugetlb folios on kernels without PGTY_hugetlb (bool per pfn): a PG_head
    page whose next page is a tail with HUGETLB_PAGE_DTOR in compound_dtor (5.10-6.5) or
    PG_hugetlb in its flags (6.6-6.9).  None when the kernel has PGTY_hugetlb (the page
    type says it) or no marking memscope knows."""
    if pl.pagetype is not None and "PGTY_hugetlb" in pl.pagetype:
        return None
    if "dtor" in pages:
        first_tail = pages["dtor"][1:] == np.uint8(pl.hugetlb_dtor)
    elif pl.PG_hugetlb is not None:
        first_tail = _flag(pages["flags"][1:], pl.PG_hugetlb)
    else:
        return None
    out = np.zeros(len(is_head), bool)
    out[:-1] = is_head[:-1] & tail[1:] & first_tail
    return out


def _build(ctx: KernelContext) -> PageMap:
    pl = page_layout(ctx)
    zones_ = zones(ctx)
    n = max_pfn(ctx)
    vm = vmemmap_base(ctx)
    pages, valid, unreadable = read_struct_pages(ctx)
    for nid in ctx.node_ids():
        # struct pages not initialised yet (early in boot) are holes, read as zeros
        span = _zone.deferred_pfns(ctx, nid)
        if span is not None:
            valid[span[0]:span[1]] = False
            for a in pages.values():
                a[span[0]:span[1]] = 0
    flags = pages["flags"]
    pt = pages["mapcount"]
    ref = pages["refcount"]
    mapping = pages["mapping"]
    comp = pages["compound"]
    u8 = np.uint8
    # Invalid pages are all zeros, so every test below is false on them unless it is a
    # "== 0" test; those pages become holes at the end whatever they were on the way.

    tail = (comp.view(u8)[::8] & u8(1)).view(bool)
    head = ~tail
    ref0 = ref == 0
    tcode = _type_codes(pl, pt)
    typed = tcode != T_NONE
    is_head = _flag(flags, pl.PG_head)
    hugetlb = _old_hugetlb_heads(pl, pages, is_head, tail)
    if hugetlb is not None:
        tcode = np.where(hugetlb, u8(T_HUGETLB), tcode)

    # Head pages: one table lookup on an 8-bit key (see _head_class_lut); tails "kernel"
    # until they take their head's class below.
    key = tcode if pl.PG_slab is None else np.where(_flag(flags, pl.PG_slab), u8(T_SLAB), tcode)
    key = key | (_flag(flags, pl.PG_reserved).view(u8) << u8(3))
    key |= (mapping.view(u8)[::8] & u8(3)) << u8(4)
    key |= (mapping != 0).view(u8) << u8(6)
    key |= ref0.view(u8) << u8(7)
    cls = np.where(tail, u8(C["kernel"]), _HEAD_CLASS[key])
    order = np.full(n, -1, np.int8)
    bad = np.zeros(n, bool)

    # Buddy blocks: the first page is PageBuddy with the order in private.  Computed first
    # (it reads no class) so that the blank-page grouping below can skip their pages.
    if pl.pagetype is not None and "PGTY_buddy" in pl.pagetype:  # the top byte alone
        is_buddy = pt.view(u8)[3::4] == u8(pl.pagetype["PGTY_buddy"] & 0xFF)
    else:
        is_buddy = pl.is_buddy(pt)
    bud = np.flatnonzero(head & is_buddy)
    bo = pages["private"][bud]
    good = bo < ctx.nr_orders
    bad[bud[~good]] = True
    bud, bo = bud[good], bo[good].astype(np.int64)
    cover = _cover(n, bud, bo)
    covered = cover > 0

    # alloc_pages(order > 0) without __GFP_COMP: only the first page holds the reference;
    # the other pages of the block are blank with refcount 0.  A blank refcount-0 page
    # right after an allocated untyped page, inside the naturally aligned block that page
    # would head, is counted with it ("kernel") rather than as "free".  (A blank page is
    # exactly a head still classed "free" here.  Those inside a buddy block end as buddy
    # whatever happens here, unless they are PG_head and pass their class to tails.)
    blank = np.flatnonzero((cls == C["free"]) & valid & (~covered | is_head))
    if len(blank):
        allocated = np.flatnonzero(valid & head & (ref > 0))
        k = np.searchsorted(allocated, blank) - 1
        ok = k >= 0
        last = np.where(ok, allocated[np.maximum(k, 0)], 0)
        dist = blank - last
        span = np.left_shift(1, np.ceil(np.log2(dist + 1.0)).astype(np.int64))
        ok &= (dist < (1 << (ctx.nr_orders - 1))) & (last % span == 0) & (cls[last] == C["kernel"])
        cls[blank[ok]] = C["kernel"]

    # Compound tails take their head's class.
    tpfn = np.flatnonzero(tail)
    if len(tpfn):
        hp = compound_head_pfns(pl, vm, tpfn, comp[tpfn])
        ok = (hp >= 0) & (hp < tpfn) & (tpfn - hp < (1 << 20))
        hp_c = np.where(ok, hp, 0)
        ok &= valid[hp_c] & is_head[hp_c]
        cls[tpfn[ok]] = cls[hp_c[ok]]
        bad[tpfn[~ok]] = True

    slab = cls == C["slab"]
    bad |= cover > 1
    inner = covered.copy()
    inner[bud] = False
    bad |= inner & (~ref0 | typed | tail)
    cls = np.where(covered, u8(C["buddy"]), cls)
    order[bud] = bo

    # Per-CPU lists.
    findings: list[Problem] = []
    pcp_pfns, pcp_orders = _pcp_pages(ctx, findings)
    if len(pcp_pfns):
        bad[pcp_pfns[(cls[pcp_pfns] == C["buddy"]) | (ref[pcp_pfns] != 0)]] = True
        pc = _expand(n, pcp_pfns, pcp_orders)
        pc = pc[cls[pc] != C["buddy"]]
        cls[pc] = C["pcp"]
        order[pcp_pfns] = pcp_orders

    zid = _zone_ids(zones_, n)
    cls = np.where(valid & (zid >= 0), cls, u8(C["hole"]))
    bad &= valid
    return PageMap(vm, pl.size, pages, valid, cls, order, tail, bad, zid, zones_,
                   findings, unreadable, slab & valid & (zid >= 0))


def _cover(n: int, starts: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """How many blocks [start, start + 2^order) cover each pfn."""
    d = np.zeros(n + 1, np.int32)
    ends = np.minimum(starts + (1 << orders), n)
    np.add.at(d, starts, 1)
    np.add.at(d, ends, -1)
    return np.cumsum(d[:-1], dtype=np.int32)


def _expand(n: int, starts: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Every pfn of the blocks [start, start + 2^order) (clipped to n; repeats kept)."""
    lens = np.maximum(np.minimum(starts + (1 << orders), n) - starts, 0)
    total = int(lens.sum())
    first = np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + (np.arange(total) - first)


# --- per-CPU page lists --------------------------------------------------------------
def _pcp_pages(ctx: KernelContext, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """(pfns, orders) of every page block on every per-CPU list of every zone, walked by
    the one pcp walk (:meth:`memscope.mm.freelists.FreeListWalker.pcp`: bounded, cycle
    and link checked); its problems are appended to PROBLEMS."""
    w = walker(ctx)
    pfns: list[int] = []
    orders: list[int] = []
    for z in zones(ctx):
        lists, _ = w.pcp(z, problems)
        for pl in lists:
            pfns += pl.pfns
            orders += [pl.order] * len(pl.pfns)
    return np.array(pfns, np.int64), np.array(orders, np.int64)


# --- records -------------------------------------------------------------------------
@dataclasses.dataclass
class ZonePages:
    """
    The pages of one zone by class (:func:`zone_counts`, the ``pages`` command).

    Pages are counted over the zone's span, pfns [``start_pfn``, ``end_pfn``); where
    spans overlap (ZONE_MOVABLE, interleaved nodes) a pfn counts for the later zone in
    node and ``node_zones[]`` order only.

    - ``node``, ``zone``: node id and zone name.
    - ``start_pfn``, ``end_pfn``: ``zone->zone_start_pfn`` and ``zone_start_pfn +
      spanned_pages`` (exclusive).
    - ``counts``: class -> pages, every class of :data:`CLASSES` present (0 when none);
      they add up to the pfns of the span the zone owns, holes included.
    - ``buddy_blocks``: free buddy blocks per order (one entry per ``free_area[]``
      element), counted from the memmap (first pages that are PageBuddy with the order in
      ``page->private``), not from the lists.
    - ``pcp_pages``: pages on the per-CPU lists (``counts["pcp"]``).
    - ``compound_tails``: pages that are tails of a compound page (whatever their class).
    - ``inconsistent``: pages whose struct page contradicts the others (see the module's
      documentation; 0 on a frozen dump).
    """

    node: int
    zone: str
    start_pfn: int
    end_pfn: int
    counts: dict[str, int]  # class -> pages
    buddy_blocks: list[int]  # free buddy blocks per order (first pages found)
    pcp_pages: int
    compound_tails: int
    inconsistent: int


def zone_counts(ctx: KernelContext) -> list[ZonePages]:
    """
    Count the classified pages of every populated zone (the ``pages`` command).

    :param ctx: the context of the target (the memmap is decoded once per context)
    :return: one :class:`ZonePages` per populated zone, online nodes then
        ``node_zones[]`` order
    :raises TargetError: a type, member or enumerator is missing, or the memmap cannot be
        located (``mem_section``, SECTION_SIZE_BITS, vmemmap)
    :raises FaultError: a ``struct zone`` or ``mem_section[]`` root cannot be read (an
        unreadable part of the memmap is holes instead)
    """
    pm = memmap(ctx)
    n = pm.nr_pages
    out = []
    for i, z in enumerate(pm.zones):
        # zone_id == i only inside the zone's span (a later, overlapping zone may own part
        # of it): count on that slice, masked only when it is not all ours.
        lo, hi = min(z.zone_start_pfn, n), min(z.end_pfn, n)
        mine = pm.zone_id[lo:hi] == i
        whole = bool(mine.all())

        def part(a: np.ndarray) -> np.ndarray:
            return a[lo:hi] if whole else a[lo:hi][mine]

        cls = part(pm.cls)
        c = np.bincount(cls, minlength=len(CLASSES))
        order = part(pm.order)
        bo = order[(cls == C["buddy"]) & (order >= 0)]
        out.append(ZonePages(
            z.node, z.name, z.zone_start_pfn, z.end_pfn,
            {name: int(c[i2]) for i2, name in enumerate(CLASSES)},
            [int(x) for x in np.bincount(bo, minlength=ctx.nr_orders)],
            int(c[C["pcp"]]), int(np.count_nonzero(part(pm.tail))),
            int(np.count_nonzero(part(pm.inconsistent)))))
    return out


def flag_names(pl: PageLayout, flags: int) -> list[str]:
    """
    Name the set bits of a ``page->flags`` word from ``enum pageflags``
    (include/linux/page-flags.h), without the ``PG_`` prefix; of the enumerators that
    share a bit (aliases such as PG_owner_priv_1 / PG_checked) the first in the enum is
    used.

    :param pl: the probed struct page layout
    :param flags: the flags word (callers pass its low 32 bits: the zone, node and
        section numbers live in the top bits)
    :return: names in bit order, e.g. ``["uptodate", "lru", "head"]``
    """
    by_bit: dict[int, str] = {}
    for name, bit in pl.pageflags.items():
        by_bit.setdefault(bit, name)
    return [by_bit[b][3:] for b in sorted(by_bit) if flags >> b & 1]


@dataclasses.dataclass
class PageRecord:
    """
    One page's ``struct page`` decoded and classified (:func:`page_records`, ``pages
    --pfn``).

    - ``pfn``: the page frame number.
    - ``cls``: its class, a name of :data:`CLASSES` (the module's documentation says how
      it is decided); ``"hole"`` when there is no readable struct page or the pfn lies
      outside every zone.
    - ``flags``: the set ``page->flags`` bits below bit 32 (``flags.f`` on 7.2) of this
      struct page itself (a tail's word is not its head's), by :func:`flag_names`.
    - ``order``: the order of the free block this page starts (buddy: ``page->private``
      of a PageBuddy page; pcp: the list's order), else None.
    - ``refcount``: ``page->_refcount`` (signed 32-bit).
    - ``mapcount``: ``page->_mapcount + 1`` (0 for a page mapped nowhere), the raw word of
      this page alone; None when the word holds a page type instead.
    - ``page_type``: the type held in the ``_mapcount`` / ``page_type`` word, without
      prefix: 6.10+ the ``enum pagetype`` name without ``PGTY_`` ("buddy", "slab",
      "table", "hugetlb", ...); 5.10-6.9 "buddy", "offline" or "table"; a hex number for
      a type memscope does not know; None when the word is a mapcount.
    - ``mapping``: ``page->mapping`` as stored (bit 0 PAGE_MAPPING_ANON, bit 1
      PAGE_MAPPING_MOVABLE).
    - ``index``: ``page->index`` (7.x ``__folio_index``).
    - ``private``: ``page->private``.
    - ``head_pfn``: for a compound tail, its head's pfn (from ``compound_head``, 7.x
      ``compound_info``), else None.
    - ``inconsistent``: the struct page contradicts the others (see the module's
      documentation).

    A pfn without a readable struct page has every other field empty: ``flags=[]``,
    ``refcount=0``, ``mapping=index=private=0``, the rest None or False.
    """

    pfn: int
    cls: str
    flags: list[str]
    order: int | None
    refcount: int
    mapcount: int | None  # None when page_type holds a type
    page_type: str | None
    mapping: int
    index: int
    private: int
    head_pfn: int | None
    inconsistent: bool


def page_records(ctx: KernelContext, lo: int, hi: int) -> list[PageRecord]:
    """
    Get the pages of pfns [*lo*, *hi*) as records (``pages --pfn``).

    :param ctx: the context of the target (the memmap is decoded once per context)
    :param lo: first pfn (``lo >= 0``)
    :param hi: end pfn, exclusive (``hi <= max_pfn``, the end of the last zone's span)
    :return: one :class:`PageRecord` per pfn, in pfn order
    :raises TargetError: a range that is empty, starts below 0 or ends past the last pfn
        (the message says the memory's extent), or as :func:`zone_counts`
    :raises FaultError: as :func:`zone_counts`
    """
    pm = memmap(ctx)
    pl = page_layout(ctx)
    if not 0 <= lo < hi <= pm.nr_pages:
        raise TargetError(f"pfns {lo:#x}-{hi - 1:#x} are not within this kernel's memory "
                          f"(pfn 0-{pm.nr_pages - 1:#x})")
    out = []
    typenames = {v: k[5:] for k, v in (pl.pagetype or {}).items()}
    for pfn in range(lo, hi):
        if not pm.valid[pfn]:
            out.append(PageRecord(pfn, "hole", [], None, 0, None, None, 0, 0, 0, None, False))
            continue
        p = {f: a[pfn] for f, a in pm.pages.items()}
        ptv = int(p["mapcount"])
        typed = bool(pl.has_type(ptv))
        if typed:
            if pl.pagetype is not None:
                tname = typenames.get(ptv >> 24, f"{ptv >> 24:#x}")
            else:
                tname = next((nm for nm, f in (("buddy", pl.is_buddy), ("offline", pl.is_offline),
                                               ("table", pl.is_table)) if f(ptv)), f"{ptv:#x}")
        head = None
        if pm.tail[pfn]:
            head = int(compound_head_pfns(pl, pm.vmemmap, np.array([pfn]),
                              np.array([p["compound"]], np.uint64))[0])
        o = int(pm.order[pfn])
        out.append(PageRecord(
            pfn, CLASSES[pm.cls[pfn]], flag_names(pl, int(p["flags"]) & ((1 << 32) - 1)),
            o if o >= 0 else None, int(p["refcount"]),
            None if typed else ptv - (1 << 32) + 1 if ptv >= 1 << 31 else ptv + 1,
            tname if typed else None, int(p["mapping"]), int(p["index"]), int(p["private"]),
            head, bool(pm.inconsistent[pfn])))
    return out
