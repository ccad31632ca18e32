"""Replay: the state of dump A, every event the kernel traced between A and B, through the
reference models (:mod:`memscope.model.buddy`, :mod:`memscope.model.slab`), compared with
the state of dump B.

The events are B's ring buffer's window after A (:func:`memscope.kernel.ftrace.window`),
merged across CPUs in time order (the buddy lists are global to a zone: their updates
under ``zone->lock`` happen in that order), or a text trace.  The states are read by
:mod:`memscope.mm` through the Target.

Records (:class:`memscope.model.buddy.Agreement`), one per allocator: ``allocator``
(``buddy``, ``pcp``, ``slab``; ``cma`` where the kernel has a CMA area, ``vmalloc`` where
it has the vmalloc tracepoints), ``matched``, ``missing``, ``extra`` (blocks, objects,
bitmap bits or areas), ``divergences`` (each with its kind, pfn or address, event and
cause; a CMA one with its ``count`` of pages, a vmalloc one with its ``size`` in bytes).
"""

from __future__ import annotations

import dataclasses
import struct

from ..kernel import ftrace
from ..mm import freelists as _freelists
from ..mm import pageblock as _pageblock
from ..mm.context import KernelContext
from ..target.base import TargetError
from .buddy import Agreement, BuddyModel, Rules, compare, touched_pfns

__all__ = ("BuddyState", "Replay", "buddy_rules", "buddy_state", "replay", "window_events")


@dataclasses.dataclass
class BuddyState:
    """The buddy allocator's state as :class:`BuddyModel` takes it, read from a dump.

    :param zones: (start pfn, end pfn, "node N zone NAME") of each populated zone.
    :param free: pfn -> (order, migratetype value) of every free block.
    :param pcp: pfn -> (cpu, order) of every block on a pcp list.
    :param pageblock: pageblock index -> migratetype value.
    """

    zones: list[tuple[int, int, str]]
    free: dict[int, tuple[int, int]]
    pcp: dict[int, tuple[int, int]]
    pageblock: dict[int, int]


def buddy_rules(ctx: KernelContext) -> Rules:
    """The :class:`Rules` of the kernel of CTX, from its debug info:

    - ``max_order``: ``len(zone.free_area) - 1``;
    - ``pcp_orders``: the orders of the ``pcp->lists[]`` (``pindex_to_order()``; 5.10
      has order-0 lists only: high-order pages on pcp lists came in v5.13, 44042b449872
      "mm/page_alloc: allow high-order pages to be stored on the per-cpu lists");
    - ``steal_emits_zone_locked``: False where ``enum rmqueue_mode`` has ``RMQUEUE_STEAL``
      (6.12.117's ``__rmqueue_steal()`` emits only ``mm_page_alloc_extfrag``), True before
      (5.10's and 6.1's ``__rmqueue()`` retries ``__rmqueue_smallest()`` after
      ``steal_suitable_fallback()``, which emits ``zone_locked``)."""
    t = ctx.t
    nlists = _freelists.pcp_layout(ctx)[4]
    pcp_orders = frozenset(_freelists.pindex_to_order(ctx, i, nlists) for i in range(nlists))
    try:
        t.constant("RMQUEUE_STEAL")
        steal_zone_locked = False
    except TargetError:
        steal_zone_locked = True
    mts = ctx.migratetypes
    return Rules(max_order=ctx.nr_orders - 1, pageblock_order=_pageblock.pageblock_order(ctx),
                 pcp_orders=pcp_orders, pcptypes=mts.get("MIGRATE_PCPTYPES", 3),
                 isolate=mts.get("MIGRATE_ISOLATE"),
                 steal_emits_zone_locked=steal_zone_locked)


def buddy_state(ctx: KernelContext) -> BuddyState:
    """Read the free lists, pcp lists and pageblock migratetypes of CTX
    (:func:`memscope.mm.freelists.freelists`,
    :func:`memscope.mm.pageblock.pageblock_migratetypes`)."""
    names = _pageblock.migratetype_names(ctx)
    value = {n: i for i, n in enumerate(names)}
    po = _pageblock.pageblock_order(ctx)
    zones, free, pcp, pageblock = [], {}, {}, {}
    for z in ctx.all_zones():
        zones.append((z.zone_start_pfn, z.end_pfn, f"node {z.node} zone {z.name}"))
        mts = _pageblock.pageblock_migratetypes(ctx, z)
        first = z.zone_start_pfn >> po
        for i, mt in enumerate(mts.tolist()):
            if mt >= 0:
                pageblock[first + i] = mt
    for zf in _freelists.freelists(ctx):
        for b in zf.blocks:
            free[b.pfn] = (b.order, value.get(b.migratetype, -1))
        for pl in zf.pcp:
            for pfn in pl.pfns:
                pcp[pfn] = (pl.cpu, pl.order)
    return BuddyState(zones, free, pcp, pageblock)


def window_events(a: KernelContext, b: KernelContext) -> tuple[list, list]:
    """The events of B's ring buffer written after A's last one, as
    :class:`memscope.events.Event` s in time order, and the per-CPU
    :class:`memscope.kernel.ftrace.CpuWindow` s (what was lost).

    :raises TargetError: B is not a later dump of A's boot."""
    from ..events import from_ring

    ta, tb = ftrace.read_trace(a.t, with_formats=False), ftrace.read_trace(b.t)
    events, parts = ftrace.window(ta, tb)
    return from_ring(ftrace.TraceBuffer(tb.cpus, events, tb.formats, tb.problems)), parts


