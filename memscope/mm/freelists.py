"""The buddy allocator's lists, walked: ``zone->free_area[order].free_list[migratetype]``
and the per-CPU page lists (mm/page_alloc.c, include/linux/mmzone.h).

Every walk is bounded and detects cycles, so that a corrupted dump or a live target that
changes under the read yields *problems* (records), never an exception or a hang:

- a free list is walked at most ``min(spanned_pages >> order, 2 * nr_free + 1024) + 1``
  entries (the zone cannot hold more blocks of that order; a wrong ``nr_free`` still leaves
  room to find the real length), a pcp list at most ``2 * pcp->count + 1024``;
- a visited set per list stops a cycle at the first repeated entry;
- an entry that is not a ``struct page`` of the memmap (``vmemmap + pfn * sizeof(struct
  page)``, pfn below the end of the last zone), or cannot be read, ends the walk;
- a list gives up after :data:`MAX_PROBLEMS_PER_LIST` problems (on a live target a walk
  that wandered onto another list finds non-buddy pages at once).

The walk is :func:`memscope.kernel.list.list_for_each` (cycle, bound, ``prev`` links, the
head's ``prev``), fed with struct pages from the memmap read in bulk pieces
(:meth:`FreeListWalker.walk`).  There is one per-CPU list walk
(:meth:`FreeListWalker.pcp`), which the page classification (:mod:`memscope.mm.page`)
uses too.  Problems are :class:`memscope.kernel.problem.Problem` records with ``node``
and ``zone`` filled in (kinds: :data:`PROBLEM_KINDS`); :func:`check` sums them up.

Layout probes (each names the kernel change it follows):

- free-list link: ``page->buddy_list`` (6.1+, commit bf75f200569d "mm/page_alloc: add
  page->buddy_list and page->pcp_list") or ``page->lru`` (5.10); both alias the same word.
- pcp lists: ``zone->per_cpu_pageset`` (struct per_cpu_pages, 5.14+, commit 28f836b6777b)
  with ``lists[NR_PCP_LISTS]`` indexed by ``order_to_pindex()`` and linked through
  ``page->pcp_list``; 5.10 ``zone->pageset`` (struct per_cpu_pageset {.pcp}) with
  ``lists[MIGRATE_PCPTYPES]`` of order-0 pages linked through ``page->lru``.
- PageBuddy: see :meth:`memscope.mm.memmap.PageLayout.is_buddy` (enum pagetype's PGTY_buddy
  in 6.10+, the PAGE_TYPE_BASE/PG_buddy mask before).
"""

from __future__ import annotations

import collections
import dataclasses
import struct
from functools import cached_property
from typing import Callable

from ..kernel.list import BadEntry, list_for_each
from ..kernel.percpu import per_cpu_ptrs
from ..kernel.problem import MAX_PROBLEMS, Problem, ProblemSink
from ..target.base import FaultError, TargetError
from . import vmstat
from .context import KernelContext
from .memmap import page_layout, vmemmap_base
from .zone import Zone

#: A list walk stops after this many problems (the rest of the list cannot be trusted).
MAX_PROBLEMS_PER_LIST = MAX_PROBLEMS

#: /proc/pagetypeinfo stops counting a list at this many entries and prints ">100000"
#: (mm/vmstat.c pagetypeinfo_showfree_print(), since v5.4 commit 93b3a674485f).
PAGETYPEINFO_CAP = 100000

_MASK64 = (1 << 64) - 1
_LINK = struct.Struct("<QQ")  # struct list_head {next, prev}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: The walks cache the memmap in pieces of this many bytes (see FreeListWalker._page).
REGION = 64 << 10
#: ... and keep at most this many pieces (32 MiB), the first read dropped first: memory
#: bounded whatever the machine's size (a 4 GiB guest's walks use a few dozen pieces).
MAX_REGIONS = 512

#: The kinds of :class:`~memscope.kernel.problem.Problem` the walks and checks of this
#: module report (the records carry ``node`` and ``zone``; ``where`` is the list or
#: counter, e.g. ``"free_area[3].free_list[Movable]"``, ``"cpu 1 pcp lists[4]"``,
#: ``"free_area[3]"``, ``"vm_stat[NR_FREE_PAGES]"``):
#: ``cycle`` (an entry comes back: the list never returns to its head),
#: ``outside_memory`` (a link that is not a struct page's list link in the memmap),
#: ``unreadable`` (a list head, struct page or per_cpu_pages cannot be read),
#: ``broken_link`` (an entry's ``prev`` is not the previous entry, or the head's ``prev``
#: not the last one), ``not_buddy`` (a free-list entry that is not PageBuddy),
#: ``wrong_order`` (``page->private`` is not the list's order), ``misaligned`` (pfn not a
#: multiple of 2^order), ``outside_zone`` (pfn outside the zone's span), ``cross_linked``
#: (a block also found on another list), ``too_long`` (the walk hit its bound),
#: ``gave_up`` (16 problems on one list: the rest is not walked), ``nr_free_mismatch``
#: (``free_area[order].nr_free`` differs from the blocks walked),
#: ``free_pages_counter_mismatch`` (NR_FREE_PAGES differs from the pages walked),
#: ``pcp_count_mismatch`` (``pcp->count`` differs from the pages on that CPU's lists),
#: ``missing_page`` (:func:`check`: a page the dump left out that a walk needed).
PROBLEM_KINDS = ("cycle", "outside_memory", "unreadable", "broken_link", "not_buddy",
                 "wrong_order", "misaligned", "outside_zone", "cross_linked", "too_long",
                 "gave_up", "nr_free_mismatch", "free_pages_counter_mismatch",
                 "pcp_count_mismatch", "missing_page")


