"""memscope's commands as Python functions on a :class:`drgn.Program`, for drgn scripts and
the drgn REPL, returning plain data (dataclasses).

    >>> import memscope.drgn_api as ms
    >>> ms.buddyinfo(prog)[0]
    ZoneBuddyInfo(node=0, zone='DMA', nr_free=[0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 3])
    >>> print(ms.format_pagetypeinfo(ms.pagetypeinfo(prog)), end="")
    >>> [p for p in ms.check(prog).problems]
    []

(The numbers in the examples are those of the lab's Debian 6.12 x86_64 guest.)

Functions (each takes the Program first; ``memscope COMMAND`` prints what the function of
the same name returns):

- :func:`buddyinfo`: ``free_area[order].nr_free`` per zone (/proc/buddyinfo).
- :func:`pagetypeinfo`: free blocks per migratetype and order, pageblocks per
  migratetype (/proc/pagetypeinfo).
- :func:`freelists`: every free block on every ``free_list`` and every per-CPU list.
- :func:`check`: the free lists walked and checked against ``nr_free``, NR_FREE_PAGES
  and ``pcp->count``.
- :func:`pages`: every physical page classified, counted per zone.
- :func:`page_records`: the decoded struct pages of a pfn range.
- :func:`pageblocks`: pageblock migratetypes, skip and isolate bits, mixed blocks.
- :func:`frag`: extfrag/unusable indices and the watermark decision per order.
- :func:`slabinfo`: /proc/slabinfo's numbers, each kernel's arithmetic.
- :func:`slab_usage`: the true counts of every slab cache, every slab walked
  (``slabinfo --walk``).
- :func:`slab`: one cache's slabs and free objects (``slab CACHE``).
- :func:`kmalloc`: kmalloc's caches by kind and size, requested bytes where slub_debug
  stores them (``kmalloc``).
- :func:`whatis`: what an address is: slab object, KFENCE, large kmalloc, page class.
- :func:`meminfo`: every line of /proc/meminfo (:func:`format_meminfo` prints the file).
- :func:`vmallocinfo`: every vmap area as /proc/vmallocinfo lists them;
  :func:`vmalloc_by_caller`: vmalloc use per caller and kind.
- :func:`ps`: every process or thread; :func:`maps`: a process's VMAs; :func:`heap`: its
  malloc heap walked chunk by chunk; :func:`smaps_rollup`: its /proc/PID/smaps_rollup
  from the page tables (:func:`format_smaps_rollup` prints the file).
- :func:`vtop`: a virtual address translated level by level (crash's ``vtop``).
- :func:`mempools`: every mempool found in the kernel's data and slab objects;
  :func:`mempool`: one pool and its elements.
- :func:`cma`: every CMA area (bitmap use, buddy and pcp pages inside it);
  :func:`cma_map`: one area chunk by chunk; :func:`cma_can_alloc`: would cma_alloc()
  succeed now.
- :func:`format_buddyinfo`, :func:`format_pagetypeinfo`, :func:`format_vmallocinfo`,
  :func:`format_maps`, :func:`format_slabinfo`, :func:`format_smaps_rollup`: the /proc
  files, byte for byte.
- :func:`context_for`: the per-Program context the functions share (``mm_for`` is its
  former name).

Records: :class:`SlabInfo`, :class:`CacheUsage`, :class:`CacheWalk`, :class:`WhatIs`,
:class:`ZoneBuddyInfo`, :class:`PageTypeInfo` / :class:`ZonePageTypes`,
:class:`ZoneFreeLists` / :class:`FreeBlock` / :class:`PcpList`, :class:`CheckReport` /
:class:`ZoneCheck`, :class:`Problem`, :class:`ZonePages`, :class:`PageRecord`,
:class:`ZonePageblocks`, :class:`ZoneFrag` (with ``memscope.mm.frag.OrderFrag`` rows).

Units: counts of free blocks are blocks of 2^order pages; ``*_pages`` and counters are
pages (``prog["PAGE_SIZE"]`` bytes each); pfns are page frame numbers; indices are in
thousandths.  Zones are listed as the kernel's /proc files list them: online nodes in
order, then each node's populated zones in ``node_zones[]`` order.

Errors: every function raises :class:`memscope.target.base.TargetError` when the debug
info lacks a type, member, enumerator or symbol it needs, and its subclass
:class:`memscope.target.base.FaultError` when a structure it cannot do without (a
``struct zone``, ``node_data[]``, ``mem_section[]``) cannot be read.  Corruption found
while walking lists is returned as data (:class:`Problem` records, the one record type
of every walk: ``memscope.kernel.problem.Problem``), a struct page that contradicts the
others as "inconsistent" counts, never raised.

Importing this module also registers the drgn command ``memscope`` (drgn 0.3.0's
``drgn.commands`` API), so that in the drgn REPL::

    >>> import memscope.drgn_api
    >>> %memscope buddyinfo -f proc
    >>> %memscope check

runs the same commands, with the same flags, as the ``memscope`` command line.  drgn can
load it by itself with ``DRGN_PLUGINS=memscope=memscope.drgn_api drgn -c VMCORE ...``.

The functions cache what they probe per Program (layouts, enumerators), so calling several
of them on one Program reads the debug info once.
"""

