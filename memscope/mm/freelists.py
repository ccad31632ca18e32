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

Layout probes (each names the kernel change it follows):

- free-list link: ``page->buddy_list`` (6.1+, commit bf75f200569d "mm/page_alloc: add
  page->buddy_list and page->pcp_list") or ``page->lru`` (5.10); both alias the same word.
- pcp lists: ``zone->per_cpu_pageset`` (struct per_cpu_pages, 5.14+, commit 28f836b6777b)
  with ``lists[NR_PCP_LISTS]`` indexed by ``order_to_pindex()`` and linked through
  ``page->pcp_list``; 5.10 ``zone->pageset`` (struct per_cpu_pageset {.pcp}) with
  ``lists[MIGRATE_PCPTYPES]`` of order-0 pages linked through ``page->lru``.
- PageBuddy: see :meth:`memscope.mm.page.PageLayout.is_buddy` (enum pagetype's PGTY_buddy
  in 6.10+, the PAGE_TYPE_BASE/PG_buddy mask before).
"""

from __future__ import annotations

import dataclasses
import struct
from functools import cached_property

from ..target.base import FaultError, TargetError
from .page import page_layout, pcp_layout, pcp_set_up, pindex_to_order, vmemmap_base
from . import vmstat
from .context import KernelContext
from .zone import Zone

#: A list walk stops after this many problems (the rest of the list cannot be trusted).
MAX_PROBLEMS_PER_LIST = 16

#: /proc/pagetypeinfo stops counting a list at this many entries and prints ">100000"
#: (mm/vmstat.c pagetypeinfo_showfree_print(), since v5.4 commit 93b3a674485f).
PAGETYPEINFO_CAP = 100000

_MASK64 = (1 << 64) - 1
_LINK = struct.Struct("<QQ")  # struct list_head {next, prev}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: The walks cache the memmap in pieces of this many bytes (see FreeListWalker._page).
REGION = 64 << 10


def _ignore(*_args) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Problem:
    """
    Something wrong found by a list walk or a count check (``check`` prints these, one
    per line, as ``str(problem)``).

    - ``kind``: what is wrong, one of
      ``cycle`` (an entry comes back: the list never returns to its head),
      ``outside_memory`` (a link that is not a struct page's list link in the memmap),
      ``unreadable`` (a list head, struct page or per_cpu_pages cannot be read),
      ``broken_link`` (an entry's ``prev`` is not the previous entry),
      ``not_buddy`` (a free-list entry that is not PageBuddy),
      ``wrong_order`` (``page->private`` is not the list's order),
      ``misaligned`` (pfn not a multiple of 2^order), ``outside_zone`` (pfn outside the
      zone's span), ``cross_linked`` (a block also found on another list),
      ``too_long`` (the walk hit its bound), ``gave_up`` (16 problems on one free list: the
      rest is not walked), ``nr_free_mismatch`` (``free_area[order].nr_free`` differs
      from the blocks walked), ``free_pages_counter_mismatch`` (NR_FREE_PAGES differs
      from the pages walked), ``pcp_count_mismatch`` (``pcp->count`` differs from the
      pages on that CPU's lists).
    - ``node``, ``zone``: where (node id, zone name).
    - ``where``: which list or counter, e.g. ``"free_area[3].free_list[Movable]"``,
      ``"cpu 1 pcp lists[4]"``, ``"free_area[3]"``, ``"vm_stat[NR_FREE_PAGES]"``.
    - ``message``: one line, with the pfns and addresses involved (hex).
    """

    kind: str  # cycle, outside_memory, unreadable, broken_link, not_buddy, wrong_order,
    #            misaligned, outside_zone, cross_linked, too_long, nr_free_mismatch,
    #            free_pages_counter_mismatch, pcp_count_mismatch, gave_up
    node: int
    zone: str
    where: str  # e.g. "free_area[3].free_list[Movable]" or "cpu 1 pcp lists[4]"
    message: str

    def __str__(self) -> str:
        return f"node {self.node} zone {self.zone} {self.where}: {self.message}"


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


class FreeListWalker:
    """Layouts for the walks, probed once per target."""

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
        same pieces: 11k pcp entries of a 4 GiB guest live in 32 of them).  A
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
                    buf = self._regions[r] = self.t.read(self.vmemmap + lo * self.page_size,
                                                         (hi - lo) * self.page_size)
                    return buf, i * self.page_size
                except FaultError:
                    self._bad_regions.add(r)
        return self.t.read(self.vmemmap + pfn * self.page_size, self.page_size), 0

    # --- the bounded walk -----------------------------------------------------------
    def walk(self, head: int, link: int, bound: int, problem, first: int | None = None):
        """Yield (pfn, buffer, offset) for each entry of the list at HEAD: the entry's
        struct page is ``buffer[offset:offset + sizeof(struct page)]`` (bulk-read memory,
        see :meth:`_page`).  FIRST is head->next when the caller has already read the
        structure that holds the head (struct zone's free_area[], struct per_cpu_pages).

        PROBLEM(kind, message) is called for each problem found; the walk stops at a
        cycle, a pointer outside the memmap, an unreadable entry or after BOUND entries."""
        if first is None:
            try:
                first = self.t.read_u64(head)
            except FaultError:
                problem("unreadable", f"list head {head:#x} cannot be read")
                return
        nxt = first
        prev = head
        visited: set[int] = set()
        n = 0
        unpack = _LINK.unpack_from
        while nxt != head:
            if nxt in visited:
                problem("cycle", f"entry {nxt:#x} comes back after {n} entries "
                        "(the list never returns to its head)")
                return
            if n >= bound:
                problem("too_long", f"more than {bound} entries: walk stopped")
                return
            page = (nxt - link) & _MASK64
            pfn = self.page_to_pfn(page)
            if pfn is None:
                problem("outside_memory", f"entry {n} points to {nxt:#x}, which is not a "
                        f"struct page's list link (memmap {self.vmemmap:#x}..pfn "
                        f"{self.end_pfn:#x})")
                return
            try:
                buf, off = self._page(pfn)
            except FaultError:
                problem("unreadable", f"struct page of pfn {pfn:#x} at {page:#x} cannot be read")
                return
            nn, pp = unpack(buf, off + link)
            if pp != prev:
                problem("broken_link", f"pfn {pfn:#x}: prev {pp:#x} is not the previous "
                        f"entry {prev:#x}")
            visited.add(nxt)
            n += 1
            yield pfn, buf, off
            prev, nxt = nxt, nn

    def count_list(self, head: int, cap: int = PAGETYPEINFO_CAP,
                   first: int | None = None) -> tuple[int, bool]:
        """(entries, overflow) as /proc/pagetypeinfo counts them: list_for_each with
        ``if (++freecount >= 100000) { overflow = true; break; }``.  A cycle or a bad
        pointer ends the count where the kernel would have looped or crashed."""
        n = 0
        for _ in self.walk(head, self.buddy_link, cap, _ignore, first):
            n += 1
            if n >= cap:
                return n, True
        return n, False

    def free_area(self, z: Zone) -> tuple[list[int], list[list[int]]]:
        """(free_area[order].nr_free, free_area[order].free_list[mt].next) of zone Z, from
        one read of its free_area[] array."""
        raw = self.t.read(z.address + self.zone_fa_off, self.ctx.nr_orders * self.fa_size)
        nr_free, firsts = [], []
        for o in range(self.ctx.nr_orders):
            base = o * self.fa_size
            nr_free.append(int.from_bytes(raw[base + self.fa_nr_free_off:][:8], "little"))
            firsts.append(list(struct.unpack_from(f"<{2 * self.nr_lists}Q", raw,
                                                  base + self.fa_list_off)[0::2]))
        return nr_free, firsts

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
        ctx, t = self.ctx, self.t
        problems: list[Problem] = []
        names = self.migratetype_names
        nr_free, firsts = self.free_area(z)
        walked = [[0] * self.nr_lists for _ in range(ctx.nr_orders)]
        blocks: list[FreeBlock] = []
        owner: dict[int, str] = {}  # pfn -> list it was found on (cross-links)
        for order in range(ctx.nr_orders):
            bound = min(z.spanned_pages >> order, 2 * nr_free[order] + 1024) + 1
            for mt in range(self.nr_lists):
                mtname = names[mt] if mt < len(names) else str(mt)
                where = f"free_area[{order}].free_list[{mtname}]"
                found: list[Problem] = []

                def problem(kind, msg, where=where, found=found):
                    found.append(Problem(kind, z.node, z.name, where, msg))
                    if len(found) == MAX_PROBLEMS_PER_LIST:
                        found.append(Problem("gave_up", z.node, z.name, where,
                                             f"{MAX_PROBLEMS_PER_LIST} problems: rest of "
                                             "the list not walked"))

                for pfn, buf, off in self.walk(self.free_list_head(z, order, mt),
                                               self.buddy_link, bound, problem,
                                               firsts[order][mt]):
                    walked[order][mt] += 1
                    blocks.append(FreeBlock(z.node, z.name, order, mtname, pfn))
                    self._check_free_page(z, order, pfn, buf, off, problem)
                    other = owner.get(pfn)
                    if other is not None:
                        problem("cross_linked", f"pfn {pfn:#x} is also on {other}")
                    owner[pfn] = where
                    if len(found) > MAX_PROBLEMS_PER_LIST:
                        break
                problems.extend(found)
            total = sum(walked[order])
            if total != nr_free[order]:
                problems.append(Problem(
                    "nr_free_mismatch", z.node, z.name, f"free_area[{order}]",
                    f"nr_free is {nr_free[order]} but the free lists hold {total} blocks"))
        pcps: list[PcpList] = []
        pcp_count: dict[int, int] = {}
        if pcp:
            pcps, pcp_count = self._pcp(z, owner, problems)
        counter = self.free_pages_counter(z)
        if counter is not None:
            # NR_FREE_PAGES counts buddy pages on every list but MIGRATE_ISOLATE's
            # (account_freepages(), __mod_zone_freepage_state(): isolated pages are not
            # free for allocation); pcp pages were taken off it when they left the buddy.
            pages = sum(walked[o][mt] << o for o in range(ctx.nr_orders)
                        for mt in range(self.nr_lists) if mt != self.isolate)
            if pages != counter:
                problems.append(Problem(
                    "free_pages_counter_mismatch", z.node, z.name, "vm_stat[NR_FREE_PAGES]",
                    f"the counter says {counter} free pages but the free lists hold {pages}"))
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
        offset, lists offset, number of lists): :func:`memscope.mm.page.pcp_layout`."""
        return pcp_layout(self.ctx)

    @cached_property
    def _pcp_size(self) -> int:
        """Bytes read per CPU: struct per_cpu_pages up to the end of lists[]."""
        _, _, count_off, lists_off, nlists = self._pcp_layout
        return max(count_off + 4, lists_off + 16 * nlists)

    def pcp_list_kind(self, index: int, nlists: int) -> tuple[int, str]:
        """(order, migratetype name) of pcp->lists[index]: the order from
        :func:`memscope.mm.page.pindex_to_order`; MIGRATE_PCPTYPES lists per order up to
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

    def _pcp(self, z: Zone, owner: dict[int, str], problems: list[Problem]):
        t = self.t
        out: list[PcpList] = []
        counts: dict[int, int] = {}
        try:
            member, inner, count_off, lists_off, nlists = self._pcp_layout
            ptr = t.read_u64(z.address + member)
        except TargetError as e:
            problems.append(Problem("unreadable", z.node, z.name, "pcp", str(e)))
            return out, counts
        kinds = [self.pcp_list_kind(li, nlists) for li in range(nlists)]
        for cpu in t.possible_cpus:
            base = (ptr + t.per_cpu_offset(cpu) + inner) & _MASK64
            try:
                # The count and every list head in one read.
                raw = t.read(base, self._pcp_size)
            except FaultError:
                problems.append(Problem("unreadable", z.node, z.name, f"cpu {cpu} pcp",
                                        f"per_cpu_pages at {base:#x} cannot be read"))
                continue
            count = int.from_bytes(raw[count_off:count_off + 4], "little", signed=True)
            if not pcp_set_up(count, raw[lists_off:lists_off + 16 * nlists]):
                continue  # early in boot: not initialised yet (mm/page.py pcp_set_up)
            firsts = struct.unpack_from(f"<{2 * nlists}Q", raw, lists_off)[0::2]
            counts[cpu] = count
            pages = 0
            for li in range(nlists):
                order, mtname = kinds[li]
                where = f"cpu {cpu} pcp lists[{li}]"
                found: list[Problem] = []

                def problem(kind, msg, where=where, found=found):
                    found.append(Problem(kind, z.node, z.name, where, msg))

                pfns = []
                for pfn, _, _ in self.walk(base + lists_off + 16 * li, self.pcp_link,
                                           2 * max(count, 0) + 1024, problem, firsts[li]):
                    pfns.append(pfn)
                    other = owner.get(pfn)
                    if other is not None:
                        problem("cross_linked", f"pfn {pfn:#x} is also on {other}")
                    owner[pfn] = where
                    if len(found) >= MAX_PROBLEMS_PER_LIST:
                        break
                problems.extend(found)
                pages += len(pfns) << order
                out.append(PcpList(z.node, z.name, cpu, li, order, mtname, pfns))
            if pages != count:
                problems.append(Problem("pcp_count_mismatch", z.node, z.name, f"cpu {cpu} pcp",
                                        f"pcp->count is {count} but the lists hold {pages} "
                                        "pages"))
        return out, counts


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


__all__ = ["FreeBlock", "PcpList", "Problem", "ZoneFreeLists", "FreeListWalker", "freelists",
           "walker", "PAGETYPEINFO_CAP"]
