"""The Contiguous Memory Allocator: every CMA area, its bitmap, what the buddy allocator
holds of it, what occupies its free chunks, and whether ``cma_alloc()`` would succeed now
(mm/cma.c, mm/cma.h, mm/page_alloc.c alloc_contig_range(), mm/page_isolation.c).

Areas are ``cma_areas[0 .. cma_area_count)`` (mm/cma.c, every kernel with CONFIG_CMA).
A kernel without CONFIG_CMA has no ``cma_areas`` symbol (:func:`cma_areas` returns None).

Layouts, detected from the debug info:

- one range per area (5.10-6.13): ``struct cma { base_pfn, count, bitmap, order_per_bit,
  ..., name[CMA_MAX_NAME] }``; the bitmap exists once cma_activate_area() ran (NULL
  when activation failed: ``count`` is then 0 too);
- several ranges per area, since commit c009da4258f9 ("mm, cma: support multiple
  contiguous ranges, if requested", 2025; the series merged for v6.14, version not
  verified here): ``struct cma { count, available_count, order_per_bit, ..., name,
  nranges, ranges[CMA_MAX_RANGES], ..., flags, nid }`` with ``struct cma_memrange {
  base_pfn, count, union { early_pfn, bitmap } }``.  The union holds ``early_pfn`` until
  the area is activated: a range's bitmap is read only when ``flags`` has the bit
  ``CMA_ACTIVATED`` (``enum cma_flags``, read from the debug info).  The member that
  tells the two apart is ``struct cma.nranges``.

A bitmap has ``count >> order_per_bit`` bits (cma_bitmap_maxno()); bit N set means the
2^order_per_bit pages from ``base_pfn + (N << order_per_bit)`` were taken by cma_alloc()
(or, 6.14+, before activation: the pages below ``early_pfn``).  It is decoded in bulk
with numpy.

What the buddy allocator holds of an area comes from the one free-list walk
(:mod:`memscope.mm.freelists`): the pages of the blocks on the ``MIGRATE_CMA`` free lists
that lie inside the area (``buddy_free``: what NR_FREE_CMA_PAGES counts), those of blocks
on other lists (``buddy_free_other``: 0 unless a pageblock's type changed under its free
pages, e.g. isolated for an allocation in progress), and the pages on the per-CPU lists
(``pcp``), which NR_FREE_CMA_PAGES does not count.

What occupies each page comes from the classified memmap (:mod:`memscope.mm.page`); for
the free part of the bitmap, :data:`PAGE_KINDS` groups the page classes by what
alloc_contig_range() can do with them (see :func:`page_kinds`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from ..kernel.bitops import BITS_TO_LONGS
from ..target.base import FaultError, TargetError
from . import page as mpage
from . import vmstat
from .context import KernelContext
from .freelists import walker

#: include/linux/mm.h GUP_PIN_COUNTING_BIAS (a #define, absent from the debug info; 1 << 10
#: since pin_user_pages() came, v5.7): pin_user_pages() adds it to an order-0 page's
#: refcount; a large folio counts its pins in ``folio->_pincount`` instead.
GUP_PIN_COUNTING_BIAS = 1 << 10

#: include/linux/numa.h NUMA_NO_NODE
NUMA_NO_NODE = -1

#: What a page in the free part of an area is, for alloc_contig_range():
#: ``free``: nothing to do (buddy, pcp lists are drained, refcount 0);
#: ``movable``: migrated away (page cache, anonymous, hugetlb, non-LRU movable);
#: ``blocker``: migration fails and the allocation with it (pinned, slab, page tables,
#: reserved, kernel allocations, holes, offline and other typed pages).
PAGE_KINDS = ("free", "movable", "blocker")

#: The page classes (memscope.mm.page.CLASSES) of each kind, with "pinned" for an anon or
#: page cache page held by pin_user_pages() and "referenced" for one with references
#: migration does not expect (see :func:`page_kinds`).
FREE_CLASSES = ("buddy", "pcp", "free")
MOVABLE_CLASSES = ("anon", "pagecache", "hugetlb")


# --- records -----------------------------------------------------------------------------
@dataclasses.dataclass
class CmaRange:
    """
    One contiguous range of a CMA area (``struct cma`` itself before 6.14, a
    ``struct cma_memrange`` after).

    - ``base_pfn``: its first page frame number.
    - ``count``: its pages.
    - ``bits``: bits of its bitmap (``count >> order_per_bit``, cma_bitmap_maxno()).
    - ``allocated``: pages taken in the bitmap (set bits << order_per_bit).
    - ``free``: pages free in the bitmap (clear bits << order_per_bit).
    - ``maxchunk``: pages of the longest run of clear bits (debugfs ``maxchunk``,
      mm/cma_debug.c cma_maxchunk_get()).
    - ``bitmap``: the decoded bitmap, a bool numpy array of ``bits`` entries (True =
      taken), or None when the area was not activated (no bitmap to read).  Not part of
      the JSON form.
    """

    base_pfn: int
    count: int
    bits: int
    allocated: int
    free: int
    maxchunk: int
    bitmap: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def end_pfn(self) -> int:
        return self.base_pfn + self.count

    def to_json(self) -> dict:
        return {"base_pfn": self.base_pfn, "count": self.count, "bits": self.bits,
                "allocated": self.allocated, "free": self.free, "maxchunk": self.maxchunk}


@dataclasses.dataclass
class CmaArea:
    """
    One CMA area, ``cma_areas[index]`` (mm/cma.h ``struct cma``).  Pages are 4 KiB pages
    (the target's PAGE_SIZE).

    - ``index``, ``address``: its index in ``cma_areas[]`` and its address.
    - ``name``: ``cma->name`` ("reserved" for the default DMA area of ``cma=``).
    - ``nid``: ``cma->nid`` (6.14+, None before; -1 NUMA_NO_NODE when none was asked).
    - ``node``, ``zone``: the node and zone whose span holds the area's first page (None
      for an empty area).
    - ``count``: ``cma->count``, pages (0 when activation failed).
    - ``available_count``: ``cma->available_count`` (6.14+: pages not taken), else None.
    - ``order_per_bit``: one bitmap bit stands for 2^order_per_bit pages.
    - ``activated``: the bitmap is valid (6.14+: ``CMA_ACTIVATED`` in ``cma->flags``;
      before: ``cma->bitmap`` is not NULL).
    - ``ranges``: its :class:`CmaRange` records.
    - ``allocated``, ``free``: pages taken and free in the bitmaps, summed over ranges.
    - ``maxchunk``: the longest free run of any range, pages.
    - ``buddy_free``: pages of the free blocks on ``MIGRATE_CMA`` free lists inside the
      area (what NR_FREE_CMA_PAGES and /proc/pagetypeinfo's CMA column count).
    - ``buddy_free_other``: pages of free blocks inside the area on other free lists.
    - ``pcp``: pages on the per-CPU lists inside the area.
    """

    index: int
    address: int
    name: str
    nid: int | None
    node: int | None
    zone: str | None
    count: int
    available_count: int | None
    order_per_bit: int
    activated: bool
    ranges: list[CmaRange]
    allocated: int
    free: int
    maxchunk: int
    buddy_free: int = 0
    buddy_free_other: int = 0
    pcp: int = 0

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["ranges"] = [r.to_json() for r in self.ranges]
        return d


@dataclasses.dataclass
class CmaTotals:
    """
    The areas summed, beside the kernel's own counters (/proc/meminfo's CmaTotal and
    CmaFree).

    - ``areas``: ``cma_area_count``.
    - ``count``: pages of every area (sum of ``cma->count``).
    - ``totalcma_pages``: the kernel's ``totalcma_pages`` (CmaTotal, pages).
    - ``nr_free_cma_pages``: ``global_zone_page_state(NR_FREE_CMA_PAGES)`` (CmaFree, pages:
      the global counter, clamped at 0, per-CPU differences not folded in).
    - ``allocated``, ``free``: pages taken / free in the bitmaps.
    - ``buddy_free``, ``buddy_free_other``, ``pcp``: summed over the areas
      (:class:`CmaArea`).
    """

    areas: int
    count: int
    totalcma_pages: int
    nr_free_cma_pages: int
    allocated: int
    free: int
    buddy_free: int
    buddy_free_other: int
    pcp: int


# --- layout probes -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Layout:
    size: int  # sizeof(struct cma)
    multi: bool  # nranges / ranges[] (6.14+)
    offsets: dict  # struct cma member -> offset
    name_len: int
    range_size: int  # sizeof(struct cma_memrange) (multi only)
    range_offsets: dict  # cma_memrange member -> offset (multi only)
    max_ranges: int
    activated_bit: int | None  # enum cma_flags CMA_ACTIVATED (multi only)


def _layout(ctx: KernelContext) -> _Layout:
    def probe() -> _Layout:
        t = ctx.t
        lay = t.layout("struct cma")
        offs = {m: lay.offset(m) for m in ("count", "order_per_bit", "name")}
        name_len = lay["name"].array_length or 64
        # Multi-range areas: commit c009da4258f9 ("mm, cma: support multiple contiguous
        # ranges, if requested") moved base_pfn and bitmap into ranges[] of cma_memrange.
        if lay.has("nranges"):
            for m in ("available_count", "nranges", "ranges", "flags", "nid"):
                if lay.has(m):
                    offs[m] = lay.offset(m)
            rl = t.layout("struct cma_memrange")
            bit = t.enum("enum cma_flags").get("CMA_ACTIVATED")
            return _Layout(lay.size, True, offs, name_len, rl.size,
                           {m: rl.offset(m) for m in ("base_pfn", "count", "bitmap")},
                           lay["ranges"].array_length or 1, bit)
        offs.update(base_pfn=lay.offset("base_pfn"), bitmap=lay.offset("bitmap"))
        return _Layout(lay.size, False, offs, name_len, 0, {}, 1, None)

    return ctx.probe("cma.layout", probe)


def has_cma(ctx: KernelContext) -> bool:
    """Whether the kernel was built with CONFIG_CMA (it has ``cma_areas``)."""
    return ctx.probe("cma.has", lambda: ctx.t.has_symbol("cma_areas")
                     and ctx.t.has_symbol("cma_area_count"))


# --- reading the areas ---------------------------------------------------------------------
def _u(raw: bytes, off: int, size: int = 8, signed: bool = False) -> int:
    return int.from_bytes(raw[off:off + size], "little", signed=signed)


def decode_bitmap(raw: bytes, nbits: int) -> np.ndarray:
    """A kernel bitmap (``unsigned long`` words, little endian: bit N is bit N % 64 of
    word N / 64) as a bool array of NBITS entries, bit N at index N."""
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:nbits].astype(bool)


def clear_runs(bitmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of every run of clear bits (ends exclusive), in bit order."""
    d = np.diff(np.concatenate(([1], bitmap.view(np.int8), [1])).astype(np.int8))
    return np.flatnonzero(d == -1), np.flatnonzero(d == 1)