from __future__ import annotations

import argparse
import weakref
from typing import Any

import drgn

from .mm import buddy as _buddy
from .mm import freelists as _fl
from .mm import check as _check
from .mm.buddy import PageTypeInfo, ZoneBuddyInfo, ZonePageTypes, format_buddyinfo, \
    format_pagetypeinfo
from .mm.freelists import CheckReport, FreeBlock, PcpList, Problem, ZoneCheck, \
    ZoneFreeLists
from .mm import frag as _frag
from .mm import meminfo as _meminfo
from .mm.meminfo import Meminfo, MeminfoLine, format_meminfo
from .mm import page as _page
from .mm import pageblock as _pageblock
from .mm.frag import ZoneFrag
from .mm.page import PageRecord, ZonePages
from .mm.pageblock import ZonePageblocks
from .mm import slub as _slub
from .mm import kmalloc as _kmalloc
from .mm.kmalloc import KmallocCache
from .mm.slub import CacheUsage, CacheWalk, SlabInfo, WhatIs, format_slabinfo
from .mm.context import KernelContext
from .target.base import FaultError
from .mm import heap as _heap
from .mm import mempool as _mempool
from .mm.mempool import Mempool, MempoolScan
from .mm import task as _task
from .mm.heap import HeapReport
from .mm import vma as _vma
from .mm import vmalloc as _vmalloc
from .mm import smaps as _smaps
from .mm.smaps import Rollup, format_smaps_rollup
from .mm import cma as _cma
from .mm.cma import CanAlloc, ChunkRun, CmaArea, CmaRange
from .mm.task import Task
from .mm import vtop as _vtop
from .mm.vtop import Translation
from .mm.vma import Vma, format_maps
from .mm.vmalloc import CallerUsage, VmallocArea, VmallocInfo, format_vmallocinfo
from .target.base import TargetError as _TargetError
from .target.drgn import DrgnTarget

__all__ = ["kmalloc", "KmallocCache", "buddyinfo", "pagetypeinfo", "freelists", "check", "pages", "page_records",
           "pageblocks", "frag", "CheckReport", "ZoneCheck", "ZonePages", "PageRecord",
           "ZonePageblocks", "ZoneFrag",
           "ZoneBuddyInfo", "PageTypeInfo", "ZonePageTypes", "ZoneFreeLists", "FreeBlock",
           "PcpList", "Problem", "format_buddyinfo", "format_pagetypeinfo", "context_for",
           "mm_for", "vmallocinfo", "vmalloc_by_caller", "format_vmallocinfo", "VmallocInfo",
           "VmallocArea", "CallerUsage", "ps", "maps", "format_maps", "Task", "Vma",
           "heap", "HeapReport", "mempools", "mempool", "Mempool", "MempoolScan",
           "smaps_rollup", "Rollup", "format_smaps_rollup", "vtop", "Translation",
           "meminfo", "Meminfo", "MeminfoLine", "format_meminfo",
           "slabinfo", "slab_usage", "slab", "whatis", "format_slabinfo",
           "SlabInfo", "CacheUsage", "CacheWalk", "WhatIs",
           "cma", "cma_map", "cma_can_alloc", "CmaArea", "CmaRange", "ChunkRun", "CanAlloc"]

_CONTEXTS: "weakref.WeakKeyDictionary[drgn.Program, KernelContext]" = \
    weakref.WeakKeyDictionary()


def context_for(prog: drgn.Program) -> KernelContext:
    """
    Return the memscope context of a program: a
    :class:`memscope.target.drgn.DrgnTarget` on *prog* with the layouts, enumerators and
    symbols probed so far, created on the first call and cached per Program (weakly: it
    goes away with the Program).

    What the functions of this module keep there is the kernel's, not the snapshot's
    (layouts, enumerators, derived constants such as ``pageblock_order``): each function
    drops the context's snapshot state (:meth:`~memscope.mm.context.KernelContext.refresh`)
    before it reads, so that on a live target (``prog.set_kernel()``, QMP) every call
    reads the zones, lists, counters and memmap afresh.

    :param prog: the kernel, a vmcore, or a QEMU guest (``drgn.Program``)
    :return: the context (``memscope.mm.context.KernelContext``); reads nothing yet
    """
    try:
        return _CONTEXTS[prog]
    except (KeyError, TypeError):
        pass
    ctx = KernelContext(DrgnTarget(prog))
    try:
        _CONTEXTS[prog] = ctx
    except TypeError:  # Program not weak-referenceable: no caching
        pass
    return ctx


#: The former name of :func:`context_for`.
mm_for = context_for


def _fresh(prog: drgn.Program) -> KernelContext:
    # The probes stay in the context; the snapshot state is read afresh by every call.
    ctx = context_for(prog)
    ctx.refresh()
    return ctx


