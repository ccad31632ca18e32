"""External fragmentation and allocation feasibility per zone and order (mm/vmstat.c,
mm/page_alloc.c).

- :func:`fill_contig_page_info`, :func:`unusable_free_index`, :func:`fragmentation_index`
  are mm/vmstat.c's functions of the same names, on ``free_area[order].nr_free``; results
  in thousandths, printed as /sys/kernel/debug/extfrag/{unusable_index,extfrag_index} do
  (``"%d.%03d"``).  A fragmentation index of -1000 ("-1.000") means the request would not
  fail for lack of a large enough block.
- :func:`zone_watermark_ok` is ``__zone_watermark_ok()``: free pages (the zone's
  NR_FREE_PAGES counter, clamped at 0 as zone_page_state() does) minus what the request may
  not use (:func:`__zone_watermark_unusable_free`: 2^order - 1, the highatomic reserve
  unless ALLOC_RESERVES (6.12+: its free pages ``nr_free_highatomic``; 5.10, 6.1: all of
  ``nr_reserved_highatomic``), free CMA pages unless ALLOC_CMA) must exceed the mark,
  lowered by a half for ALLOC_MIN_RESERVE (5.10: ALLOC_HIGH) and then a quarter for
  ALLOC_NON_BLOCK (5.10: ALLOC_HARDER), plus ``lowmem_reserve[highest_zoneidx]``; for
  order > 0 some free list of that order or above must also be non-empty (and its
  ``nr_free`` non-zero) for a migratetype below MIGRATE_PCPTYPES, or MIGRATE_CMA with
  ALLOC_CMA, or MIGRATE_HIGHATOMIC with ALLOC_HIGHATOMIC (5.10: ALLOC_HARDER).
- :func:`zone_watermark_fast` is ``zone_watermark_fast()`` with the mark
  ``wmark_pages()`` (``_watermark[] + watermark_boost``): the order-0 shortcut, then
  __zone_watermark_ok(), then for an order-0 GFP_ATOMIC request against the min mark the
  same check without the boost.

GFP classes (``--gfp``), as gfp_zone(), prepare_alloc_pages() and gfp_to_alloc_flags()
treat them in 5.10, 6.1, 6.12 and 7.2:

``kernel``   GFP_KERNEL: highest zone ZONE_NORMAL, no reserves, no CMA.
``movable``  GFP_HIGHUSER_MOVABLE: highest zone ZONE_MOVABLE, ALLOC_CMA (with CONFIG_CMA)
             on the fast path and the slow path alike (gfp_to_alloc_flags_cma(); 5.10:
             current_alloc_flags()).
``atomic``   GFP_ATOMIC (__GFP_HIGH, cannot sleep): the slow path adds ALLOC_MIN_RESERVE,
             ALLOC_NON_BLOCK and, for order > 0, ALLOC_HIGHATOMIC (5.10: ALLOC_HIGH and
             ALLOC_HARDER), and its order-0 check against the min mark ignores the boost.

"fast" is get_page_from_freelist()'s first try (WMARK_LOW, no reserve flags; the 6.12+
check against the high mark first only short-cuts what the low mark allows); "min" is the
slow path's first try, after waking kswapd and before any direct reclaim or compaction
(WMARK_MIN with the class's reserve flags).  An allocation "succeeds now" when either
passes.  Not modelled: ALLOC_OOM (OOM victims), ALLOC_NO_WATERMARKS (PF_MEMALLOC),
real-time tasks' ALLOC_MIN_RESERVE, cpusets, and the per-CPU drift correction
(zone_page_state_snapshot(), which reclaim uses and get_page_from_freelist() does not).

JSON records (``frag -f json``): a list of zones ``{"node", "zone", "free_pages_counter",
"watermarks": {"min", "low", "high", "boost"}, "lowmem_reserve": [...],
"highatomic": {"reserved", "free"}, "free_cma", "gfp", "largest_free_order", "orders":
[{"order", "nr_free", "free_pages", "unusable_index", "unusable", "extfrag_index",
"extfrag", "ok_fast", "ok_min", "succeeds"}]}``.
"""