class _CallbackSink(ProblemSink):
    """A sink that hands each problem to PROBLEM(kind, message) (the former interface of
    :meth:`FreeListWalker.walk`)."""

    def __init__(self, problem: Callable[[str, str], None]):
        super().__init__([], "")
        self._problem = problem

    def add(self, kind: str, message: str) -> None:
        self._problem(kind, message)


@dataclasses.dataclass(frozen=True)
class FreeBlock:
    """
    One free buddy block: 2^order pages from ``pfn`` on a zone's
    ``free_area[order].free_list[migratetype]`` (include/linux/mmzone.h).

    - ``node``, ``zone``: node id and zone name.
    - ``order``: the list's order (the block is 2^order pages).
    - ``migratetype``: the list it is on (the kernel's ``migratetype_names[]``), which
      can differ from its pageblock's migratetype.
    - ``pfn``: the block's first page frame number.
    """

    node: int
    zone: str
    order: int
    migratetype: str  # the list it is on (migratetype_names[])
    pfn: int


@dataclasses.dataclass(frozen=True)
class PcpList:
    """
    One per-CPU page list of a zone: ``pcp->lists[index]`` of CPU ``cpu``
    (``struct per_cpu_pages``, include/linux/mmzone.h), its blocks' first pfns in list
    order.

    - ``node``, ``zone``: node id and zone name.
    - ``cpu``: the CPU id (every possible CPU is walked).
    - ``index``: the index in ``pcp->lists[]`` (mm/page_alloc.c order_to_pindex()).
    - ``order``: the order of every block on the list (pindex_to_order(); 0 on 5.10).
    - ``migratetype``: a migratetype name; for the THP lists of order HPAGE_PMD_ORDER
      (6.1+) ``"Movable"`` and ``"Non-movable"``, or ``"any"`` where the kernel has one
      THP list.
    - ``pfns``: the first pfn of each block, in list order (each block is 2^order pages).
    """

    node: int
    zone: str
    cpu: int
    index: int  # index in pcp->lists[] (pindex)
    order: int
    migratetype: str  # a migratetype name, or "Non-movable" for the 6.x THP list
    pfns: list[int]


@dataclasses.dataclass
class ZoneFreeLists:
    """
    Everything walked in one zone (:func:`freelists`).

    - ``node``, ``zone``: node id and zone name.
    - ``nr_free``: ``free_area[order].nr_free`` per order, as read (blocks).
    - ``walked``: ``[order][migratetype]`` entries found on each free list (blocks;
      migratetype by ``enum migratetype`` value).
    - ``blocks``: every :class:`FreeBlock` found, by order, then migratetype, then list
      order.
    - ``pcp``: every :class:`PcpList`, by CPU then list index (empty without pcp).
    - ``pcp_count``: cpu -> ``pcp->count`` (pages; empty without pcp).
    - ``free_pages_counter``: ``zone_page_state_snapshot(zone, NR_FREE_PAGES)``
      (include/linux/vmstat.h): ``zone->vm_stat[NR_FREE_PAGES]`` plus every possible
      CPU's ``vm_stat_diff[NR_FREE_PAGES]``, in pages, not clamped; None when the kernel
      has no NR_FREE_PAGES enumerator or the counters cannot be read.
    - ``problems``: the :class:`Problem` records of this zone.
    """

    node: int
    zone: str
    nr_free: list[int]  # free_area[order].nr_free, as read
    walked: list[list[int]]  # [order][migratetype] entries found on the list
    blocks: list[FreeBlock]
    pcp: list[PcpList]
    pcp_count: dict[int, int]  # cpu -> pcp->count (pages)
    free_pages_counter: int | None  # NR_FREE_PAGES: vm_stat + per-CPU vm_stat_diff
    problems: list[Problem]


#: How many times a CPU's pcp lists are read before their problems are believed: a
#: reading with problems followed by one without was a list moving under the read.
PCP_READS = 3