def buddyinfo(prog: drgn.Program) -> list[ZoneBuddyInfo]:
    """
    Get /proc/buddyinfo's numbers: ``zone->free_area[order].nr_free`` of every populated
    zone (include/linux/mmzone.h ``struct free_area``), in the order mm/vmstat.c
    frag_show() walks them (online nodes, then populated zones in ``node_zones[]``
    order).  :func:`format_buddyinfo` prints them as frag_show_print() does.

    >>> buddyinfo(prog)[0]
    ZoneBuddyInfo(node=0, zone='DMA', nr_free=[0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 3])

    :param prog: the kernel
    :return: one :class:`ZoneBuddyInfo` per populated zone; ``nr_free[order]`` counts
        free blocks of 2^order pages, one entry per order (NR_PAGE_ORDERS, the length of
        ``free_area[]``: 11 on the lab kernels)
    :raises TargetError: a type or member is missing from the debug info
    :raises FaultError: a ``struct zone`` or ``node_data[]`` entry cannot be read
    """
    return _buddy.buddyinfo(_fresh(prog))


def pagetypeinfo(prog: drgn.Program) -> PageTypeInfo:
    """
    Get /proc/pagetypeinfo's numbers (mm/vmstat.c pagetypeinfo_show()): the length of
    every ``free_area[order].free_list[migratetype]`` counted as
    pagetypeinfo_showfree_print() counts it (stopping at 100000 entries), and the
    pageblocks of each migratetype as pagetypeinfo_showblockcount_print() counts them
    (``get_pageblock_migratetype()`` of the pfns ``zone_start_pfn + k *
    pageblock_nr_pages`` below the zone's end that have an online struct page whose
    ``page_zone()`` is the zone).  Only nodes with memory
    (``N_MEMORY``) are listed, as pagetypeinfo_show() skips the others.
    :func:`format_pagetypeinfo` prints the result as the kernel does.

    A cyclic or corrupted list ends its count where the kernel would have looped or
    faulted; nothing is raised for it (:func:`check` reports it).

    :param prog: the kernel
    :return: a :class:`PageTypeInfo`: ``pageblock_order``, ``pages_per_block``,
        ``migratetypes`` (the kernel's ``migratetype_names[]``), ``nodes`` and one
        :class:`ZonePageTypes` per populated zone of those nodes (``free``: list entries
        per migratetype and order, ``overflow``: where the count stopped at the cap,
        ``blocks``: pageblocks per migratetype)
    :raises TargetError: a type, member or enumerator is missing from the debug info, or
        the memmap cannot be located (``mem_section``, vmemmap)
    :raises FaultError: a ``struct zone`` or ``mem_section[]`` root cannot be read
    """
    return _buddy.pagetypeinfo(_fresh(prog))


def freelists(prog: drgn.Program, *, pcp: bool = True) -> list[ZoneFreeLists]:
    """
    Walk every free list (``zone->free_area[order].free_list[migratetype]``,
    include/linux/mmzone.h) and, unless *pcp* is false, every per-CPU page list
    (``struct per_cpu_pages`` ``lists[]`` of every possible CPU: ``zone->per_cpu_pageset``
    on 5.14+, ``zone->pageset`` on 5.10) of every populated zone.

    Every walk is bounded and cycle-checked (:mod:`memscope.mm.freelists` gives the
    bounds): an entry that is not a struct page of the memmap, an unreadable entry, a
    cycle, a broken ``prev`` link or a block on two lists ends up in ``problems``, as do
    the count checks of :func:`check`.

    >>> z = freelists(prog)[1]
    >>> z.blocks[0]
    FreeBlock(node=0, zone='DMA32', order=0, migratetype='Unmovable', pfn=26417)

    :param prog: the kernel
    :param pcp: also walk the per-CPU lists (``pcp`` and ``pcp_count`` stay empty
        otherwise)
    :return: one :class:`ZoneFreeLists` per populated zone: ``nr_free`` (blocks per
        order, as read), ``walked`` (entries found per ``[order][migratetype]``),
        ``blocks`` (:class:`FreeBlock`: node, zone, order, migratetype, first pfn, in
        list order), ``pcp`` (:class:`PcpList`: cpu, index in ``pcp->lists[]``, order,
        migratetype, first pfns), ``pcp_count`` (cpu -> ``pcp->count``, in pages),
        ``free_pages_counter`` (NR_FREE_PAGES in pages, per-CPU diffs folded in; None if
        it cannot be read) and ``problems``
    :raises TargetError: a type or member is missing from the debug info
    :raises FaultError: a ``struct zone`` cannot be read
    """
    return _fl.freelists(_fresh(prog), pcp=pcp)