from __future__ import annotations

import dataclasses

from ..target.base import TargetError
from . import vmstat
from .context import KernelContext
from .zone import Zone

GFP_CLASSES = ("kernel", "movable", "atomic")


@dataclasses.dataclass(frozen=True)
class ContigPageInfo:
    """
    mm/vmstat.c ``struct contig_page_info``, for one zone and one order: ``free_pages``
    (pages in every free block), ``free_blocks_total`` (free blocks of every order) and
    ``free_blocks_suitable`` (how many blocks of the requested order the free blocks of
    that order and above make).
    """

    free_pages: int
    free_blocks_total: int
    free_blocks_suitable: int


def fill_contig_page_info(nr_free: list[int], suitable_order: int) -> ContigPageInfo:
    """
    mm/vmstat.c fill_contig_page_info() on one zone's ``free_area[order].nr_free``.

    :param nr_free: free blocks per order
    :param suitable_order: the order of the request
    """
    free_pages = total = suitable = 0
    for order, blocks in enumerate(nr_free):
        total += blocks
        free_pages += blocks << order
        if order >= suitable_order:
            suitable += blocks << (order - suitable_order)
    return ContigPageInfo(free_pages, total, suitable)


def unusable_free_index(order: int, info: ContigPageInfo) -> int:
    """Thousandths of the free memory unusable for an allocation of ORDER (0 = none)."""
    if info.free_pages == 0:
        return 1000
    return (info.free_pages - (info.free_blocks_suitable << order)) * 1000 // info.free_pages


