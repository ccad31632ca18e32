"""Every struct page classified: what each physical page is (include/linux/mm_types.h,
page-flags.h), counted per zone and listed per pfn.

The struct pages come from :mod:`memscope.mm.memmap` (read in bulk, section by section,
decoded into one numpy array per field) and the per-CPU lists from the one pcp walk of
:mod:`memscope.mm.freelists`.  Two ways to have them classified:

- :func:`pieces` streams the memmap in pieces of :data:`CHUNK_PAGES` pfns (one
  :class:`PageMap` per piece, each dropped before the next is decoded): memory bounded by
  one piece (~30 MiB) whatever the machine's size.  ``pages`` (:func:`scan`,
  :func:`zone_counts`) and the slab walk (``slabinfo --walk``, ``check``) read it so.
- :func:`memmap` decodes it whole, once per snapshot (~80 bytes a page, kept in the snapshot
  state of the :class:`~memscope.mm.context.KernelContext`), for the readers that look
  pages up by pfn (``pages --pfn``, ``whatis``, ``cma``); :func:`pieces` then hands it on
  as its one piece.

Both give every pfn the same class.  The names of
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
from typing import Iterator

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
    # The pfn of the first element of every array: 0 for the whole memmap (memmap()), a
    # piece's first pfn in the stream of pieces (scan()).
    start_pfn: int = 0

    @property
    def nr_pages(self) -> int:
        """The number of pfns the arrays cover (from ``start_pfn``)."""
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
                       tail: np.ndarray, after=None) -> np.ndarray | None:
    """Heads of hugetlb folios on kernels without PGTY_hugetlb (bool per pfn): a PG_head
    page whose next page is a tail with HUGETLB_PAGE_DTOR in compound_dtor (5.10-6.5) or
    PG_hugetlb in its flags (6.6-6.9).  None when the kernel has PGTY_hugetlb (the page
    type says it) or no marking memscope knows.  AFTER, when given, is a function
    returning the decoded struct page (field -> array of one) following the last of PAGES
    (a piece of the memmap: the last page's first tail is in the next piece), or None."""
    if pl.pagetype is not None and "PGTY_hugetlb" in pl.pagetype:
        return None
    if "dtor" in pages:
        def first_tail(p):
            return p["dtor"] == np.uint8(pl.hugetlb_dtor)
    elif pl.PG_hugetlb is not None:
        def first_tail(p):
            return _flag(p["flags"], pl.PG_hugetlb)
    else:
        return None
    out = np.zeros(len(is_head), bool)
    out[:-1] = is_head[:-1] & tail[1:] & first_tail({f: a[1:] for f, a in pages.items()})
    nxt = after() if after is not None and len(is_head) and is_head[-1] else None
    if nxt is not None:
        out[-1] = bool((nxt["compound"][0] & np.uint64(1)) and first_tail(nxt)[0])
    return out


#: :func:`scan` streams the memmap in pieces of this many pfns (whole sections, at least
#: one): 2^17 pfns (512 MiB of memory) is 8 MiB of struct pages on x86_64, about 30 MiB
#: with their decoded fields and the classification's arrays, whatever the machine's size.
CHUNK_PAGES = 1 << 17


@dataclasses.dataclass
class _Carry:
    """What one piece of the memmap hands to the next (:func:`_classify`): the last valid
    PG_head page seen and its class (a compound page's tails may begin the next piece,
    a gigantic page's may fill several), and how many buddy blocks cover each pfn from
    the piece's end on (a block is naturally aligned and never crosses a piece, but a
    corrupted one may)."""

    head_pfn: int = -1
    head_cls: int = 0
    cover: np.ndarray | None = None


def _deferred_spans(ctx: KernelContext) -> list[tuple[int, int]]:
    return [span for nid in ctx.node_ids()
            if (span := _zone.deferred_pfns(ctx, nid)) is not None]


def _build(ctx: KernelContext) -> PageMap:
    findings: list[Problem] = []
    pm, _ = _classify(ctx, 0, max_pfn(ctx), lambda: _pcp_pages(ctx, findings),
                      _deferred_spans(ctx), None)
    pm.pcp_findings = findings
    return pm


def _decoded(ctx: KernelContext, pl: PageLayout, vm: int, lo: int, hi: int,
             deferred: list[tuple[int, int]]):
    """_read_memmap of [LO, HI) with the struct pages the kernel has not initialised yet
    (early in boot) made holes, read as zeros."""
    pages, valid, unreadable = _read_memmap(ctx, pl, vm, hi, lo)
    for a, b in deferred:
        a, b = max(a, lo) - lo, min(b, hi) - lo
        if a < b:
            valid[a:b] = False
            for arr in pages.values():
                arr[a:b] = 0
    return pages, valid, unreadable


def _head_key(pl: PageLayout, pages: dict[str, np.ndarray], tcode: np.ndarray) -> np.ndarray:
    """The 8-bit key of :func:`_head_class_lut` of every page."""
    u8 = np.uint8
    flags, mapping = pages["flags"], pages["mapping"]
    key = tcode if pl.PG_slab is None else np.where(_flag(flags, pl.PG_slab), u8(T_SLAB), tcode)
    key = key | (_flag(flags, pl.PG_reserved).view(u8) << u8(3))
    key |= (mapping.view(u8)[::8] & u8(3)) << u8(4)
    key |= (mapping != 0).view(u8) << u8(6)
    key |= (pages["refcount"] == 0).view(u8) << u8(7)
    return key


def _lone_heads(ctx: KernelContext, pl: PageLayout, vm: int, pfns: list[int],
                deferred: list[tuple[int, int]]) -> dict[int, int | None]:
    """The class of each of PFNS as the head of a compound page (the table lookup alone),
    or None where it is no valid PG_head page: the heads that tails of a piece of the
    memmap name in an earlier piece other than the carried one (only a corrupted or
    changing memmap has them)."""
    out: dict[int, int | None] = {}
    for pfn in pfns:
        pages, valid, _ = _decoded(ctx, pl, vm, pfn, pfn + 1, deferred)
        if not valid[0] or not _flag(pages["flags"], pl.PG_head)[0]:
            out[pfn] = None
            continue
        out[pfn] = int(_HEAD_CLASS[_head_key(pl, pages, _type_codes(pl, pages["mapcount"]))][0])
    return out


def _classify(ctx: KernelContext, lo: int, hi: int, pcp, deferred: list[tuple[int, int]],
              carry: _Carry | None) -> tuple[PageMap, _Carry]:
    """Decode and classify the struct pages of pfns [LO, HI): the whole memmap (LO 0, HI
    max_pfn, CARRY None) or one piece of it in a stream of pieces (CARRY: what the
    previous piece handed on, a new :class:`_Carry` for the first).  PCP is a function
    returning the (pfns, orders) of every per-CPU list entry (:func:`_pcp_pages`).

    A stream of pieces gives every pfn the class, order, tail and inconsistency the whole
    memmap gives it: a buddy block's span, a compound page's head and a hugetlb head's
    first tail are looked up across the pieces' edges."""
    pl = page_layout(ctx)
    zones_ = zones(ctx)
    n = max_pfn(ctx)
    vm = vmemmap_base(ctx)
    m = hi - lo
    pages, valid, unreadable = _decoded(ctx, pl, vm, lo, hi, deferred)
    pt = pages["mapcount"]
    ref = pages["refcount"]
    comp = pages["compound"]
    u8 = np.uint8
    # Invalid pages are all zeros, so every test below is false on them unless it is a
    # "== 0" test; those pages become holes at the end whatever they were on the way.

    tail = (comp.view(u8)[::8] & u8(1)).view(bool)
    head = ~tail
    ref0 = ref == 0
    tcode = _type_codes(pl, pt)
    typed = tcode != T_NONE
    is_head = _flag(pages["flags"], pl.PG_head)
    after = None
    if carry is not None and hi < n:
        def after():
            p, v, _ = _decoded(ctx, pl, vm, hi, hi + 1, deferred)
            return p if v[0] else None
    hugetlb = _old_hugetlb_heads(pl, pages, is_head, tail, after)
    if hugetlb is not None:
        tcode = np.where(hugetlb, u8(T_HUGETLB), tcode)

    # Head pages: one table lookup on an 8-bit key (see _head_class_lut); tails "kernel"
    # until they take their head's class below.
    cls = np.where(tail, u8(C["kernel"]), _HEAD_CLASS[_head_key(pl, pages, tcode)])
    order = np.full(m, -1, np.int8)
    bad = np.zeros(m, bool)

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
    carry_out = _Carry()
    if carry is None:
        cover = _cover(m, bud, bo)
    else:  # a block may run past the piece (clipped at the memmap's end, as a whole)
        cover = _cover(min(hi + (1 << (ctx.nr_orders - 1)), n) - lo, bud, bo)
        if carry.cover is not None:
            cover[:len(carry.cover)] += carry.cover
        cover, carry_out.cover = cover[:m], cover[m:]
    covered = cover > 0

    # alloc_pages(order > 0) without __GFP_COMP: only the first page holds the reference;
    # the other pages of the block are blank with refcount 0.  A blank refcount-0 page
    # right after an allocated untyped page, inside the naturally aligned block that page
    # would head, is counted with it ("kernel") rather than as "free".  (A blank page is
    # exactly a head still classed "free" here.  Those inside a buddy block end as buddy
    # whatever happens here, unless they are PG_head and pass their class to tails.)  The
    # block is naturally aligned and at most 2^(NR_ORDERS-1) pages: within one piece.
    blank = np.flatnonzero((cls == C["free"]) & valid & (~covered | is_head))
    if len(blank):
        allocated = np.flatnonzero(valid & head & (ref > 0))
        k = np.searchsorted(allocated, blank) - 1
        ok = k >= 0
        last = np.where(ok, allocated[np.maximum(k, 0)], 0)
        dist = blank - last
        span = np.left_shift(1, np.ceil(np.log2(dist + 1.0)).astype(np.int64))
        ok &= (dist < (1 << (ctx.nr_orders - 1))) & ((last + lo) % span == 0) \
            & (cls[last] == C["kernel"])
        cls[blank[ok]] = C["kernel"]

    # Compound tails take their head's class (a head in an earlier piece: the carried one,
    # else read alone).
    tpfn = np.flatnonzero(tail)
    if len(tpfn):
        hp = compound_head_pfns(pl, vm, tpfn + lo, comp[tpfn]) - lo
        ok = (hp + lo >= 0) & (hp < tpfn) & (tpfn - hp < (1 << 20))
        inside = ok & (hp >= 0)
        hp_c = np.where(inside, hp, 0)
        hcls = cls[hp_c]
        ok = np.where(inside, valid[hp_c] & is_head[hp_c], ok)
        before = np.flatnonzero(ok & ~inside)
        if len(before):  # only in a stream of pieces (LO > 0)
            known = {carry.head_pfn: carry.head_cls} if carry.head_pfn >= 0 else {}
            other = sorted(set((hp[before] + lo).tolist()) - set(known))
            known.update(_lone_heads(ctx, pl, vm, other, deferred))
            for i in before.tolist():
                c = known[int(hp[i]) + lo]
                if c is None:
                    ok[i] = False
                else:
                    hcls[i] = c
        cls[tpfn[ok]] = hcls[ok]
        bad[tpfn[~ok]] = True
    if carry is not None:
        heads = np.flatnonzero(valid & is_head)
        if len(heads):
            carry_out.head_pfn, carry_out.head_cls = int(heads[-1]) + lo, int(cls[heads[-1]])
        else:
            carry_out.head_pfn, carry_out.head_cls = carry.head_pfn, carry.head_cls

    slab = cls == C["slab"]
    bad |= cover > 1
    inner = covered.copy()
    inner[bud] = False
    bad |= inner & (~ref0 | typed | tail)
    cls = np.where(covered, u8(C["buddy"]), cls)
    order[bud] = bo

    # Per-CPU lists (the entries of this piece; a block may start in an earlier one).
    pcp_pfns, pcp_orders = pcp()
    if carry is not None and len(pcp_pfns):
        sel = (pcp_pfns < hi) & (pcp_pfns + (np.int64(1) << pcp_orders) > lo)
        pcp_pfns, pcp_orders = pcp_pfns[sel] - lo, pcp_orders[sel]
    if len(pcp_pfns):
        first = pcp_pfns >= 0
        starts, so = pcp_pfns[first], pcp_orders[first]
        bad[starts[(cls[starts] == C["buddy"]) | (ref[starts] != 0)]] = True
        pc = _expand(m, pcp_pfns, pcp_orders)
        pc = pc[pc >= 0]
        pc = pc[cls[pc] != C["buddy"]]
        cls[pc] = C["pcp"]
        order[starts] = so

    zid = np.full(m, -1, np.int16)
    for i, z in enumerate(zones_):
        a, b = max(z.zone_start_pfn, lo), min(z.end_pfn, hi)
        if a < b:
            zid[a - lo:b - lo] = i
    cls = np.where(valid & (zid >= 0), cls, u8(C["hole"]))
    bad &= valid
    return PageMap(vm, pl.size, pages, valid, cls, order, tail, bad, zid, zones_,
                   [], unreadable, slab & valid & (zid >= 0), lo), carry_out


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
    Count the classified pages of every populated zone (the ``pages`` command), streaming
    the memmap in pieces (:func:`scan`: memory bounded whatever the machine's size).

    :param ctx: the context of the target
    :return: one :class:`ZonePages` per populated zone, online nodes then
        ``node_zones[]`` order
    :raises TargetError: a type, member or enumerator is missing, or the memmap cannot be
        located (``mem_section``, SECTION_SIZE_BITS, vmemmap)
    :raises FaultError: a ``struct zone`` or ``mem_section[]`` root cannot be read (an
        unreadable part of the memmap is holes instead)
    """
    return scan(ctx).rows


def pieces(ctx: KernelContext, chunk_pages: int = CHUNK_PAGES,
           findings: list[Problem] | None = None) -> Iterator[PageMap]:
    """
    The classified memmap as a stream of pieces, each a :class:`PageMap` of pfns
    [``start_pfn``, ``start_pfn + nr_pages``) in increasing order, covering [0,
    :func:`max_pfn`): memory bounded by one piece whatever the machine's size (the whole
    :func:`memmap` holds every page's decoded struct page at once, ~80 bytes a page).
    Every pfn gets the class, order, tail and inconsistency :func:`memmap` gives it.  When
    the snapshot's whole memmap is decoded already, it is the one piece.

    :param ctx: the context of the target
    :param chunk_pages: pfns per piece, rounded up to whole sections and to the largest
        buddy block (default :data:`CHUNK_PAGES`)
    :param findings: where the per-CPU list walk's problems are appended (each piece's
        ``pcp_findings`` is empty)
    :raises TargetError: as :func:`memmap`
    :raises FaultError: as :func:`memmap`
    """
    done = ctx.peek_snapshot("pagemap")
    if done is not None:
        if findings is not None:
            findings.extend(done.pcp_findings)
        yield done
        return
    n = max_pfn(ctx)
    unit = max(sections(ctx).pages_per_section, 1 << (ctx.nr_orders - 1))
    step = max(unit, (chunk_pages + unit - 1) // unit * unit)
    deferred = _deferred_spans(ctx)
    problems: list[Problem] = []
    walked: list[tuple[np.ndarray, np.ndarray]] = []

    def pcp():  # walked once, when the first piece needs it (as memmap() does)
        if not walked:
            walked.append(_pcp_pages(ctx, problems))
            if findings is not None:
                findings.extend(problems)
        return walked[0]

    carry = _Carry()
    for lo in range(0, n, step):
        pm, carry = _classify(ctx, lo, min(lo + step, n), pcp, deferred, carry)
        yield pm


@dataclasses.dataclass
class PageScan:
    """
    What ``pages`` reports, from one pass over the memmap's pieces (:func:`scan`).

    - ``rows``: one :class:`ZonePages` per populated zone (:func:`zone_counts`).
    - ``pcp_findings``: what the per-CPU list walk found wrong.
    - ``unreadable_pages``: struct pages of present sections that could not be read.
    - ``zones``: the zones, in ``rows``' order.
    - ``cls``: with ``classes=True``, the class code of every pfn (uint8, one byte a page:
      ``pages --png`` draws it), else None.
    """

    rows: list[ZonePages]
    pcp_findings: list[Problem]
    unreadable_pages: int
    zones: list[Zone]
    cls: np.ndarray | None = None


def scan(ctx: KernelContext, classes: bool = False,
         chunk_pages: int = CHUNK_PAGES) -> PageScan:
    """
    Count the classified pages of every populated zone, streaming the memmap in pieces
    (:func:`pieces`): peak memory is one piece's (about 30 MiB at the default
    :data:`CHUNK_PAGES`), plus one byte a page with ``classes``.

    :param ctx: the context of the target
    :param classes: also keep every pfn's class code (:attr:`PageScan.cls`)
    :param chunk_pages: pfns per piece (see :func:`pieces`)
    :return: a :class:`PageScan`
    :raises TargetError: as :func:`zone_counts`
    :raises FaultError: as :func:`zone_counts`
    """
    zones_ = zones(ctx)
    nz = len(zones_)
    counts = np.zeros((nz, len(CLASSES)), np.int64)
    blocks = np.zeros((nz, ctx.nr_orders), np.int64)
    tails = np.zeros(nz, np.int64)
    bad = np.zeros(nz, np.int64)
    findings: list[Problem] = []
    unreadable = 0
    kept = []
    for pm in pieces(ctx, chunk_pages, findings):
        unreadable += pm.unreadable_pages
        if classes:
            kept.append(pm.cls)
        # zone_id == i only inside the zone's span (a later, overlapping zone may own
        # part of it): count on that slice, masked only when it is not all ours.
        lo, hi = pm.start_pfn, pm.start_pfn + pm.nr_pages
        for i, z in enumerate(zones_):
            a, b = max(z.zone_start_pfn, lo) - lo, min(z.end_pfn, hi) - lo
            if a >= b:
                continue
            mine = pm.zone_id[a:b] == i
            whole = bool(mine.all())

            def part(x: np.ndarray) -> np.ndarray:
                return x[a:b] if whole else x[a:b][mine]

            cls = part(pm.cls)
            counts[i] += np.bincount(cls, minlength=len(CLASSES))
            order = part(pm.order)
            blocks[i] += np.bincount(order[(cls == C["buddy"]) & (order >= 0)],
                                     minlength=ctx.nr_orders)[:ctx.nr_orders]
            tails[i] += np.count_nonzero(part(pm.tail))
            bad[i] += np.count_nonzero(part(pm.inconsistent))
    rows = [ZonePages(z.node, z.name, z.zone_start_pfn, z.end_pfn,
                      {name: int(counts[i, k]) for k, name in enumerate(CLASSES)},
                      [int(x) for x in blocks[i]], int(counts[i, C["pcp"]]), int(tails[i]),
                      int(bad[i])) for i, z in enumerate(zones_)]
    cls_all = None
    if classes:
        cls_all = kept[0] if len(kept) == 1 else np.concatenate(kept)
    return PageScan(rows, findings, unreadable, zones_, cls_all)


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