def check(prog: drgn.Program) -> CheckReport:
    """
    Walk the free lists and the per-CPU lists of every populated zone (as
    :func:`freelists`) and verify them against what the kernel keeps: every free-list
    entry is PageBuddy (``page_type``) with the list's order in ``page->private``
    (mm/page_alloc.c set_buddy_order()), aligned to its order and inside the zone; no
    list has a cycle, a wrong ``prev`` link or a block that is also on another list; the
    blocks on each order's lists number ``free_area[order].nr_free``; their pages, the
    MIGRATE_ISOLATE lists excluded, equal ``zone_page_state_snapshot(zone,
    NR_FREE_PAGES)``; each CPU's per-CPU lists hold ``pcp->count`` pages.  Then every
    slab of every cache (:func:`memscope.mm.slub_debug.check_slabs`): freelists decoded and
    bounded (cycles, pointers off an object boundary), ``inuse`` against the freelist,
    objects free twice, sheaves holding other caches' objects, and on caches with SLUB
    debugging each object's red zones and poison as mm/slub.c check_object() checks them
    (``report.slabs`` counts what was walked).

    On a frozen dump a healthy kernel gives no problem; on a live target lists and
    counters move under the read and the differences are reported as problems too.

    >>> report = check(prog)
    >>> report.ok, report.zones[0].free_pages, report.zones[0].free_pages_counter
    (True, 3808, 3808)

    :param prog: the kernel
    :return: a :class:`CheckReport`; ``ok`` is False when any :class:`Problem` was
        found (``kind`` names it: cycle, not_buddy, nr_free_mismatch, ...)
    :raises TargetError: a type or member is missing from the debug info
    :raises FaultError: a ``struct zone`` cannot be read
    """
    return _check.check(_fresh(prog))


def pages(prog: drgn.Program) -> list[ZonePages]:
    """
    Classify every physical page of every populated zone from its ``struct page``
    (include/linux/mm_types.h, include/linux/page-flags.h), the whole memmap read in bulk
    section by section (``mem_section[]``, SPARSEMEM_VMEMMAP), and count the classes per
    zone.  The classes and the order of the decisions are in :mod:`memscope.mm.page`:
    hole, buddy, pcp, slab, kmalloc_large, pagetable, hugetlb, offline, reserved, anon,
    pagecache, free, kernel, other.  A compound page's tails take its head's class.

    A section whose memmap cannot be read counts as holes; a struct page that
    contradicts the others (a tail without a PG_head head, overlapping buddy blocks, a
    pcp page that is PageBuddy or referenced) counts in ``inconsistent`` (none on a
    frozen dump; a live target changes under the read).

    :param prog: the kernel
    :return: one :class:`ZonePages` per populated zone: ``counts`` (class -> pages),
        ``buddy_blocks`` (free blocks per order), ``pcp_pages``, ``compound_tails`` and
        ``inconsistent`` (pages), and the zone's pfn span
    :raises TargetError: a type, member or enumerator is missing from the debug info, or
        the memmap cannot be located (``mem_section``, SECTION_SIZE_BITS, vmemmap)
    :raises FaultError: a ``struct zone`` or ``mem_section[]`` root cannot be read
    """
    return _page.zone_counts(_fresh(prog))


def page_records(prog: drgn.Program, lo: int, hi: int) -> list[PageRecord]:
    """
    Get the decoded ``struct page`` of every pfn in [*lo*, *hi*), classified as
    :func:`pages` classifies it (``memscope pages --pfn LO-HI``).

    >>> page_records(prog, 0x1000, 0x1001)[0].cls
    'kernel'

    :param prog: the kernel
    :param lo: first pfn (``lo >= 0``)
    :param hi: end pfn, exclusive; clipped to the end of the last zone's span
    :return: one :class:`PageRecord` per pfn, in pfn order (empty when *lo* is past the
        end); a pfn without a readable struct page, or outside every zone, is a record of
        class ``"hole"``
    :raises TargetError: as :func:`pages`
    :raises FaultError: as :func:`pages`
    """
    return _page.page_records(_fresh(prog), lo, hi)


def pageblocks(prog: drgn.Program) -> list[ZonePageblocks]:
    """
    Get the state of every pageblock of every populated zone: its migratetype, the
    compaction skip bit and the isolate bit (``mem_section[]->usage->pageblock_flags``,
    include/linux/pageblock-flags.h, read as mm/page_alloc.c
    get_pfnblock_flags_mask() reads them), and the "mixed" blocks whose free pages sit on
    another migratetype's free list than the block's own.

    ``counts`` counts the blocks /proc/pagetypeinfo's "Number of blocks type" counts
    (mm/vmstat.c pagetypeinfo_showblockcount_print(): the pfns ``zone_start_pfn + k *
    pageblock_nr_pages`` with an online struct page), except that a block whose page
    belongs to another zone with an overlapping span (ZONE_MOVABLE, interleaved nodes)
    is counted here and skipped there; where no spans overlap (every lab case) the two
    are equal.

    :param prog: the kernel
    :return: one :class:`ZonePageblocks` per populated zone: ``counts`` (migratetype
        name -> pageblocks), ``skip``, ``isolate`` (pageblocks), ``mixed`` (block
        migratetype name -> pageblocks), ``mixed_free_pages`` (pages),
        ``pageblock_order`` and the zone's pfn span, and ``list_findings``
        (:class:`Problem` records: what the free-list walk found wrong with the lists)
    :raises TargetError: a type, member or enumerator is missing from the debug info, or
        the memmap cannot be located
    :raises FaultError: a ``struct zone`` or ``mem_section[]`` root cannot be read
    """
    return _pageblock.zone_pageblocks(_fresh(prog))