def fragmentation_index(order: int, info: ContigPageInfo, max_order: int) -> int:
    """__fragmentation_index(): towards 0 the request fails for lack of memory, towards 1000
    for fragmentation; -1000 if it would not fail."""
    requested = 1 << order
    if order > max_order:
        return 0
    if not info.free_blocks_total:
        return 0
    if info.free_blocks_suitable:
        return -1000
    return 1000 - (1000 + info.free_pages * 1000 // requested) // info.free_blocks_total


def fmt_index(v: int, width: int = 0) -> str:
    """``"%*d.%03d"`` of (v / 1000, v % 1000) with C's truncating division and remainder
    (-1000 prints "-1.000"; -500, possible in a zone with a single free block, "0.-500")."""
    q = int(v / 1000)
    r = v - q * 1000
    return f"{q:{width}d}.{r:03d}"


_PRETTY_EXTFRAG = b"%2d.%03d "


def extfrag_index_width(ctx: KernelContext) -> int:
    """The width extfrag_show_print() gives each index's whole part: 2 ("%2d.%03d ") since
    "mm: vmstat.c: make extfrag_index show more pretty" (v5.16), none ("%d.%03d ") before.
    A format string is in no debug info: it is looked for in the kernel's own read-only
    data (__start_rodata to __end_rodata), where the lab's 6.1, 6.12 and 7.2 kernels hold
    it once and 5.10 not at all."""
    return ctx.probe("extfrag_width", lambda: _extfrag_width(ctx.t))


def _extfrag_width(t) -> int:
    """Search the kernel's rodata for the 5.16+ format (see :func:`extfrag_index_width`)."""
    width = 0
    if t.has_symbol("__start_rodata") and t.has_symbol("__end_rodata"):
        start, end = t.symbol("__start_rodata"), t.symbol("__end_rodata")
        chunk, tail = 1 << 20, b""
        for addr in range(start, end, chunk):
            try:
                data = tail + t.read(addr, min(chunk, end - addr))
            except TargetError:
                tail = b""
                continue
            if _PRETTY_EXTFRAG in data:
                width = 2
                break
            tail = data[-(len(_PRETTY_EXTFRAG) - 1):]
    return width


@dataclasses.dataclass
class ZoneState:
    """What __zone_watermark_ok reads from one zone."""

    zone: Zone
    nr_free: list[int]
    list_nonempty: list[list[bool]]  # [order][migratetype]
    watermark: dict[str, int]  # min, low, high (without boost)
    boost: int
    lowmem_reserve: list[int]
    nr_reserved_highatomic: int
    nr_free_highatomic: int | None  # None: the kernel has no such counter (5.10, 6.1)
    free_pages: int  # zone_page_state(NR_FREE_PAGES), clamped at 0
    free_cma: int
    vm_stat_free_raw: int  # the atomic counter before clamping


def zone_state(ctx: KernelContext, z: Zone) -> ZoneState:
    t = ctx.t
    zl = ctx.zone_layout
    raw = t.read(z.address, zl.size)

    def u(off: int, size: int = 8, signed: bool = False) -> int:
        return int.from_bytes(raw[off:off + size], "little", signed=signed)

    fa = t.layout("struct free_area")
    nmt = fa["free_list"].array_length
    fa_base = zl.offset("free_area")
    nr_free, nonempty = [], []
    for o in range(ctx.nr_orders):
        b = fa_base + o * fa.size
        nr_free.append(u(b + fa.offset("nr_free")))
        row = []
        for mt in range(nmt):
            lo = b + fa.offset("free_list") + 16 * mt
            row.append(u(lo) != z.address + lo)  # list_empty(): next == head
        nonempty.append(row)
    wm = t.enum("enum zone_watermarks")
    wo = zl.offset("_watermark")
    watermark = {k: u(wo + 8 * wm[f"WMARK_{k.upper()}"]) for k in ("min", "low", "high")}
    boost = u(zl.offset("watermark_boost")) if zl.has("watermark_boost") else 0
    lr = zl["lowmem_reserve"]
    lowmem = [u(lr.offset + 8 * i, 8, True) for i in range(lr.array_length)]
    res_ha = u(zl.offset("nr_reserved_highatomic"))
    # nr_free_highatomic (the free pages of highatomic blocks) exists in the 6.12 and 7.2
    # lab kernels, not in 5.10 and 6.1, which subtract nr_reserved_highatomic instead.
    free_ha = u(zl.offset("nr_free_highatomic")) if zl.has("nr_free_highatomic") else None
    free_raw = vmstat.zone_page_state(ctx, raw, "NR_FREE_PAGES")
    cma = vmstat.zone_page_state(ctx, raw, "NR_FREE_CMA_PAGES") \
        if vmstat.has_zone_stat(ctx, "NR_FREE_CMA_PAGES") else 0
    return ZoneState(z, nr_free, nonempty, watermark, boost, lowmem, res_ha, free_ha,
                     max(free_raw, 0), max(cma, 0), free_raw)


@dataclasses.dataclass(frozen=True)
class AllocFlags:
    """The ``alloc_flags`` bits that __zone_watermark_ok() and zone_watermark_fast() read
    (mm/internal.h), under their 6.3+ names.

    "mm/page_alloc: rename ALLOC_HIGH to ALLOC_MIN_RESERVE" and the rest of that series
    (v6.3, in Debian's 6.1 too) replaced 5.10's ALLOC_HIGH/ALLOC_HARDER.  The one
    combination a ``--gfp`` class uses, GFP_ATOMIC's, decides the same under both: 5.10's
    ALLOC_HIGH|ALLOC_HARDER halves the mark, then takes a quarter off, skips the highatomic
    reserve and may use MIGRATE_HIGHATOMIC blocks, as ALLOC_MIN_RESERVE|ALLOC_NON_BLOCK
    (|ALLOC_HIGHATOMIC for order > 0) does.  ALLOC_OOM (an OOM victim's task, not a gfp
    class) is not modelled: 5.10 takes a half off instead of the quarter, 6.3+ a half more.
    """

    wmark: str  # ALLOC_WMARK_MIN / _LOW / _HIGH: "min", "low", "high"
    min_reserve: bool = False  # ALLOC_MIN_RESERVE (__GFP_HIGH; 5.10: ALLOC_HIGH)
    non_block: bool = False  # ALLOC_NON_BLOCK (5.10: ALLOC_HARDER, from __GFP_ATOMIC)
    highatomic: bool = False  # ALLOC_HIGHATOMIC (5.10: ALLOC_HARDER)
    cma: bool = False  # ALLOC_CMA

    @property
    def reserves(self) -> bool:
        """ALLOC_RESERVES (5.10: ALLOC_HARDER, the only reserve flag that skips the
        highatomic reserve; GFP_ATOMIC has it)."""
        return self.min_reserve or self.non_block or self.highatomic


def __zone_watermark_unusable_free(ctx: KernelContext, s: ZoneState, order: int,
                                   f: AllocFlags) -> int:
    """__zone_watermark_unusable_free(): the free pages request F may not count."""
    unusable = (1 << order) - 1
    if not f.reserves:
        # "mm/page_alloc: keep track of free highatomic" (commit c928807f6f6b, in 6.12)
        # subtracts the free pages of highatomic blocks (nr_free_highatomic) instead of
        # the whole reserve (nr_reserved_highatomic, 5.10 and 6.1).
        unusable += s.nr_free_highatomic if s.nr_free_highatomic is not None \
            else s.nr_reserved_highatomic
    if "MIGRATE_CMA" in ctx.migratetypes and not f.cma:  # #ifdef CONFIG_CMA
        unusable += s.free_cma
    return unusable


def zone_watermark_ok(ctx: KernelContext, s: ZoneState, order: int, mark: int, highest_zoneidx: int,
                      f: AllocFlags) -> bool:
    """__zone_watermark_ok(z, order, mark, highest_zoneidx, alloc_flags, free_pages) with
    free_pages = zone_page_state(z, NR_FREE_PAGES)."""
    mt = ctx.migratetypes
    free_pages = s.free_pages - __zone_watermark_unusable_free(ctx, s, order, f)
    mn = mark
    if f.min_reserve:
        mn -= mn // 2
        if f.non_block:
            mn -= mn // 4
    if free_pages <= mn + s.lowmem_reserve[highest_zoneidx]:
        return False
    if order == 0:
        return True
    pcptypes = mt.get("MIGRATE_PCPTYPES", 3)
    for o in range(order, ctx.nr_orders):
        if not s.nr_free[o]:
            continue
        row = s.list_nonempty[o]
        if any(row[m] for m in range(pcptypes)):
            return True
        if "MIGRATE_CMA" in mt and f.cma and row[mt["MIGRATE_CMA"]]:
            return True
        if f.highatomic and row[mt["MIGRATE_HIGHATOMIC"]]:
            return True
    return False


def zone_watermark_fast(ctx: KernelContext, s: ZoneState, order: int, highest_zoneidx: int,
                        f: AllocFlags) -> bool:
    """zone_watermark_fast(z, order, wmark_pages(z, f.wmark), highest_zoneidx, alloc_flags,
    gfp_mask), as get_page_from_freelist() calls it (the same in 5.10, 6.1, 6.12, 7.2)."""
    mark = s.watermark[f.wmark] + s.boost  # wmark_pages(): _watermark[] + watermark_boost
    if order == 0:
        # The order-0 shortcut: answers yes only where __zone_watermark_ok would too.
        usable_free = s.free_pages
        usable_free -= min(usable_free, __zone_watermark_unusable_free(ctx, s, 0, f))
        if usable_free > mark + s.lowmem_reserve[highest_zoneidx]:
            return True
    if zone_watermark_ok(ctx, s, order, mark, highest_zoneidx, f):
        return True
    # Boosting is ignored for order-0 GFP_ATOMIC checks against the min watermark.  The
    # kernel's condition is __GFP_ATOMIC in 5.10 and 6.1 and ALLOC_MIN_RESERVE (__GFP_HIGH)
    # since "mm: discard __GFP_ATOMIC" (v6.3); of the --gfp classes only "atomic" has either.
    if order == 0 and f.min_reserve and s.boost and f.wmark == "min":
        return zone_watermark_ok(ctx, s, 0, s.watermark["min"], highest_zoneidx, f)
    return False


def gfp_flags(ctx: KernelContext, gfp: str, order: int) -> tuple[int, AllocFlags, AllocFlags]:
    """(highest_zoneidx, fast-path flags, slow-path flags before reclaim) for GFP.

    Fast path: ``alloc_flags = ALLOC_WMARK_LOW`` in __alloc_pages(), plus ALLOC_CMA for a
    movable request from prepare_alloc_pages() (gfp_to_alloc_flags_cma(); 5.10:
    current_alloc_flags()).  Slow path: gfp_to_alloc_flags(gfp_mask, order)."""
    zt = ctx.t.enum("enum zone_type")
    cma = "MIGRATE_CMA" in ctx.migratetypes
    if gfp == "kernel":
        return zt["ZONE_NORMAL"], AllocFlags("low"), AllocFlags("min")
    if gfp == "movable":
        idx = zt.get("ZONE_MOVABLE", zt["ZONE_NORMAL"])
        return idx, AllocFlags("low", cma=cma), AllocFlags("min", cma=cma)
    if gfp == "atomic":
        return zt["ZONE_NORMAL"], AllocFlags("low"), AllocFlags(
            "min", min_reserve=True, non_block=True, highatomic=order > 0)
    raise TargetError(f"unknown gfp class {gfp!r} (kernel, movable, atomic)")


@dataclasses.dataclass
class OrderFrag:
    """
    One order of one zone in :class:`ZoneFrag`: its fragmentation and whether an
    allocation of that order would be granted now.

    - ``order``: the order (a request for 2^order pages).
    - ``nr_free``: ``free_area[order].nr_free`` (blocks); ``free_pages``: the pages they
      hold, ``nr_free << order``.
    - ``unusable_index``: mm/vmstat.c unusable_free_index(), in thousandths: the part of
      the zone's free pages in blocks too small for this order (0: none, 1000: all, or no
      free page at all).
    - ``extfrag_index``: mm/vmstat.c __fragmentation_index(), in thousandths: -1000 when
      a block of this order or larger is free (the request would not fail); otherwise
      towards 0 a failure would be for lack of memory, towards 1000 for fragmentation;
      negative values above -1000 are possible when few free blocks are left (a zone
      whose only free block has order ``order - 1`` gives -500); 0 when the zone has no
      free block.
    - ``unusable``, ``extfrag``: the same as the kernel prints them, ``"%d.%03d"`` of C's
      truncating quotient and remainder by 1000 (-1000 is "-1.000", -500 "0.-500");
      :func:`format_extfrag_index` pads the whole part as 5.16+ does.
    - ``ok_fast``: mm/page_alloc.c zone_watermark_fast() passes against the low mark
      (wmark_pages(): ``_watermark[WMARK_LOW]`` + boost) with the fast path's alloc
      flags (get_page_from_freelist()'s first try).
    - ``ok_min``: it passes against the min mark with the class's slow-path flags
      (gfp_to_alloc_flags(), before any reclaim or compaction).
    - ``succeeds``: ``ok_fast or ok_min``.
    """

    order: int
    nr_free: int
    free_pages: int
    unusable_index: int
    unusable: str
    extfrag_index: int
    extfrag: str
    ok_fast: bool
    ok_min: bool
    succeeds: bool


@dataclasses.dataclass
class ZoneFrag:
    """
    One zone of :func:`zone_frag` (the ``frag`` command), for one ``--gfp`` class; every
    counter in pages.

    - ``node``, ``zone``: node id and zone name.
    - ``free_pages_counter``: ``zone->vm_stat[NR_FREE_PAGES]`` as stored (signed, not
      clamped, CPUs' ``vm_stat_diff`` not folded in: unlike
      :attr:`memscope.mm.freelists.ZoneFreeLists.free_pages_counter`); the watermark
      checks use it clamped at 0, as zone_page_state() does.
    - ``watermarks``: ``{"min", "low", "high"}`` from ``zone->_watermark[WMARK_*]``
      (without the boost) and ``"boost"``: ``zone->watermark_boost`` (0 when the kernel
      has none); wmark_pages() is the mark plus the boost.
    - ``lowmem_reserve``: ``zone->lowmem_reserve[]``, one entry per zone type (the pages
      this zone keeps back from requests whose highest zone is that type).
    - ``highatomic``: ``{"reserved": zone->nr_reserved_highatomic, "free":
      zone->nr_free_highatomic}``; "free" is None on kernels without that counter
      (5.10, 6.1).
    - ``free_cma``: ``zone->vm_stat[NR_FREE_CMA_PAGES]`` clamped at 0 (0 without the
      item).
    - ``gfp``: the class the decisions are for (``"kernel"``, ``"movable"``,
      ``"atomic"``).
    - ``largest_free_order``: the highest order with a non-zero ``nr_free``, None when
      the zone has no free block.
    - ``orders``: one :class:`OrderFrag` per order, 0 to NR_PAGE_ORDERS - 1.
    """

    node: int
    zone: str
    free_pages_counter: int
    watermarks: dict[str, int]
    lowmem_reserve: list[int]
    highatomic: dict[str, int | None]
    free_cma: int
    gfp: str
    largest_free_order: int | None
    orders: list[OrderFrag]


def zone_frag(ctx: KernelContext, gfp: str = "kernel") -> list[ZoneFrag]:
    """
    Get the fragmentation indices and the allocation decisions of every populated zone
    and order, each zone read once (:func:`zone_state`).

    :param ctx: the context of the target
    :param gfp: one of :data:`GFP_CLASSES`: ``"kernel"``, ``"movable"``, ``"atomic"``
    :return: one :class:`ZoneFrag` per populated zone, online nodes then
        ``node_zones[]`` order
    :raises TargetError: *gfp* is not one of :data:`GFP_CLASSES` (raised at the first
        zone), or a type, member or enumerator is missing from the debug info
    :raises FaultError: a ``struct zone`` cannot be read
    """
    out = []
    max_order = ctx.nr_orders - 1
    for z in ctx.all_zones():
        s = zone_state(ctx, z)
        rows = []
        for o in range(ctx.nr_orders):
            info = fill_contig_page_info(s.nr_free, o)
            ui = unusable_free_index(o, info)
            fi = fragmentation_index(o, info, max_order)
            hz, fast, slow = gfp_flags(ctx, gfp, o)
            hz = min(hz, len(s.lowmem_reserve) - 1)
            ok_f = zone_watermark_fast(ctx, s, o, hz, fast)
            ok_m = zone_watermark_fast(ctx, s, o, hz, slow)
            rows.append(OrderFrag(o, s.nr_free[o], s.nr_free[o] << o, ui, fmt_index(ui), fi,
                                  fmt_index(fi), ok_f, ok_m, ok_f or ok_m))
        largest = max((o for o in range(ctx.nr_orders) if s.nr_free[o]), default=None)
        out.append(ZoneFrag(z.node, z.name, s.vm_stat_free_raw,
                            {**s.watermark, "boost": s.boost}, s.lowmem_reserve,
                            {"reserved": s.nr_reserved_highatomic,
                             "free": s.nr_free_highatomic}, s.free_cma, gfp, largest, rows))
    return out


def format_unusable_index(rows: list[ZoneFrag]) -> str:
    """
    Print ROWS as /sys/kernel/debug/extfrag/unusable_index (mm/vmstat.c
    unusable_show_print(): ``"%d.%03d "`` per order).
    """
    return "".join(f"Node {r.node}, zone {r.zone:>8} "
                   + "".join(f"{o.unusable} " for o in r.orders) + "\n" for r in rows)


def format_extfrag_index(rows: list[ZoneFrag], width: int = 0) -> str:
    """/sys/kernel/debug/extfrag/extfrag_index (mm/vmstat.c extfrag_show_print), the
    whole part printed WIDTH wide (:func:`extfrag_index_width`)."""
    return "".join(f"Node {r.node}, zone {r.zone:>8} "
                   + "".join(f"{fmt_index(o.extfrag_index, width)} " for o in r.orders)
                   + "\n" for r in rows)