@dataclasses.dataclass
class Replay:
    """A replay's outcome.

    :param agreements: one :class:`Agreement` per allocator.
    :param events: events in the window.
    :param applied: events the models applied (the others are of no model's kind).
    :param lost: events written in the window and no longer in the buffer.
    """

    agreements: list[Agreement]
    events: int
    applied: int
    lost: int

    def to_json(self) -> dict:
        return {"events": self.events, "applied": self.applied, "lost": self.lost,
                "allocators": [a.to_json() for a in self.agreements]}


def vmalloc_pages(ctx: KernelContext, starts: set[int]) -> dict[int, str]:
    """pfn -> description of each page mapped by the vmalloc areas of CTX that start at
    one of STARTS (``vm->pages[0..nr_pages)``, struct page pointers turned into pfns)."""
    from ..mm import vmalloc as _vmalloc
    from ..mm.memmap import page_layout, vmemmap_base

    if not starts:
        return {}
    t = ctx.t
    vm_of = t.layout("struct vmap_area").offset("vm")
    vml = t.layout("struct vm_struct")
    base, size = vmemmap_base(ctx), page_layout(ctx).size
    out: dict[int, str] = {}
    for area in _vmalloc.vmallocinfo(ctx).areas:
        if area.kind != "vm_struct" or area.start not in starts or not area.nr_pages:
            continue
        vm = t.read_u64(area.vmap_area + vm_of)
        pages = t.read_u64(vm + vml.offset("pages"))
        for (page,) in struct.iter_unpack("<Q", t.read(pages, 8 * area.nr_pages)):
            out[(page - base) // size] = (f"vmalloc area {area.start:#x} "
                                          f"({area.caller_name or 'no caller'})")
    return out


def new_vmalloc_areas(a: KernelContext, b: KernelContext) -> set[int]:
    """Start addresses of the vmalloc areas (with a ``vm_struct``) of B that A does not
    have: the areas allocated in the window (the vmalloc tracepoints exist only from
    v6.10, so they are found by comparing the dumps)."""
    from ..mm import vmalloc as _vmalloc

    def areas(ctx: KernelContext) -> set[tuple[int, int]]:
        return {(x.start, x.vmap_area) for x in _vmalloc.vmallocinfo(ctx).areas
                if x.kind == "vm_struct"}

    return {start for start, _ in areas(b) - areas(a)}


def explain_bulk(agreements: list[Agreement], a: KernelContext, b: KernelContext) -> None:
    """Give the blocks predicted on a pcp list (or free) that B has mapped by a vmalloc
    area allocated in the window (:func:`new_vmalloc_areas`) their cause:
    ``vm_area_alloc_pages()`` takes its pages with ``alloc_pages_bulk()``, which takes
    them off the pcp lists (``__rmqueue_pcplist()``) without emitting ``mm_page_alloc``
    (mm/page_alloc.c ``__alloc_pages_bulk()``)."""
    if not any(d.kind == "extra" for g in agreements for d in g.divergences):
        return
    pfns = vmalloc_pages(b, new_vmalloc_areas(a, b))
    for g in agreements:
        for i, d in enumerate(g.divergences):
            if d.kind == "extra" and d.pfn in pfns:
                g.divergences[i] = dataclasses.replace(d, cause=(
                    f"mapped in the later state by the {pfns[d.pfn]} allocated in the "
                    "window: vmalloc takes its pages with alloc_pages_bulk(), which emits "
                    "no mm_page_alloc per page"))


def replay_buddy(a: KernelContext, b: KernelContext, events: list) -> tuple[list[Agreement], int]:
    """The buddy model from A's state through EVENTS, compared with B's state (pages
    taken by the bulk allocator explained: :func:`explain_bulk`)."""
    sa, sb = buddy_state(a), buddy_state(b)
    model = BuddyModel(buddy_rules(a), sa.zones, sa.free, sa.pcp, sa.pageblock)
    model.apply_all(events)
    agreements = compare(model, sb.free, sb.pcp, touched_pfns(events))
    explain_bulk(agreements, a, b)
    return agreements, model.applied


def replay(a: KernelContext, b: KernelContext, events: list | None = None,
           lost: int = 0) -> Replay:
    """Replay the window between dumps A and B (EVENTS: B's ring buffer's window after
    A when None) through the buddy and slab models.

    :raises TargetError: B is not a later dump of A's boot, or a layout is missing."""
    if events is None:
        events, parts = window_events(a, b)
        lost = sum(p.lost for p in parts)
    agreements, applied = replay_buddy(a, b, events)
    from .slab import replay_slab

    slab, applied_slab = replay_slab(a, b, events)
    agreements.append(slab)
    more, applied_more = replay_cma_vmalloc(a, b, events)
    agreements += more
    if any(g.allocator == "cma" for g in more):
        from .cma import explain_contig

        explain_contig(agreements, events, _pageblock.pageblock_order(a))
    return Replay(agreements, len(events), applied + applied_slab + applied_more, lost)


def replay_cma_vmalloc(a: KernelContext, b: KernelContext,
                       events: list) -> tuple[list[Agreement], int]:
    """The CMA model (:mod:`memscope.model.cma`: a ``cma`` record when A has an
    activated CMA area) and the vmalloc model (:mod:`memscope.model.vmalloc`: a
    ``vmalloc`` record when the kernel has the vmalloc tracepoints) through EVENTS, and
    how many events they applied."""
    from .cma import replay_cma
    from .vmalloc import replay_vmalloc

    out, applied = [], 0
    for got in (replay_cma(a, b, events), replay_vmalloc(a, b, events)):
        if got is not None:
            out.append(got[0])
            applied += got[1]
    return out, applied