def frag(prog: drgn.Program, gfp: str = "kernel") -> list[ZoneFrag]:
    """
    Get, per populated zone and per order, the external fragmentation indices and
    whether an allocation of that order would be granted now.

    - The unusable free space index and the fragmentation index are mm/vmstat.c
      unusable_free_index() and __fragmentation_index() on ``free_area[].nr_free``
      (fill_contig_page_info()), as /sys/kernel/debug/extfrag/unusable_index and
      extfrag_index print them.
    - The decision is mm/page_alloc.c zone_watermark_fast() / __zone_watermark_ok() for
      *gfp*'s highest zone and alloc flags, against the low mark (get_page_from_freelist()'s
      first try, "fast") and the min mark with the class's reserve flags (the slow path
      before reclaim, "min"); :mod:`memscope.mm.frag` says what is and is not modelled.

    >>> [o.extfrag for o in frag(prog)[1].orders][:2]
    ['-1.000', '-1.000']

    :param prog: the kernel
    :param gfp: ``"kernel"`` (GFP_KERNEL), ``"movable"`` (GFP_HIGHUSER_MOVABLE) or
        ``"atomic"`` (GFP_ATOMIC)
    :return: one :class:`ZoneFrag` per populated zone, with one
        ``memscope.mm.frag.OrderFrag`` per order in ``orders``; counters and watermarks
        in pages, indices in thousandths (int) and as ``"%d.%03d"`` strings
    :raises TargetError: *gfp* is not one of the three classes (when the kernel has a
        populated zone), or a type, member or enumerator is missing from the debug info
    :raises FaultError: a ``struct zone`` cannot be read
    """
    return _frag.zone_frag(_fresh(prog), gfp)


def meminfo(prog: drgn.Program) -> Meminfo:
    """
    Get /proc/meminfo as the kernel would print it now: every line of that kernel's
    fs/proc/meminfo.c ``meminfo_proc_show()``, in its order, with its arithmetic (global
    vm_stat counters clamped at 0, ``si_mem_available()``, ``vm_commit_limit()``,
    ``percpu_counter_sum_positive(&vm_committed_as)``, ``hugetlb_report_meminfo()``, x86
    ``arch_report_meminfo()``); :mod:`memscope.mm.meminfo` lists the source of each line.

    >>> info = meminfo(prog)
    >>> info["MemTotal"], info.lines[0].unit
    (474576, 'kB')
    >>> print(format_meminfo(info), end="")

    :param prog: the kernel
    :return: a :class:`Meminfo` (``lines``: :class:`MeminfoLine` records with ``name``,
        ``value`` in kB, or a count for ``HugePages_*``, ``unit``, ``width`` and
        ``source``; ``problems``: corruption found walking the block-device inodes)
    :raises TargetError: a variable, type or enumerator the file needs is missing (the
        message names it)
    :raises FaultError: a variable cannot be read
    """
    return _meminfo.meminfo(_fresh(prog))


def vmallocinfo(prog: drgn.Program) -> VmallocInfo:
    """
    Get every line of /proc/vmallocinfo (mm/vmalloc.c ``vmalloc_info_show()``): the busy
    vmap areas in the kernel's list order (``vmap_area_list`` up to v6.8, each
    ``vmap_nodes[i].busy`` list from v6.9), then the lazily freed ones ("unpurged"), with
    each version's rules (:mod:`memscope.mm.vmalloc`).  :func:`format_vmallocinfo` prints
    them as the kernel does, callers as ``%pS`` (the kernel's own kallsyms).

    >>> vmallocinfo(prog).areas[1].caller_name
    'acpi_os_map_iomem+0x1a9/0x1e0'

    :param prog: the kernel
    :return: a :class:`VmallocInfo`: ``areas``, one :class:`VmallocArea` per line (sizes
        in bytes, guard page included; ``nr_pages`` in pages; ``nodes`` pages per node),
        and ``problems``, what the bounded list walks found (a cycle, an unreadable
        entry), as :class:`memscope.kernel.problem.Problem` records
    :raises TargetError: the kernel has none of the lists, or a type or member is missing
        from the debug info
    """
    return _vmalloc.vmallocinfo(_fresh(prog))


def vmalloc_by_caller(prog: drgn.Program) -> list[CallerUsage]:
    """
    Get vmalloc use per allocating function and kind of area, largest first (what
    ``memscope vmalloc`` prints).

    :param prog: the kernel
    :return: one :class:`CallerUsage` per (caller, kind): areas, bytes (guard pages
        included) and pages mapped
    :raises TargetError: as :func:`vmallocinfo`
    """
    return _vmalloc.by_caller(_vmalloc.vmallocinfo(_fresh(prog)))