def _range(t, base: int, count: int, opb: int, bitmap_addr: int | None) -> CmaRange:
    nbits = count >> opb
    if bitmap_addr is None:
        return CmaRange(base, count, nbits, 0, 0, 0, None)
    raw = t.read(bitmap_addr, BITS_TO_LONGS(nbits) * 8) if nbits else b""
    bm = decode_bitmap(raw, nbits)
    taken = int(np.count_nonzero(bm))
    starts, ends = clear_runs(bm)
    longest = int((ends - starts).max()) if len(starts) else 0
    return CmaRange(base, count, nbits, taken << opb, (nbits - taken) << opb,
                    longest << opb, bm)


def _read_area(ctx: KernelContext, lay: _Layout, index: int, addr: int) -> CmaArea:
    t = ctx.t
    raw = t.read(addr, lay.size)
    o = lay.offsets
    count = _u(raw, o["count"])
    opb = _u(raw, o["order_per_bit"], 4)
    name = raw[o["name"]:o["name"] + lay.name_len].split(b"\0", 1)[0].decode(errors="replace")
    ranges: list[CmaRange] = []
    if lay.multi:
        flags = _u(raw, o["flags"]) if "flags" in o else 0
        activated = lay.activated_bit is not None and bool(flags >> lay.activated_bit & 1)
        nranges = _u(raw, o["nranges"], 4, signed=True)
        if not 0 <= nranges <= lay.max_ranges:
            raise TargetError(f"CMA area {name!r} at {addr:#x}: nranges {nranges} is not "
                              f"within 0-{lay.max_ranges}")
        ro = lay.range_offsets
        for r in range(nranges):
            off = o["ranges"] + r * lay.range_size
            ranges.append(_range(t, _u(raw, off + ro["base_pfn"]), _u(raw, off + ro["count"]),
                                 opb, _u(raw, off + ro["bitmap"]) if activated else None))
        available = _u(raw, o["available_count"]) if "available_count" in o else None
        nid = _u(raw, o["nid"], 4, signed=True) if "nid" in o else None
    else:
        bitmap = _u(raw, o["bitmap"])
        activated = bitmap != 0
        ranges.append(_range(t, _u(raw, o["base_pfn"]), count, opb,
                             bitmap if activated else None))
        available = nid = None
    node = zone = None
    for r in ranges:
        for z in ctx.all_zones():
            if r.count and z.zone_start_pfn <= r.base_pfn < z.end_pfn:
                node, zone = z.node, z.name
                break
        if node is not None:
            break
    return CmaArea(index, addr, name, nid, node, zone, count, available, opb, activated,
                   ranges, sum(r.allocated for r in ranges), sum(r.free for r in ranges),
                   max((r.maxchunk for r in ranges), default=0))