class FreeListWalker:
    """The walks of one snapshot (:func:`walker`): the layouts they need, and the memmap
    pieces read so far (:meth:`_page`), shared by the free-list walks, the pcp walk and
    pagetypeinfo's counts."""

    def __init__(self, ctx: KernelContext):
        self.ctx = ctx
        self.t = ctx.t
        t = self.t
        self.pl = page_layout(ctx)
        page = t.layout("struct page")
        self.page_size = page.size
        # 6.1+: buddy_list / pcp_list alias lru (commit bf75f200569d); 5.10: lru.
        self.buddy_link = page.offset("buddy_list") if page.has("buddy_list") else page.offset("lru")
        self.pcp_link = page.offset("pcp_list") if page.has("pcp_list") else page.offset("lru")
        self.private_off = page.offset("private")
        self.page_type_off = page.offset("page_type") if page.has("page_type") \
            else page.offset("_mapcount")
        fa = t.layout("struct free_area")
        self.fa_size = fa.size
        self.fa_list_off = fa.offset("free_list")
        self.fa_nr_free_off = fa.offset("nr_free")
        self.nr_lists = fa["free_list"].array_length
        self.zone_fa_off = ctx.zone_layout.offset("free_area")
        # Bulk-read memmap pieces (see _page), and PageBuddy per page_type word.
        self._per_region = max(1, REGION // self.page_size)
        self._regions: dict[int, bytes] = {}
        self._misses: dict[int, int] = {}
        self._bad_regions: set[int] = set()
        self._buddy_types: dict[int, bool] = {}

    def _is_buddy(self, page_type: int) -> bool:
        b = self._buddy_types.get(page_type)
        if b is None:
            b = self._buddy_types[page_type] = bool(self.pl.is_buddy(page_type))
        return b

    @cached_property
    def vmemmap(self) -> int:
        return vmemmap_base(self.ctx)

    @cached_property
    def end_pfn(self) -> int:
        return max(z.end_pfn for z in self.ctx.all_zones(populated_only=False))

    @cached_property
    def migratetype_names(self) -> list[str]:
        """migratetype_names[MIGRATE_TYPES], read from the kernel (which entries exist
        depends on CONFIG_CMA / CONFIG_MEMORY_ISOLATION and, from 7.x, on nothing: the
        enum always has CMA)."""
        t = self.t
        n = self.ctx.migratetypes["MIGRATE_TYPES"]
        try:
            base = t.symbol("migratetype_names")
            ptrs = struct.unpack(f"<{n}Q", t.read(base, 8 * n))
            return [t.read_cstr(p, 32) for p in ptrs]
        except TargetError:
            # Fall back to the enumerators: MIGRATE_HIGHATOMIC -> "HighAtomic"...
            names = {"UNMOVABLE": "Unmovable", "MOVABLE": "Movable",
                     "RECLAIMABLE": "Reclaimable", "HIGHATOMIC": "HighAtomic", "CMA": "CMA",
                     "ISOLATE": "Isolate"}
            by_val = {}
            for k, v in self.ctx.migratetypes.items():
                k = k.removeprefix("MIGRATE_")
                if k in names and v < n:
                    by_val.setdefault(v, names[k])
            return [by_val.get(i, str(i)) for i in range(n)]

    @cached_property
    def isolate(self) -> int | None:
        return self.ctx.migratetypes.get("MIGRATE_ISOLATE")

    def page_to_pfn(self, page: int) -> int | None:
        pfn, rem = divmod((page - self.vmemmap) & _MASK64, self.page_size)
        if rem or pfn >= self.end_pfn:
            return None
        return pfn

    def free_list_head(self, zone: Zone, order: int, mt: int) -> int:
        return (zone.address + self.zone_fa_off + order * self.fa_size + self.fa_list_off
                + 16 * mt)

    def nr_free(self, zone: Zone) -> list[int]:
        return self.free_area(zone)[0]

    # --- struct pages, read in bulk ------------------------------------------------------
    def _page(self, pfn: int) -> tuple[bytes, int]:
        """(buffer, offset) of pfn's struct page in bulk-read memory.

        The memmap is cached in REGION-sized pieces (64 KiB, 1024 struct pages on x86_64):
        the first entry of a list that lands in a piece is read alone (one struct page: free
        lists of high orders are spread over the whole memmap, one entry per piece), the
        second (``Target.bulk_read_after``; never on GDB, whose reads batch themselves) makes
        the whole piece be read (per-CPU lists and low-order free lists come back to the
        same pieces: 11k pcp entries of a 4 GiB guest live in 32 of them); at most
        :data:`MAX_REGIONS` pieces are kept, the oldest dropped first.  A
        piece that cannot be read is not tried again; its pages are read one by one, and
        FaultError from that read is the walk's "unreadable" finding."""
        r, i = divmod(pfn, self._per_region)
        buf = self._regions.get(r)
        if buf is not None:
            return buf, i * self.page_size
        after = self.t.bulk_read_after
        if after is not None and r not in self._bad_regions:
            n = self._misses[r] = self._misses.get(r, 0) + 1
            if n >= after:
                lo = r * self._per_region
                hi = min(lo + self._per_region, self.end_pfn)
                try:
                    # A guess: the piece may hold a hole of the dump that this walk never
                    # needs; the pages are then read one by one.
                    with self.t.speculative():
                        buf = self.t.read(self.vmemmap + lo * self.page_size,
                                          (hi - lo) * self.page_size)
                    if len(self._regions) >= MAX_REGIONS:
                        old = next(iter(self._regions))
                        del self._regions[old]
                        self._misses.pop(old, None)  # two misses again before a reread
                    self._regions[r] = buf
                    return buf, i * self.page_size
                except FaultError:
                    self._bad_regions.add(r)
        return self.t.read(self.vmemmap + pfn * self.page_size, self.page_size), 0

    # --- the bounded walk -----------------------------------------------------------
    def walk(self, head: int, link: int, bound: int, problem,
             first: bytes | int | None = None):
        """Yield (pfn, buffer, offset) for each entry of the list at HEAD: the entry's
        struct page is ``buffer[offset:offset + sizeof(struct page)]`` (bulk-read memory,
        see :meth:`_page`).  The walk is :func:`memscope.kernel.list.list_for_each` (cycle,
        bound, ``prev`` links, the head's ``prev`` at the end), with every entry checked
        first to be the list link of a struct page of the memmap (``outside_memory``) that
        can be read (``unreadable``), and each struct page taken from the memmap pieces
        read in bulk rather than read on its own.

        :param link: offset of the ``list_head`` in struct page (``buddy_list``,
            ``pcp_list``, ``lru``).
        :param bound: the most entries the list may hold (``too_long`` beyond).
        :param problem: a :class:`~memscope.kernel.problem.ProblemSink` (whose limit also
            ends the walk), or a function ``problem(kind, message)``.
        :param first: the head's 16 bytes (``next``, ``prev``) when the caller has read
            the structure that holds the head already (struct zone's free_area[], struct
            per_cpu_pages); otherwise the head is read (an int, the former ``head->next``,
            is ignored)."""
        sink = problem if isinstance(problem, ProblemSink) else _CallbackSink(problem)
        head_links = first if isinstance(first, (bytes, bytearray)) else None
        cur = [0, b"", 0]  # the entry last read: pfn, buffer, offset
        vmemmap, end_pfn, size = self.vmemmap, self.end_pfn, self.page_size
        per_region, regions = self._per_region, self._regions
        unpack = _LINK.unpack_from

        def entry_links(n: int, pos: int) -> tuple[int, int]:
            # page_to_pfn() and _page()'s cached case, inlined: the walks' hot path.
            page = (pos - link) & _MASK64
            pfn, rem = divmod((page - vmemmap) & _MASK64, size)
            if rem or pfn >= end_pfn:
                raise BadEntry("outside_memory", f"entry {n} points to {pos:#x}, which is "
                               f"not a struct page's list link (memmap {vmemmap:#x}..pfn "
                               f"{end_pfn:#x})")
            r, i = divmod(pfn, per_region)
            buf = regions.get(r)
            if buf is not None:
                off = i * size
            else:
                try:
                    buf, off = self._page(pfn)
                except FaultError:
                    raise BadEntry("unreadable", f"struct page of pfn {pfn:#x} at {page:#x} "
                                   "cannot be read") from None
            cur[0], cur[1], cur[2] = pfn, buf, off
            return unpack(buf, off + link)

        def read(address: int, nbytes: int) -> bytes:  # the head only
            if address == head and head_links is not None:
                return head_links[:nbytes]
            return self.t.read(address, nbytes)

        for _ in list_for_each(self.t, head, bound=bound, problems=sink.problems, sink=sink,
                               read=read, entry_links=entry_links,
                               describe=lambda n, pos: f"pfn {cur[0]:#x}"):
            yield cur[0], cur[1], cur[2]

    def count_list(self, head: int, cap: int = PAGETYPEINFO_CAP,
                   first: bytes | None = None) -> tuple[int, bool]:
        """(entries, overflow) as /proc/pagetypeinfo counts them: list_for_each with
        ``if (++freecount >= 100000) { overflow = true; break; }``.  A cycle or a bad
        pointer ends the count where the kernel would have looped or crashed."""
        n = 0
        for _ in self.walk(head, self.buddy_link, cap, ProblemSink([], ""), first):
            n += 1
            if n >= cap:
                return n, True
        return n, False

    def free_area(self, z: Zone) -> tuple[list[int], list[list[bytes]]]:
        """(free_area[order].nr_free, free_area[order].free_list[mt] as its 16 bytes of
        ``next`` and ``prev``) of zone Z, from one read of its free_area[] array."""
        raw = self.t.read(z.address + self.zone_fa_off, self.ctx.nr_orders * self.fa_size)
        nr_free, heads = [], []
        for o in range(self.ctx.nr_orders):
            base = o * self.fa_size
            nr_free.append(int.from_bytes(raw[base + self.fa_nr_free_off:][:8], "little"))
            lists = base + self.fa_list_off
            heads.append([raw[lists + 16 * mt:lists + 16 * mt + 16]
                          for mt in range(self.nr_lists)])
        return nr_free, heads

    def free_list_counts(self, z: Zone) -> tuple[list[list[int]], list[list[bool]]]:
        """[order][mt] (entries, overflow) of every free list of Z, as pagetypeinfo counts."""
        _, firsts = self.free_area(z)
        counts, over = [], []
        for order in range(self.ctx.nr_orders):
            c, f = [], []
            for mt in range(self.nr_lists):
                n, o = self.count_list(self.free_list_head(z, order, mt),
                                       first=firsts[order][mt])
                c.append(n)
                f.append(o)
            counts.append(c)
            over.append(f)
        return counts, over

    # --- a zone -----------------------------------------------------------------------
    def zone(self, z: Zone, *, pcp: bool = True) -> ZoneFreeLists:
        ctx = self.ctx
        problems: list[Problem] = []
        names = self.migratetype_names
        nr_free, heads = self.free_area(z)
        walked = [[0] * self.nr_lists for _ in range(ctx.nr_orders)]
        blocks: list[FreeBlock] = []
        owner: dict[int, str] = {}  # pfn -> list it was found on (cross-links)
        for order in range(ctx.nr_orders):
            bound = min(z.spanned_pages >> order, 2 * nr_free[order] + 1024) + 1
            for mt in range(self.nr_lists):
                mtname = names[mt] if mt < len(names) else str(mt)
                where = f"free_area[{order}].free_list[{mtname}]"
                sink = ProblemSink(problems, where, MAX_PROBLEMS_PER_LIST, node=z.node,
                                   zone=z.name)
                for pfn, buf, off in self.walk(self.free_list_head(z, order, mt),
                                               self.buddy_link, bound, sink,
                                               heads[order][mt]):
                    walked[order][mt] += 1
                    blocks.append(FreeBlock(z.node, z.name, order, mtname, pfn))
                    self._check_free_page(z, order, pfn, buf, off, sink.add)
                    if pfn in owner:
                        sink.add("cross_linked", f"pfn {pfn:#x} is also on {owner[pfn]}")
                    owner[pfn] = where
                    if sink.full:
                        break
            total = sum(walked[order])
            if total != nr_free[order]:
                problems.append(Problem(
                    "nr_free_mismatch", f"free_area[{order}]",
                    f"nr_free is {nr_free[order]} but the free lists hold {total} blocks",
                    z.node, z.name))
        pcps: list[PcpList] = []
        pcp_count: dict[int, int] = {}
        if pcp:
            pcps, pcp_count = self.pcp(z, problems, owner)
        counter = self.free_pages_counter(z)
        if counter is not None:
            pages = free_pages(walked, self.isolate)
            if pages != counter:
                problems.append(Problem(
                    "free_pages_counter_mismatch", "vm_stat[NR_FREE_PAGES]",
                    f"the counter says {counter} free pages but the free lists hold {pages}",
                    z.node, z.name))
        return ZoneFreeLists(z.node, z.name, nr_free, walked, blocks, pcps, pcp_count,
                             counter, problems)

    def _check_free_page(self, z: Zone, order: int, pfn: int, buf: bytes, off: int,
                         problem) -> None:
        pt, = _U32.unpack_from(buf, off + self.page_type_off)
        if not self._is_buddy(pt):
            problem("not_buddy", f"pfn {pfn:#x} is not PageBuddy (page_type {pt:#010x})")
        else:
            private, = _U64.unpack_from(buf, off + self.private_off)
            if private != order:
                problem("wrong_order", f"pfn {pfn:#x} has order {private} (page->private) "
                        f"on the order-{order} list")
        if not z.zone_start_pfn <= pfn < z.end_pfn:
            problem("outside_zone", f"pfn {pfn:#x} is outside the zone "
                    f"[{z.zone_start_pfn:#x}, {z.end_pfn:#x})")
        if pfn & ((1 << order) - 1):
            problem("misaligned", f"pfn {pfn:#x} is not aligned to its order {order}")

    # --- NR_FREE_PAGES ----------------------------------------------------------------
    def free_pages_counter(self, z: Zone) -> int | None:
        """zone_page_state_snapshot(zone, NR_FREE_PAGES) (:mod:`memscope.mm.vmstat`), or
        None when the kernel has no such counter or it cannot be read."""
        try:
            return vmstat.zone_page_state_snapshot(self.ctx, z, "NR_FREE_PAGES")
        except TargetError:
            return None

    # --- per-CPU lists ----------------------------------------------------------------
    @cached_property
    def _pcp_layout(self) -> tuple[int, int, int, int, int]:
        """(zone member, offset of struct per_cpu_pages in what it points to, count
        offset, lists offset, number of lists): :func:`pcp_layout`."""
        return pcp_layout(self.ctx)

    @cached_property
    def _pcp_size(self) -> int:
        """Bytes read per CPU: struct per_cpu_pages up to the end of lists[]."""
        _, _, count_off, lists_off, nlists = self._pcp_layout
        return max(count_off + 4, lists_off + 16 * nlists)

    def pcp_list_kind(self, index: int, nlists: int) -> tuple[int, str]:
        """(order, migratetype name) of pcp->lists[index]: the order from
        :func:`pindex_to_order`; MIGRATE_PCPTYPES lists per order up to
        PAGE_ALLOC_COSTLY_ORDER (3), then NR_PCP_THP lists of order HPAGE_PMD_ORDER (6.1+:
        two, non-movable then movable, commit 5d0a661d808f; one when the array is one
        shorter).  5.10: one order-0 list per pcp migratetype."""
        names = self.migratetype_names
        pcptypes = self.ctx.migratetypes.get("MIGRATE_PCPTYPES", 3)
        order = pindex_to_order(self.ctx, index, nlists)
        if nlists <= pcptypes or index < pcptypes * 4:
            return order, names[index % pcptypes]
        if nlists - pcptypes * 4 == 1:
            return order, "any"
        return order, ("Movable" if index == pcptypes * 4 + 1 else "Non-movable")

    def pcp(self, z: Zone, problems: list[Problem],
            owner: dict[int, str] | None = None) -> tuple[list[PcpList], dict[int, int]]:
        """
        Walk the per-CPU page lists of zone Z on every possible CPU: the one pcp walk,
        shared by :func:`freelists` / ``check`` and the page classification
        (:mod:`memscope.mm.page`).

        Each list is walked by :meth:`walk` through ``page->pcp_list`` (5.10
        ``page->lru``), bounded by ``2 * pcp->count + 1024`` entries (count is in pages,
        so it bounds the entries; the slack leaves room to find the real length when the
        count is wrong) and at most :data:`MAX_PROBLEMS_PER_LIST` problems per list.  A
        CPU whose lists hold other than ``pcp->count`` pages is a ``pcp_count_mismatch``;
        a ``struct per_cpu_pages`` not set up yet (:func:`pcp_set_up`) is skipped.  A CPU
        whose lists show problems is read again, up to :data:`PCP_READS` times, and the
        first reading without problems kept (a live kernel's lists move under the read;
        a dump reads the same every time, so its problems stay).

        :param z: the zone
        :param problems: the :class:`~memscope.kernel.problem.Problem` records found are
            appended here (``where`` ``"cpu N pcp lists[I]"`` or ``"cpu N pcp"``)
        :param owner: pfn -> the list it was found on, of the zone's lists walked so far:
            a pfn on two lists is ``cross_linked``; this walk's entries are added
        :return: (every :class:`PcpList`, by CPU then list index; cpu -> ``pcp->count``
            in pages)
        """
        t = self.t
        out: list[PcpList] = []
        counts: dict[int, int] = {}
        try:
            member, inner, count_off, lists_off, nlists = self._pcp_layout
            cpus = list(per_cpu_ptrs(t, t.read_u64(z.address + member)))
        except TargetError as e:
            problems.append(Problem("unreadable", "pcp", str(e), z.node, z.name))
            return out, counts
        if owner is None:
            owner = {}
        kinds = [self.pcp_list_kind(li, nlists) for li in range(nlists)]
        def walk_cpu(cpu: int, ptr: int, problems: list[Problem], owner, out: list) -> None:
            """One CPU's pcp lists: out, problems and owner get what they hold."""
            base = (ptr + inner) & _MASK64
            try:
                # The count and every list head in one read.
                raw = t.read(base, self._pcp_size)
            except FaultError:
                problems.append(Problem("unreadable", f"cpu {cpu} pcp",
                                        f"per_cpu_pages at {base:#x} cannot be read",
                                        z.node, z.name))
                return
            count = int.from_bytes(raw[count_off:count_off + 4], "little", signed=True)
            if not pcp_set_up(count, raw[lists_off:lists_off + 16 * nlists]):
                return  # early in boot: not initialised yet (see pcp_set_up)
            counts[cpu] = count
            pages = 0
            for li in range(nlists):
                order, mtname = kinds[li]
                where = f"cpu {cpu} pcp lists[{li}]"
                sink = ProblemSink(problems, where, MAX_PROBLEMS_PER_LIST, node=z.node,
                                   zone=z.name)
                pfns = []
                head = lists_off + 16 * li
                for pfn, _, _ in self.walk(base + head, self.pcp_link,
                                           2 * max(count, 0) + 1024, sink,
                                           raw[head:head + 16]):
                    pfns.append(pfn)
                    if pfn in owner:  # a block on two lists
                        sink.add("cross_linked", f"pfn {pfn:#x} is also on {owner[pfn]}")
                        if sink.full:
                            break
                    owner[pfn] = where
                pages += len(pfns) << order
                out.append(PcpList(z.node, z.name, cpu, li, order, mtname, pfns))
            if pages != count:
                problems.append(Problem("pcp_count_mismatch", f"cpu {cpu} pcp",
                                        f"pcp->count is {count} but the lists hold {pages} "
                                        "pages", z.node, z.name))

        for cpu, ptr in cpus:
            # Not from CPU itself on a live kernel: the pages this process faults in
            # come from its lists, which would move under the walk (Target.away_from_cpu).
            with t.away_from_cpu(cpu):
                # A list that reads differently the next time was moving (a live
                # kernel): read it again, at most PCP_READS times, and keep the first
                # reading without problems (on a dump every reading is the same).
                for _ in range(PCP_READS):
                    found: list[Problem] = []
                    lists: list[PcpList] = []
                    seen: dict[int, str] = {}
                    walk_cpu(cpu, ptr, found, collections.ChainMap(seen, owner), lists)
                    if not found:
                        break
                problems += found
                out += lists
                owner.update(seen)
        return out, counts


def free_pages(walked: list[list[int]], isolate: int | None) -> int:
    """
    The pages NR_FREE_PAGES counts in the blocks walked: every free list's but
    MIGRATE_ISOLATE's (mm/page_alloc.c account_freepages(), before 6.10
    __mod_zone_freepage_state(): isolated pages are not free for allocation); pcp pages
    were taken off the counter when they left the buddy allocator.

    :param walked: ``[order][migratetype]`` blocks found (:attr:`ZoneFreeLists.walked`)
    :param isolate: the value of MIGRATE_ISOLATE (None without CONFIG_MEMORY_ISOLATION)
    :return: pages (each block of order o is 2^o pages)
    """
    return sum(n << o for o, per_mt in enumerate(walked) for mt, n in enumerate(per_mt)
               if mt != isolate)


# --- the per-CPU page lists' layout ------------------------------------------------------
def pcp_layout(ctx: KernelContext) -> tuple[int, int, int, int, int]:
    """(zone member offset, offset of the pcp struct in what it points to, count offset,
    lists offset, number of lists) for this kernel."""
    t, zl = ctx.t, ctx.zone_layout
    if zl.has("per_cpu_pageset"):
        # 5.14+ (commit 28f836b6777b "mm/page_alloc: split per cpu page lists and zone
        # stats"): zone->per_cpu_pageset is a __percpu struct per_cpu_pages.
        pcp = t.layout("struct per_cpu_pages")
        return (zl.offset("per_cpu_pageset"), 0, pcp.offset("count"), pcp.offset("lists"),
                pcp["lists"].array_length)
    # 5.10: zone->pageset is a __percpu struct per_cpu_pageset { struct per_cpu_pages pcp }.
    ps = t.layout("struct per_cpu_pageset")
    pcp = t.layout("struct per_cpu_pages")
    return (zl.offset("pageset"), ps.offset("pcp"), pcp.offset("count"), pcp.offset("lists"),
            pcp["lists"].array_length)


def pindex_to_order(ctx: KernelContext, pindex: int, nlists: int) -> int:
    """mm/page_alloc.c pindex_to_order(): 3 lists (one per PCPTYPE) per order up to
    PAGE_ALLOC_COSTLY_ORDER (3), then the THP lists of order HPAGE_PMD_ORDER."""
    pcptypes = ctx.migratetypes.get("MIGRATE_PCPTYPES", 3)
    if nlists <= pcptypes:  # 5.10: order-0 only
        return 0
    low = pcptypes * 4
    if pindex >= low:
        # HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT: a page of 8-byte entries.
        return (ctx.t.page_size // 8).bit_length() - 1
    return pindex // pcptypes


def pcp_set_up(count: int, lists: bytes) -> bool:
    """Whether a CPU's ``struct per_cpu_pages`` has been set up: per_cpu_pages_init()
    (mm/page_alloc.c) runs INIT_LIST_HEAD on every ``lists[]`` head, so a head is never
    all zeros afterwards.  Early in boot (before setup_per_cpu_pageset(), or for the CPUs
    whose boot_pageset is not initialised yet) the count and every head are still zero:
    such lists are not there yet, not broken."""
    return count != 0 or any(lists)


def walker(ctx: KernelContext) -> FreeListWalker:
    """
    Get the :class:`FreeListWalker` of the context: created once per snapshot, as it
    keeps the memmap pieces it read.

    :param ctx: the context of the target
    """
    return ctx.snapshot("freelist_walker", lambda: FreeListWalker(ctx))


def freelists(ctx: KernelContext, *, pcp: bool = True) -> list[ZoneFreeLists]:
    """
    Walk every populated zone's free lists and, unless *pcp* is false, its per-CPU lists
    (bounded, cycle-checked: see the module's documentation).

    :param ctx: the context of the target
    :param pcp: also walk the per-CPU lists
    :return: one :class:`ZoneFreeLists` per populated zone (online nodes, then
        ``node_zones[]`` order)
    :raises TargetError: a type or member is missing from the debug info
    :raises FaultError: a zone's ``free_area[]`` cannot be read (an unreadable list
        entry or per_cpu_pages is a :class:`Problem` instead)
    """
    w = walker(ctx)
    return [w.zone(z, pcp=pcp) for z in ctx.all_zones()]


@dataclasses.dataclass(frozen=True)
class ZoneCheck:
    """
    The counts :func:`check` compared in one zone.  On a consistent kernel ``walked ==
    nr_free`` and ``free_pages == free_pages_counter``.

    - ``node``, ``zone``: the node id and the zone's name (``zone->name``).
    - ``nr_free``: ``free_area[order].nr_free`` per order, as read (blocks).
    - ``walked``: the blocks found on each order's free lists, all migratetypes.
    - ``free_pages``: pages in the blocks found on the free lists, those on the
      MIGRATE_ISOLATE lists excluded (what NR_FREE_PAGES counts: mm/page_alloc.c
      account_freepages(); older kernels __mod_zone_freepage_state()).
    - ``free_pages_counter``: ``zone_page_state_snapshot(zone, NR_FREE_PAGES)``
      (include/linux/vmstat.h): ``zone->vm_stat[]`` plus every possible CPU's
      ``vm_stat_diff[]``, in pages; None when it cannot be read.
    - ``pcp_pages``: pages found on the zone's per-CPU lists, all CPUs (each entry
      counts 2^order pages).
    """

    node: int
    zone: str
    nr_free: list[int]  # free_area[order].nr_free
    walked: list[int]  # blocks found on the lists, per order
    free_pages: int  # pages on the free lists, MIGRATE_ISOLATE excluded
    free_pages_counter: int | None  # NR_FREE_PAGES, per-CPU diffs included
    pcp_pages: int


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """
    What :func:`check` found.

    - ``ok``: True when ``problems`` is empty (the command exits 0, else 1).
    - ``zones``: one :class:`ZoneCheck` per populated zone.
    - ``problems``: every :class:`Problem` of every zone, zone by zone in walk order:
      the free lists by order then migratetype (each order's ``nr_free`` check after its
      lists), then each CPU's per-CPU lists and their ``pcp->count`` check, then the
      NR_FREE_PAGES check; with the slab half (:func:`memscope.mm.check.check`), then
      the slab walk's problems.
    - ``slabs``: the slab half's :class:`memscope.mm.slub_debug.SlabCheck` (None from
      this module's :func:`check`, the buddy half alone).
    """

    ok: bool
    zones: list[ZoneCheck]
    problems: list[Problem]
    slabs: object = None


def check(ctx: KernelContext) -> CheckReport:
    """
    Check every populated zone's buddy lists against the kernel's own bookkeeping (the
    ``check`` command and :func:`memscope.drgn_api.check`): the walks of
    :func:`freelists` (free lists and per-CPU lists, each entry PageBuddy with the list's
    order in ``page->private``, aligned, inside the zone, on one list only) and the counts
    they are held to:

    - per order: blocks walked == ``free_area[order].nr_free``;
    - per zone: :func:`free_pages` of the walk == NR_FREE_PAGES
      (``zone_page_state_snapshot()``);
    - per CPU: pages on the pcp lists == ``pcp->count``.

    - pages of a filtered or truncated dump that the walks needed (the target's
      ``missing_pages_read()`` during the check): a ``missing_page`` problem each, since
      what they held was not checked.

    :param ctx: the context of the target
    :return: a :class:`CheckReport` (``ok`` is False when any :class:`Problem` was found)
    :raises TargetError: a type or member is missing from the debug info
    :raises FaultError: a zone's ``free_area[]`` cannot be read
    """
    ctx.t.forget_missing_pages()
    zones = freelists(ctx)
    iso = walker(ctx).isolate
    rows = [ZoneCheck(z.node, z.zone, z.nr_free, [sum(per_mt) for per_mt in z.walked],
                      free_pages(z.walked, iso), z.free_pages_counter,
                      sum(len(p.pfns) << p.order for p in z.pcp))
            for z in zones]
    problems = [p for z in zones for p in z.problems]
    problems += [Problem("missing_page", "dump", str(m)) for m in ctx.t.missing_pages_read()]
    return CheckReport(not problems, rows, problems)


__all__ = ["FreeBlock", "PcpList", "Problem", "ZoneFreeLists", "FreeListWalker", "freelists",
           "walker", "PAGETYPEINFO_CAP", "CheckReport", "ZoneCheck", "check", "free_pages",
           "pcp_layout", "pcp_set_up", "pindex_to_order", "PROBLEM_KINDS"]