def cma(prog: drgn.Program) -> list[CmaArea] | None:
    """
    Get every CMA area as ``memscope cma`` lists them (:mod:`memscope.mm.cma`).

    :param prog: the kernel
    :return: one :class:`CmaArea` per ``cma_areas[]`` entry (pages; an empty list when
        the kernel reserved none), or None when it has no CONFIG_CMA
    :raises TargetError: as :func:`memscope.mm.cma.cma_areas`
    """
    return _cma.cma_areas(_fresh(prog))


def _cma_area(ctx: KernelContext, name: str) -> CmaArea:
    area = _cma.find_area(_cma.cma_areas(ctx) or [], name)
    if area is None:
        raise _TargetError(f"no CMA area named {name!r}")
    return area


def cma_map(prog: drgn.Program, name: str) -> list[ChunkRun]:
    """
    Get CMA area NAME chunk by chunk (``memscope cma NAME --map``).

    :param prog: the kernel
    :param name: the area's ``cma->name``
    :return: the :class:`ChunkRun` records, in pfn order
    :raises TargetError: no such area (or no CMA), or as
        :func:`memscope.mm.cma.chunk_map`
    """
    ctx = _fresh(prog)
    return _cma.chunk_map(ctx, _cma_area(ctx, name))


def cma_can_alloc(prog: drgn.Program, name: str, count: int, align: int = 0) -> CanAlloc:
    """
    Would ``cma_alloc()`` of COUNT pages aligned to 2^ALIGN pages from area NAME succeed
    now (``memscope cma NAME --can-alloc COUNT --align ALIGN``)?

    :param prog: the kernel
    :param name: the area's ``cma->name``
    :param count: pages (> 0)
    :param align: alignment order
    :return: a :class:`CanAlloc`
    :raises TargetError: no such area (or no CMA), or as :func:`memscope.mm.cma.can_alloc`
    """
    ctx = _fresh(prog)
    return _cma.can_alloc(ctx, _cma_area(ctx, name), count, align)


def ps(prog: drgn.Program, threads: bool = False) -> list[Task]:
    """
    Get every process (with *threads*, every thread) as ``memscope ps`` lists them: the
    task list from ``init_task`` (pid 0 included), each with its state letter as /proc
    prints it, its CPU and its RSS counters (:mod:`memscope.mm.task`).

    :param prog: the kernel
    :param threads: list every thread of every process
    :return: one :class:`Task` per process or thread; ``rss`` in pages per counter
    :raises TargetError: a type or member is missing from the debug info
    """
    return _task.tasks(_fresh(prog), threads, names=True)


def maps(prog: drgn.Program, pid: int) -> list[Vma]:
    """
    Get process *pid*'s VMAs as /proc/PID/maps lists them (fs/proc/task_mmu.c
    ``show_map_vma()``; :mod:`memscope.mm.vma`); :func:`format_maps` prints the file.

    :param prog: the kernel
    :param pid: the process (thread-group leader) id
    :return: one :class:`Vma` per mapping in address order, the gate VMA last
    :raises TargetError: no such process, a kernel thread, or a missing type or member
    """
    ctx = _fresh(prog)
    return _vma.vmas(ctx, _task.find_task(ctx, pid))


def heap(prog: drgn.Program, pid: int) -> HeapReport:
    """
    Get process *pid*'s glibc malloc heap as ``memscope heap`` shows it: the brk heap
    ``[start_brk, brk)`` read through the process's page tables and walked chunk by chunk
    (``struct malloc_chunk`` headers), tcache entries told apart, and the anonymous
    mappings that hold malloc mmap chunks (:mod:`memscope.mm.heap`).

    :param prog: the kernel
    :param pid: the process id
    :return: a :class:`HeapReport` (addresses and sizes in bytes; ``missing`` the heap
        pages not mapped or not in the dump; ``tiles`` whether the chunks cover the heap
        exactly, the top chunk ending at ``brk``)
    :raises TargetError: no such process, or a kernel thread
    """
    ctx = _fresh(prog)
    return _heap.heap(ctx, _task.find_task(ctx, pid))


def mempools(prog: drgn.Program) -> MempoolScan:
    """
    Find every mempool (mm/mempool.c ``mempool_t``): the kernel keeps no list of them, so
    the kernel image's data and every slab object are scanned for the kernel's own
    mempool callbacks and each hit is checked (:mod:`memscope.mm.mempool`).

    :param prog: the kernel
    :return: a :class:`MempoolScan`: ``pools`` (:class:`Mempool` records: element sizes
        in bytes, counts in elements) and ``rejected``, hits the checks refused
    :raises TargetError: the kernel has no mempool callbacks
    """
    return _mempool.mempools(_fresh(prog))