def _buddy_in_areas(ctx: KernelContext, areas: list[CmaArea]) -> None:
    """Fill in ``buddy_free``, ``buddy_free_other`` and ``pcp`` of AREAS from the one
    free-list and pcp walk of every zone that holds one of their ranges."""
    spans = [(a, r.base_pfn, r.end_pfn) for a in areas for r in a.ranges if r.count]
    if not spans:
        return
    w = walker(ctx)
    for z in ctx.all_zones():
        if not any(lo < z.end_pfn and z.zone_start_pfn < hi for _, lo, hi in spans):
            continue
        zl = w.zone(z, pcp=True)
        for a, lo, hi in spans:
            for b in zl.blocks:
                n = min(b.pfn + (1 << b.order), hi) - max(b.pfn, lo)
                if n > 0:
                    if b.migratetype == "CMA":
                        a.buddy_free += n
                    else:
                        a.buddy_free_other += n
            for pl in zl.pcp:
                for pfn in pl.pfns:
                    n = min(pfn + (1 << pl.order), hi) - max(pfn, lo)
                    if n > 0:
                        a.pcp += n


def cma_areas(ctx: KernelContext) -> list[CmaArea] | None:
    """
    Every CMA area, ``cma_areas[0 .. cma_area_count)``, with its bitmap decoded and what
    the buddy allocator holds of it (read once per snapshot).

    :param ctx: the context of the target
    :return: the :class:`CmaArea` records in ``cma_areas[]`` order (an empty list when the
        kernel has CMA but no area, e.g. x86_64 without ``cma=``); None when the kernel has
        no CONFIG_CMA (no ``cma_areas`` symbol)
    :raises TargetError: ``cma_area_count`` exceeds ``cma_areas[]``'s length, an area's
        ``nranges`` is out of range, or a type or member is missing
    :raises FaultError: an area or a bitmap cannot be read
    """
    if not has_cma(ctx):
        return None
    return ctx.snapshot("cma.areas", lambda: _read_areas(ctx))


def _read_areas(ctx: KernelContext) -> list[CmaArea]:
    t = ctx.t
    lay = _layout(ctx)
    base = t.symbol("cma_areas")
    n = t.read_u32(t.symbol("cma_area_count"))
    try:
        cap = t.array_length("cma_areas")  # MAX_CMA_AREAS
    except TargetError:
        cap = None
    if cap is not None and n > cap:
        raise TargetError(f"cma_area_count is {n} but cma_areas[] has {cap} entries")
    areas = [_read_area(ctx, lay, i, base + i * lay.size) for i in range(n)]
    _buddy_in_areas(ctx, areas)
    return areas


def totals(ctx: KernelContext, areas: list[CmaArea]) -> CmaTotals:
    """
    AREAS summed, with ``totalcma_pages`` (CmaTotal) and NR_FREE_CMA_PAGES (CmaFree) as
    the kernel counts them (mm/cma.c, mm/show_mem.c / fs/proc/meminfo.c).

    :raises TargetError: ``totalcma_pages`` or NR_FREE_CMA_PAGES is missing
    """
    t = ctx.t
    total = t.read_u64(t.symbol("totalcma_pages"))
    free = vmstat.global_zone_page_state(ctx, "NR_FREE_CMA_PAGES")
    return CmaTotals(len(areas), sum(a.count for a in areas), total, free,
                     sum(a.allocated for a in areas), sum(a.free for a in areas),
                     sum(a.buddy_free for a in areas), sum(a.buddy_free_other for a in areas),
                     sum(a.pcp for a in areas))


def find_area(areas: list[CmaArea], name: str) -> CmaArea | None:
    """The first area called NAME (the kernel does not keep names unique), or None."""
    return next((a for a in areas if a.name == name), None)


# --- what occupies the pages ---------------------------------------------------------------
def _pincount_offset(ctx: KernelContext) -> int | None:
    """Offset of ``folio->_pincount`` from the folio's head struct page (None when struct
    folio has none: before v6.0 a large page kept its pins in page[1]'s
    compound_pincount, which memscope does not read)."""

    def probe():
        try:
            fl = ctx.t.layout("struct folio")
        except TargetError:
            return None
        return fl.offset("_pincount") if fl.has("_pincount") else None

    return ctx.probe("cma.pincount", probe)