def mempool(prog: drgn.Program, addr: int) -> Mempool:
    """
    Read the ``mempool_t`` at *addr* (mm/mempool.c) and the elements it holds, checked as
    :func:`mempools` checks what it finds (:func:`memscope.mm.mempool.mempool`).

    >>> ms.mempool(prog, prog["fs_bio_set"].bio_pool.address_of_().value_()).min_nr
    2

    :param prog: the kernel
    :param addr: the address of a ``mempool_t`` (a global's, a member's, a slab object's)
    :return: a :class:`Mempool`: counts in elements, ``element_size`` in bytes,
        ``elements`` the addresses of the ``curr_nr`` elements held, ``owner`` ``%pS`` of
        *addr* ("" when no symbol covers it)
    :raises TargetError: *addr* is not a mempool_t this kernel could be using, or the
        kernel has no mempool callbacks
    """
    return _mempool.mempool(_fresh(prog), addr)


def vtop(prog: drgn.Program, addr: int, pid: int | None = None) -> Translation:
    """
    Translate virtual address *addr* through the page tables, level by level, as crash's
    ``vtop`` does: the kernel's tables (``init_mm.pgd``), or with *pid* that process's
    (``mm->pgd``; on arm64 the upper half is always the kernel's), and say what the
    physical page is (:mod:`memscope.mm.vtop`).  ``physical`` is what drgn's
    ``follow_phys(mm, addr)`` returns, None where it would raise ``FaultError``.

    :param prog: the kernel
    :param addr: a 64-bit virtual address
    :param pid: a process id (thread-group leader), or None for the kernel's tables
    :return: a :class:`Translation` (physical addresses in bytes; ``steps`` top level
        first); an address that is not mapped is a Translation with ``physical`` None
    :raises TargetError: *addr* is not canonical, no such process, or a kernel thread
    """
    ctx = _fresh(prog)
    return _vtop.vtop(ctx, addr, _task.find_task(ctx, pid) if pid is not None else None)


def smaps_rollup(prog: drgn.Program, pid: int) -> Rollup:
    """
    Reproduce process *pid*'s /proc/PID/smaps_rollup from its page tables and struct
    pages with its kernel's arithmetic (fs/proc/task_mmu.c ``smaps_account()``;
    :mod:`memscope.mm.smaps`); :func:`format_smaps_rollup` prints the file (it raises
    :class:`memscope.mm.smaps.NotReproducible` naming a line the dump does not determine).

    :param prog: the kernel
    :param pid: the process (thread-group leader) id
    :return: a :class:`Rollup`: ``values`` line label -> bytes (the lines this kernel
        prints, in its order), ``unknown`` label -> why the dump does not determine it
    :raises TargetError: no such process, a kernel thread, or a missing type or member
    """
    ctx = _fresh(prog)
    return _smaps.smaps_rollup(ctx, _task.find_task(ctx, pid))


# --- drgn command registration -------------------------------------------------------
def slabinfo(prog: drgn.Program) -> list[SlabInfo]:
    """
    Get /proc/slabinfo's numbers (mm/slab_common.c cache_show(), mm/slub.c
    get_slabinfo()): one line per cache on ``slab_caches``, in list order, with the
    target kernel's arithmetic (``active_objs`` is ``num_objs`` less the free objects of
    the node partial lists, approximated from 10000 slabs by 6.10+ kernels past that
    many).  :func:`format_slabinfo` prints them as the kernel does.

    >>> dentry = next(r for r in slabinfo(prog) if r.name == "dentry")
    >>> dentry.active_objs, dentry.num_objs, dentry.objsize, dentry.num_slabs
    (9032, 15456, 192, 736)

    :param prog: the kernel (built with CONFIG_SLUB_DEBUG, as Debian's are)
    :return: one :class:`SlabInfo` per cache; counts are objects and slabs, ``objsize``
        bytes
    :raises TargetError: a type, member or symbol SLUB needs is missing
    :raises FaultError: ``slab_caches`` or a cache on it cannot be read
    """
    return _slub.slabinfo(_fresh(prog))


def slab_usage(prog: drgn.Program) -> list[CacheUsage]:
    """
    Walk every slab of every cache (``memscope slabinfo --walk``): the slab pages from the
    memmap decoded once, each slab's freelist decoded (hardened pointers, bounded by the
    slab's object count), the CPU freelists and CPU partial lists (to 6.19), the sheaves
    and barns (6.18+); KFENCE objects counted apart.

    :param prog: the kernel
    :return: one :class:`CacheUsage` per cache in ``slab_caches`` order: object counts
        (allocated, free in slabs, per CPU, in sheaves, rcu_free, in barns, KFENCE),
        slabs per place, bytes; corruption as its ``problems``
    :raises TargetError: as :func:`slabinfo` and :func:`pages`
    """
    return _slub.slab_usage(_fresh(prog))


def kmalloc(prog: drgn.Program) -> list[KmallocCache]:
    """
    Get kmalloc's caches (``memscope kmalloc``): every slot of the kernel's
    ``kmalloc_caches[type][index]`` (kinds from ``enum kmalloc_cache_type``), its cache's
    objects, allocated bytes against its slabs' memory, and where SLUB debugging stores
    each object's requested size (``orig_size``, 6.1+), the bytes asked for.

    :param prog: the kernel
    :return: one :class:`KmallocCache` per slot holding a cache, by type then index
        (bytes in bytes; ``requested_bytes`` None when the cache stores no sizes)
    :raises TargetError: the debug info has no ``kmalloc_caches`` or ``enum
        kmalloc_cache_type``, and as :func:`slab_usage`
    """
    return _kmalloc.kmalloc_caches(_fresh(prog))