def page_kinds(ctx: KernelContext, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """
    What alloc_contig_range() can do with each page of pfns [LO, HI): (class codes, kind
    codes), two arrays of HI - LO entries.

    Class codes index :data:`PAGE_CLASSES`: ``memscope.mm.page.CLASSES`` plus
    :data:`PINNED`, an anon or page cache page held by pin_user_pages() (an order-0 page
    whose refcount is at least GUP_PIN_COUNTING_BIAS, or a large folio whose
    ``_pincount`` is not 0), and :data:`REFERENCED` (below), which migration cannot
    move.  Kind codes index
    :data:`PAGE_KINDS`:

    - ``free``: buddy (any list), pcp (alloc_contig_range() drains the per-CPU lists),
      refcount 0;
    - ``movable``: page cache and anonymous pages (LRU, migrated by
      __alloc_contig_migrate_range() after lru_add_drain_all()), hugetlb folios
      (isolate_or_dissolve_huge_folio()), non-LRU movable pages (``page->mapping`` with
      PAGE_MAPPING_MOVABLE alone: zsmalloc, balloon);
    - ``blocker``: everything else (pinned; ``referenced``: an order-0 anon or page cache
      page whose refcount exceeds what its mappings, the page cache, PG_private, the swap
      cache and the per-CPU LRU batches account for (:func:`lru_batch_refs`): someone
      holds it, a pipe after splice() for instance, and migration's reference check
      fails while they do; slab, page tables, large kmalloc, reserved,
      kernel allocations with no movable owner, offline and other typed pages, holes):
      migration fails with -EBUSY, and cma_alloc() tries the next candidate.

    :raises TargetError: as :func:`memscope.mm.page.zone_counts`
    """
    cls, kind = ctx.snapshot(f"cma.kinds.{lo}.{hi}", lambda: _page_kinds(ctx, lo, hi))
    return cls.copy(), kind.copy()


def _page_kinds(ctx: KernelContext, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    pm = mpage.memmap(ctx)
    C = mpage.C

    def field(a: np.ndarray, fill, dtype) -> np.ndarray:
        """A[LO:HI] of the memmap's pfn-indexed array, FILL past its end."""
        out = np.full(hi - lo, fill, dtype)
        top = min(hi, pm.nr_pages)
        if lo < top:
            out[:top - lo] = a[lo:top]
        return out

    cls = field(pm.cls, C["hole"], np.uint8)
    ref = field(pm.pages["refcount"], 0, np.int64)
    tail = field(pm.tail, False, bool)
    flags = field(pm.pages["flags"], 0, np.uint64)
    mapping = field(pm.pages["mapping"], 0, np.uint64)
    pl = mpage.page_layout(ctx)
    user = (cls == C["anon"]) | (cls == C["pagecache"])
    is_head = (flags >> np.uint64(pl.PG_head)) & np.uint64(1) == 1
    pinned = user & ~tail & ~is_head & (ref >= GUP_PIN_COUNTING_BIAS)
    off = _pincount_offset(ctx)
    heads = np.flatnonzero(user & is_head & ~tail)
    if off is not None and len(heads):
        pinned[heads[_pincounts(ctx, pm, lo, heads, off) > 0]] = True
        # a pinned folio's tails are pinned with it
        tpfn = np.flatnonzero(user & tail)
        if len(tpfn):
            hp = mpage.compound_head_pfns(pl, pm.vmemmap, tpfn + lo,
                                          pm.pages["compound"][tpfn + lo]) - lo
            ok = (hp >= 0) & (hp < len(pinned))
            pinned[tpfn[ok]] |= pinned[hp[ok]]
    cls[pinned] = PINNED
    extra = user & ~pinned & ~tail & ~is_head & (ref > _expected_refs(ctx, pl, lo, cls, flags,
                                                                     field))
    cls[extra] = REFERENCED
    kind = np.full(hi - lo, KIND["blocker"], np.uint8)
    for c in FREE_CLASSES:
        kind[cls == C[c]] = KIND["free"]
    for c in MOVABLE_CLASSES:
        kind[cls == C[c]] = KIND["movable"]
    nonlru = (cls == C["other"]) & (mapping & np.uint64(3) == mpage.PAGE_MAPPING_MOVABLE)
    kind[nonlru] = KIND["movable"]
    return cls, kind


def _pincounts(ctx: KernelContext, pm, lo: int, heads: np.ndarray, off: int) -> np.ndarray:
    """``folio->_pincount`` of the large folios whose heads are pfns LO + HEADS (one 4-byte
    read per head; an unreadable word counts as 0)."""
    t = ctx.t
    sz = pm.page_size_struct
    out = np.zeros(len(heads), np.int64)
    for i, h in enumerate((heads + lo).tolist()):
        try:
            out[i] = int.from_bytes(t.read(pm.vmemmap + h * sz + off, 4), "little",
                                    signed=True)
        except FaultError:
            out[i] = 0
    return out


#: The class codes of a pinned page and of a page with unexpected references (after
#: memscope.mm.page.CLASSES' codes).
PINNED = len(mpage.CLASSES)
REFERENCED = PINNED + 1
#: Names of the class codes of :func:`page_kinds`.
PAGE_CLASSES = (*mpage.CLASSES, "pinned", "referenced")


def _expected_refs(ctx: KernelContext, pl, lo: int, cls: np.ndarray, flags: np.ndarray,
                   field) -> np.ndarray:
    """The references an order-0 anon or page cache page holds when nothing but its
    owners use it: include/linux/mm.h folio_expected_ref_count() (one per page table
    mapping, one from the page cache, one for PG_private, one from the swap cache;
    mm/migrate.c's migration compares the count with it plus its own isolation
    reference), plus one per place in a per-CPU LRU batch (mm/swap.c ``cpu_fbatches``,
    mm/mlock.c ``mlock_fbatch``: folio_batch_add() holds a reference; alloc_contig_range()
    drains them first)."""
    C = mpage.C
    mapcount = field(mpage.memmap(ctx).pages["mapcount"], 0, np.int64)
    mapcount = np.where(mapcount >= 1 << 31, mapcount - (1 << 32), mapcount) + 1
    exp = np.maximum(mapcount, 0)
    cache = cls == C["pagecache"]

    def flag(name: str) -> np.ndarray:
        bit = pl.pageflags.get(name)
        if bit is None:
            return np.zeros(len(flags), bool)
        return (flags >> np.uint64(bit)) & np.uint64(1) == 1

    exp += cache  # the page cache's reference
    exp += cache & flag("PG_private")
    # folio_test_swapcache(): PG_swapcache (PG_owner_priv_1) on a swap-backed folio
    exp += flag("PG_swapbacked") & flag("PG_swapcache")
    batched = lru_batch_refs(ctx)
    if batched:
        idx = np.array(list(batched), np.int64) - lo
        cnt = np.array(list(batched.values()), np.int64)
        ok = (idx >= 0) & (idx < len(exp))
        np.add.at(exp, idx[ok], cnt[ok])
    return exp


def lru_batch_refs(ctx: KernelContext) -> dict[int, int]:
    """pfn -> references held by the per-CPU folio batches of every possible CPU: every
    ``struct folio_batch`` member of ``cpu_fbatches`` (mm/swap.c, 6.2+: lru_add,
    lru_deactivate_file, lru_deactivate, lru_lazyfree, lru_activate, lru_move_tail) and
    ``mlock_fbatch.fbatch`` (mm/mlock.c), ``folios[0 .. nr)`` each.  Empty on kernels
    without them (pagevecs before 6.2 are not read)."""
    return ctx.snapshot("cma.lru_batches", lambda: _read_batches(ctx))


def _read_batches(ctx: KernelContext) -> dict[int, int]:
    from ..kernel.percpu import per_cpu_ptrs

    t = ctx.t
    try:
        fb = t.layout("struct folio_batch")
    except TargetError:
        return {}
    nr_off, folios_off = fb.offset("nr"), fb.offset("folios")
    cap = fb["folios"].array_length or 0
    places = []  # (per-CPU variable, offset of a folio_batch in it)
    for var, typ in (("cpu_fbatches", "struct cpu_fbatches"),
                     ("mlock_fbatch", "struct mlock_fbatch")):
        if not t.has_symbol(var):
            continue
        try:
            lay = t.layout(typ)
        except TargetError:
            continue
        places += [(var, m.offset, lay.size) for m in lay.members.values()
                   if m.type_name == "struct folio_batch"]
    pm = mpage.memmap(ctx)
    out: dict[int, int] = {}
    for var, off, size in places:
        for _, base in per_cpu_ptrs(t, t.symbol(var)):
            try:
                raw = t.read(base + off, fb.size)
            except FaultError:
                continue
            n = min(raw[nr_off], cap)
            for i in range(n):
                folio = _u(raw, folios_off + 8 * i)
                pfn, rem = divmod(folio - pm.vmemmap, pm.page_size_struct)
                if not rem and 0 <= pfn < pm.nr_pages:
                    out[pfn] = out.get(pfn, 0) + 1
    return out
KIND = {k: i for i, k in enumerate(PAGE_KINDS)}


# --- the map -------------------------------------------------------------------------------
#: Chunk states of :func:`chunk_map`: taken in the bitmap; free in the bitmap and every
#: page free; some page movable (migration needed), none blocking; some page blocking.
CHUNK_STATES = ("taken", "free", "movable", "blocked")


@dataclasses.dataclass
class ChunkRun:
    """
    Consecutive chunks (2^order_per_bit pages each) of one range in the same state
    (:func:`chunk_map`).

    - ``start_pfn``, ``end_pfn``: pfns [start_pfn, end_pfn).
    - ``chunks``: how many chunks.
    - ``state``: one of :data:`CHUNK_STATES`: ``taken`` (bits set: cma_alloc() gave them
      out), ``free`` (bits clear, every page free in the buddy allocator, on a pcp list or
      at refcount 0), ``movable`` (bits clear, some pages in use but movable: page cache,
      anonymous, hugetlb), ``blocked`` (bits clear, some page would make
      alloc_contig_range() fail).
    - ``pages``: page class -> pages in the run (classes of :data:`PAGE_CLASSES`, only
      those present).
    - ``blockers``: for a blocked run, every blocking page as (pfn, class).
    """

    start_pfn: int
    end_pfn: int
    chunks: int
    state: str
    pages: dict[str, int]
    blockers: list[tuple[int, str]]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["blockers"] = [{"pfn": p, "class": c} for p, c in self.blockers]
        return d


def _chunk_states(area: CmaArea, r: CmaRange, kind: np.ndarray) -> np.ndarray:
    """State code (CHUNK_STATES) of every chunk of range R from the page kinds of its
    pages."""
    step = 1 << area.order_per_bit
    n = r.bits
    k = kind[:n * step].reshape(n, step) if n else np.zeros((0, step), np.uint8)
    state = np.where((k == KIND["blocker"]).any(1), 3,
                     np.where((k == KIND["movable"]).any(1), 2, 1)).astype(np.uint8)
    if r.bitmap is not None:
        state[r.bitmap] = 0
    return state


def chunk_map(ctx: KernelContext, area: CmaArea) -> list[ChunkRun]:
    """
    AREA chunk by chunk, consecutive chunks of the same state merged into runs.

    :param ctx: the context of the target
    :param area: an activated area (:func:`cma_areas`)
    :return: the :class:`ChunkRun` records of every range, in pfn order
    :raises TargetError: the area was not activated (no bitmap), or as
        :func:`page_kinds`
    """
    _need_bitmap(area)
    out: list[ChunkRun] = []
    step = 1 << area.order_per_bit
    for r in area.ranges:
        cls, kind = page_kinds(ctx, r.base_pfn, r.end_pfn)
        state = _chunk_states(area, r, kind)
        if not len(state):
            continue
        edges = np.flatnonzero(np.diff(state)) + 1
        starts = np.concatenate(([0], edges))
        ends = np.concatenate((edges, [len(state)]))
        for s, e in zip(starts.tolist(), ends.tolist()):
            lo, hi = s * step, e * step
            c = np.bincount(cls[lo:hi], minlength=len(PAGE_CLASSES))
            st = CHUNK_STATES[state[s]]
            blockers = []
            if st == "blocked":
                b = np.flatnonzero(kind[lo:hi] == KIND["blocker"])
                blockers = [(r.base_pfn + lo + int(i), PAGE_CLASSES[cls[lo + i]]) for i in b]
            out.append(ChunkRun(r.base_pfn + lo, r.base_pfn + hi, e - s, st,
                                {PAGE_CLASSES[i]: int(v) for i, v in enumerate(c) if v},
                                blockers))
    return out


def area_page_classes(ctx: KernelContext, area: CmaArea) -> list[tuple[int, np.ndarray]]:
    """(base_pfn, per-page class code) of every range of AREA, with the pages of taken
    chunks given the code ``len(PAGE_CLASSES)`` ("taken"), for pictures."""
    _need_bitmap(area)
    out = []
    step = 1 << area.order_per_bit
    for r in area.ranges:
        cls, _ = page_kinds(ctx, r.base_pfn, r.end_pfn)
        if r.bitmap is not None and r.bits:
            taken = np.repeat(r.bitmap, step)
            cls[:len(taken)][taken] = len(PAGE_CLASSES)
        out.append((r.base_pfn, cls))
    return out


def _need_bitmap(area: CmaArea) -> None:
    if not area.activated:
        raise TargetError(f"CMA area {area.name!r} was not activated: it has no bitmap")


# --- would cma_alloc() succeed? ------------------------------------------------------------
def cma_bitmap_aligned_mask(order_per_bit: int, align_order: int) -> int:
    """mm/cma.c cma_bitmap_aligned_mask(): bits of alignment, less one."""
    if align_order <= order_per_bit:
        return 0
    return (1 << (align_order - order_per_bit)) - 1


def cma_bitmap_aligned_offset(order_per_bit: int, base_pfn: int, align_order: int) -> int:
    """mm/cma.c cma_bitmap_aligned_offset(): the range's base pfn's misalignment, in bits."""
    return (base_pfn & ((1 << align_order) - 1)) >> order_per_bit


def cma_bitmap_pages_to_bits(order_per_bit: int, pages: int) -> int:
    """mm/cma.c cma_bitmap_pages_to_bits(): ALIGN(pages, 2^order_per_bit) >> order_per_bit."""
    step = 1 << order_per_bit
    return (pages + step - 1) // step


class _Bits:
    """find_next_zero_bit() / find_next_bit() on a decoded bitmap in O(1) per call."""

    def __init__(self, bitmap: np.ndarray):
        n = len(bitmap)
        idx = np.arange(n)
        # next_zero[i]: the first clear bit at or after i (n when none), next_set likewise
        self.next_zero = np.minimum.accumulate(np.where(~bitmap, idx, n)[::-1])[::-1]
        self.next_set = np.minimum.accumulate(np.where(bitmap, idx, n)[::-1])[::-1]
        self.n = n

    def find_next_zero_bit(self, size: int, start: int) -> int:
        return size if start >= size else min(int(self.next_zero[start]), size)

    def find_next_bit(self, size: int, start: int) -> int:
        return size if start >= size else min(int(self.next_set[start]), size)


def bitmap_find_next_zero_area_off(bits: _Bits, size: int, start: int, nr: int,
                                   align_mask: int, align_offset: int) -> int:
    """lib/bitmap.c bitmap_find_next_zero_area_off(): the first index at or after START of
    NR clear bits whose index + ALIGN_OFFSET is a multiple of ALIGN_MASK + 1; a value
    past SIZE - NR when there is none.  Bounded: every retry moves START forward."""
    while True:
        index = bits.find_next_zero_bit(size, start)
        index = ((index + align_offset + align_mask) & ~align_mask) - align_offset
        end = index + nr
        if end > size:
            return end
        i = bits.find_next_bit(end, index)
        if i < end:
            start = i + 1
            continue
        return index


@dataclasses.dataclass
class Candidate:
    """
    One place cma_alloc() tried and found busy (:func:`can_alloc`): pfns [start_pfn,
    end_pfn) of range ``range`` (bits free in the bitmap), with pages that make
    alloc_contig_range() fail there.  ``blocking`` counts them; ``blockers`` lists the
    first :data:`MAX_BLOCKERS` as (pfn, class).
    """

    range: int
    start_pfn: int
    end_pfn: int
    blocking: int
    blockers: list[tuple[int, str]]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["blockers"] = [{"pfn": p, "class": c} for p, c in self.blockers]
        return d


#: Blocking pages listed per busy candidate, and busy candidates listed per answer.
MAX_BLOCKERS = 16
MAX_CANDIDATES = 64


@dataclasses.dataclass
class CanAlloc:
    """
    Whether ``cma_alloc(area, count, align)`` would succeed now (:func:`can_alloc`).

    - ``area``, ``count`` (pages), ``align`` (an order, as cma_alloc() takes it).
    - ``ok``: it would succeed.
    - ``start_pfn``, ``end_pfn``: the pages it would take (None when not ok).
    - ``reason``: one sentence: why not, or where.
    - ``tried``: candidates tried in the kernel's order, the one that succeeds included
      (at most the bitmap's bits).
    - ``busy``: how many of them were busy; ``candidates``: the first
      :data:`MAX_CANDIDATES` busy ones, in order.
    - ``blocking_pages``: every page that blocked some candidate tried, as (pfn, class),
      in pfn order.
    """

    area: str
    count: int
    align: int
    ok: bool
    start_pfn: int | None
    end_pfn: int | None
    reason: str
    tried: int
    busy: int
    candidates: list[Candidate]
    blocking_pages: list[tuple[int, str]]

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["candidates"] = [c.to_json() for c in self.candidates]
        d["blocking_pages"] = [{"pfn": p, "class": c} for p, c in self.blocking_pages]
        return d


def candidates(area: CmaArea, r: CmaRange, count: int, align: int) -> Iterator[int]:
    """The bit numbers cma_alloc() tries in range R, in order (mm/cma.c
    cma_range_alloc(), 6.14+, or __cma_alloc() before): bitmap_find_next_zero_area_off()
    from START, then START = found + mask + 1 after a busy range."""
    if r.bitmap is None:
        return
    opb = area.order_per_bit
    mask = cma_bitmap_aligned_mask(opb, align)
    offset = cma_bitmap_aligned_offset(opb, r.base_pfn, align)
    maxno = r.bits
    nbits = cma_bitmap_pages_to_bits(opb, count)
    if nbits > maxno:
        return
    bits = _Bits(r.bitmap)
    start = 0
    while start < maxno:  # each try moves start past the last one: at most maxno tries
        no = bitmap_find_next_zero_area_off(bits, maxno, start, nbits, mask, offset)
        if no >= maxno:
            return
        yield no
        start = no + mask + 1


def can_alloc(ctx: KernelContext, area: CmaArea, count: int, align: int = 0) -> CanAlloc:
    """
    Would ``cma_alloc(area, count, align, ...)`` succeed now?  The kernel's own search:
    for each range in order, bitmap_find_next_zero_area_off() with cma_alloc()'s mask and
    offset gives a candidate; alloc_contig_range() on [pfn, pfn + count) succeeds when no
    page there is a blocker (:func:`page_kinds`: free pages are taken, movable ones
    migrated; CMA pageblocks always isolate, has_unmovable_pages() returns NULL for
    them); a busy candidate makes the search go on after it.  6.14+ stops at once when
    ``count`` exceeds ``cma->available_count``.

    Not modelled: a migration that fails for a transient reason the dump cannot show (a
    page under writeback that cannot wait), which the kernel retries.

    :param ctx: the context of the target
    :param area: an activated area (:func:`cma_areas`)
    :param count: pages (> 0)
    :param align: alignment order (cma_alloc()'s ``align``)
    :return: a :class:`CanAlloc`
    :raises TargetError: the area was not activated, or as :func:`page_kinds`
    """
    _need_bitmap(area)
    listed: list[Candidate] = []
    blocking: dict[int, str] = {}
    tried = busy = 0
    won = None
    why = ""
    if not area.count:
        why = "the area is empty (count 0)"
    elif area.available_count is not None and count > area.available_count:
        why = (f"{count} pages is more than the area's available_count "
               f"({area.available_count} pages)")
    else:
        for ri, r in enumerate(area.ranges):
            if r.bitmap is None or not r.bits:
                continue
            cls, kind = page_kinds(ctx, r.base_pfn, r.end_pfn)
            bad = np.flatnonzero(kind == KIND["blocker"])  # offsets in the range, sorted
            for no in candidates(area, r, count, align):
                tried += 1
                lo = no << area.order_per_bit
                hi = lo + count
                i, j = np.searchsorted(bad, [lo, hi])
                if i == j:
                    won = (r.base_pfn + lo, r.base_pfn + hi)
                    break
                busy += 1
                for k in bad[i:j].tolist():
                    blocking.setdefault(r.base_pfn + k, PAGE_CLASSES[cls[k]])
                if len(listed) < MAX_CANDIDATES:
                    listed.append(Candidate(
                        ri, r.base_pfn + lo, r.base_pfn + hi, int(j - i),
                        [(r.base_pfn + k, PAGE_CLASSES[cls[k]])
                         for k in bad[i:min(j, i + MAX_BLOCKERS)].tolist()]))
            if won:
                break
        if won is None:
            if not tried:
                why = (f"no run of {cma_bitmap_pages_to_bits(area.order_per_bit, count)} "
                       f"free bits aligned to 2^{align} pages in the bitmap (largest free "
                       f"run {area.maxchunk} pages)")
            else:
                why = (f"every one of the {tried} candidate ranges holds pages that cannot "
                       f"be migrated ({len(blocking)} such pages)")
    pages = sorted(blocking.items())
    if won is not None:
        return CanAlloc(area.name, count, align, True, won[0], won[1],
                        f"pfns {won[0]:#x}-{won[1] - 1:#x} after {busy} busy candidates",
                        tried, busy, listed, pages)
    return CanAlloc(area.name, count, align, False, None, None, why, tried, busy, listed,
                    pages)


__all__ = ["CHUNK_STATES", "CanAlloc", "Candidate", "ChunkRun", "CmaArea", "CmaRange",
           "CmaTotals", "GUP_PIN_COUNTING_BIAS", "MAX_BLOCKERS", "MAX_CANDIDATES", "PAGE_CLASSES", "PAGE_KINDS",
           "area_page_classes", "bitmap_find_next_zero_area_off", "can_alloc",
           "candidates", "chunk_map", "clear_runs", "cma_areas",
           "cma_bitmap_aligned_mask", "cma_bitmap_aligned_offset",
           "cma_bitmap_pages_to_bits", "decode_bitmap", "find_area", "has_cma",
           "page_kinds", "totals"]