def slab(prog: drgn.Program, name: str) -> CacheWalk:
    """
    Get the slabs of the cache NAME and where each free object waits (``memscope slab
    NAME``); ``memscope.mm.slub.object_addresses()`` and ``allocated_mask()`` give its
    objects.

    :param prog: the kernel
    :param name: the cache's name, as /proc/slabinfo prints it
    :return: a :class:`CacheWalk`: ``slabs`` (numpy arrays per slab: pfn, struct slab
        address, memory, node, objects, inuse, place), ``free`` (free object address ->
        ``"slab"``, ``"cpu N"``, ``"sheaf main N"``, ...), ``problems``
    :raises TargetError: no cache has that name, or as :func:`slab_usage`
    """
    ctx = _fresh(prog)
    return _slub.cache_walk(ctx, _slub.find_kmem_cache(ctx, name))


def whatis(prog: drgn.Program, addr: int) -> WhatIs:
    """
    Say what the kernel address ADDR is (``memscope whatis ADDR``): a slab object (cache,
    ``struct slab *``, index, offset in the object, allocated or free and where), a
    KFENCE object, a large kmalloc, else the class of its page (buddy with its block,
    pcp, pagecache, anon, pagetable, hugetlb, reserved, kernel...), a struct page
    (``"memmap"``), or the kernel region (``"kernel image"``, ``"modules"``,
    ``"vmalloc"``; ``"unknown"`` outside them).

    >>> whatis(prog, prog["init_task"].mm.value_() or 0).kind
    'unknown'

    :param prog: the kernel
    :param addr: a virtual address
    :return: a :class:`WhatIs`
    :raises TargetError: as :func:`slab_usage`
    """
    return _slub.whatis(_fresh(prog), int(addr))


def _whole(fn):
    """FN, made to raise :class:`~memscope.target.base.FaultError` (with ``missing``, the
    first page) when a read it made fell into a hole of the dump and was carried past:
    the records would lack what the page held (the CLI's one-line error is the same
    check, memscope.commands.execute)."""
    import functools

    @functools.wraps(fn)
    def checked(prog, *args, **kwargs):
        t = context_for(prog).t
        t.forget_missing_pages()
        out = fn(prog, *args, **kwargs)
        missing = t.missing_pages_read()
        if missing:
            raise FaultError(missing[0].phys, 1, missing[0])
        return out

    return checked


# check is not wrapped: a missing page it needed is one of its problems (missing_page).
for _name in ("buddyinfo", "pagetypeinfo", "freelists", "pages", "page_records",
              "pageblocks", "frag", "meminfo", "vmallocinfo", "vmalloc_by_caller", "ps",
              "maps", "heap", "mempools", "slabinfo", "slab_usage", "slab", "whatis"):
    globals()[_name] = _whole(globals()[_name])


def _register() -> bool:
    try:
        from drgn.commands import argument, command
    except ImportError:  # drgn < 0.0.31 has no command API
        return False
    from . import commands as _commands

    _commands._load()
    names = sorted(_commands.COMMANDS)

    @command(
        name="memscope",
        description="memscope: kernel memory-management state (" + ", ".join(names) + ")",
        arguments=(
            argument("subcommand", choices=names, help="the memscope command to run"),
            argument("-f", "--format", choices=("table", "json", "proc"), default="table",
                     help="output format (default: table)"),
            argument("rest", nargs=argparse.REMAINDER,
                     help="the subcommand's own options, as on the command line"),
        ),
    )
    def _cmd_memscope(prog: drgn.Program, name: str, args: argparse.Namespace,
                      **kwargs: Any) -> int:
        import sys

        from .cli import _Parser
        from .commands import MOVED_NOTE, add_subparsers, execute, execute_live
        from .errors import MemscopeError

        # The command line's parser: a bad option is one line "memscope: ..." on stderr
        # (argparse's own prints its usage too).
        parser = _Parser(prog="memscope", add_help=False)
        add_subparsers(parser)
        try:
            sub = parser.parse_args([args.subcommand, "-f", args.format, *args.rest])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 2
        moved = False
        try:
            if prog.flags & drgn.ProgramFlags.IS_LIVE:
                text, status, moved = execute_live(context_for(prog), sub)
            else:
                text, status = execute(context_for(prog), sub)
        except MemscopeError as e:
            print(f"memscope: {e}", file=sys.stderr)
            return e.exit_status
        print(text, end="")
        if moved:
            print(MOVED_NOTE, file=sys.stderr)
        return status

    return True


#: Whether the ``memscope`` drgn command was registered (drgn has a command API).
DRGN_COMMAND_REGISTERED = _register()
