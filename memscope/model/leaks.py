"""``replay --leaks``: what the window between dumps A and B allocated and B still holds,
grouped by call site, largest first.

From the window's events (:func:`memscope.model.replay.window_events`, or a text trace):

- slab objects: every ``kmalloc``/``kmem_cache_alloc`` (and 5.10's ``*_node``) whose
  ``ptr`` no later ``kfree``/``kmem_cache_free`` of the window frees, kept only when B's
  slabs hold it allocated (:func:`memscope.model.slab.allocated_objects`: an object freed
  by a path without a tracepoint, ``kmem_cache_free_bulk()`` or a ``kfree_rcu()`` batch, is
  not a leak).  Grouped by the event's ``call_site`` (``_RET_IP_`` of the allocation,
  include/trace/events/kmem.h), named as ``%pS`` names it, with the bytes the allocator gave
  (``bytes_alloc``) and the caches;
- large kmallocs (``bytes_alloc`` above ``KMALLOC_MAX_CACHE_SIZE``: pages, not a slab
  object) and KFENCE objects (from the KFENCE pool) are counted apart: B's state does not
  say object by object whether they are still allocated;
- pages: every ``mm_page_alloc`` block that no ``mm_page_free`` (same pfn) or
  ``mm_page_free_batched`` of the window frees and that B has on no free list or per-CPU
  list.  ``mm_page_alloc`` carries no call site: pages are grouped by order, GFP flags and
  migratetype.

Sizes are bytes; a group's ``count`` is objects (or blocks), ``bytes`` their sum.
"""

from __future__ import annotations

import collections
import dataclasses

from ..mm.context import KernelContext
from .slab import ALLOC_EVENTS, FREE_EVENTS, allocated_objects

__all__ = ("LeakGroup", "Leaks", "leaks")


@dataclasses.dataclass
class LeakGroup:
    """Objects (or page blocks) of one call site (or one page-allocation kind).

    :param site: the call site's address (int, from a dump's events), its ``%pS`` text
        (from a text trace), or, for pages, ``"order O gfp G migratetype M"``.
    :param symbol: ``%pS`` of the call site (``name+0xoff/0xsize``); for pages the site.
    :param count: objects or blocks.
    :param bytes: their size in bytes (``bytes_alloc`` of each object; pages: 2^order
        pages each).
    :param caches: the caches B holds the objects in (merged caches under the name B's
        ``kmem_cache`` has), sorted.
    :param addresses: the objects' addresses (pages: the blocks' first pfns), sorted.
    """

    site: int | str
    symbol: str
    count: int
    bytes: int
    caches: list[str]
    addresses: list[int]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Leaks:
    """What the window allocated and B still holds (see the module).

    :param objects: slab objects by call site, largest (bytes) first.
    :param pages: page blocks by order, GFP flags and migratetype, largest first.
    :param large_kmallocs: large kmallocs allocated and not freed in the window (not
        checked against B).
    :param kfence: KFENCE objects allocated and not freed in the window (not checked).
    :param freed_untraced: objects the window allocated and did not free whose slot B
        holds free: freed by a path without a tracepoint, so no leak.
    """

    objects: list[LeakGroup]
    pages: list[LeakGroup]
    large_kmallocs: int
    kfence: int
    freed_untraced: int

    def to_json(self) -> dict:
        return {"objects": [g.to_json() for g in self.objects],
                "pages": [g.to_json() for g in self.pages],
                "large_kmallocs": self.large_kmallocs, "kfence": self.kfence,
                "freed_untraced": self.freed_untraced}


def _free_pfns(free: dict[int, tuple[int, int]], pcp: dict[int, tuple[int, int]]):
    """A membership test for the pfns of B's free blocks and pcp blocks."""
    starts = {pfn: order for pfn, (order, _) in free.items()}
    starts.update({pfn: order for pfn, (_, order) in pcp.items()})
    orders = sorted(set(starts.values()))

    def is_free(pfn: int) -> bool:
        for o in orders:
            head = pfn >> o << o
            if starts.get(head) == o:
                return True
        return False
    return is_free


def leaks(b: KernelContext, events: list) -> Leaks:
    """The leaks of the window EVENTS at dump B (see the module).

    :raises TargetError: B's slabs or free lists cannot be read."""
    from .replay import buddy_state

    live: dict[int, dict] = {}
    pages: dict[int, dict] = {}
    for e in events:
        f = e.fields
        if e.name in ALLOC_EVENTS or e.name in FREE_EVENTS:
            ptr = f.get("ptr")
            if not isinstance(ptr, int) or not ptr:
                continue
            if e.name in ALLOC_EVENTS:
                live[ptr] = {**f, "event": e.name}
            else:
                live.pop(ptr, None)
        elif e.name == "mm_page_alloc":
            pfn = f.get("pfn")
            if isinstance(pfn, int):
                pages[pfn] = f
        elif e.name in ("mm_page_free", "mm_page_free_batched"):
            pages.pop(f.get("pfn"), None)
    held, pool = allocated_objects(b)
    large_min = 2 * b.t.page_size + 1  # KMALLOC_MAX_CACHE_SIZE + 1 (see model.slab)
    groups: dict[object, list] = collections.defaultdict(lambda: [0, 0, set(), []])
    large = kfence = untraced = 0
    for ptr, f in live.items():
        if pool[0] <= ptr < pool[1]:
            kfence += 1
            continue
        size = f.get("bytes_alloc", 0)
        size = size if isinstance(size, int) else 0
        if f["event"].startswith("kmalloc") and size >= large_min:
            large += 1
            continue
        if ptr not in held:
            untraced += 1
            continue
        g = groups[f.get("call_site")]
        g[0] += 1
        g[1] += size
        g[2].add(held[ptr])
        g[3].append(ptr)
    objects = [LeakGroup(site, _symbol(b, site), n, size, sorted(caches), sorted(addrs))
               for site, (n, size, caches, addrs) in groups.items()]
    objects.sort(key=lambda g: (-g.bytes, -g.count, str(g.symbol)))
    sb = buddy_state(b)
    is_free = _free_pfns(sb.free, sb.pcp)
    pgroups: dict[str, list] = collections.defaultdict(lambda: [0, 0, []])
    for pfn, f in pages.items():
        if is_free(pfn):
            continue
        order = f.get("order", 0)
        order = order if isinstance(order, int) and 0 <= order < 32 else 0
        gfp = f.get("gfp_flags")
        key = (f"order {order} gfp {gfp:#x}" if isinstance(gfp, int) else
               f"order {order} gfp {gfp}") + f" migratetype {f.get('migratetype')}"
        pgroups[key][0] += 1
        pgroups[key][1] += b.t.page_size << order
        pgroups[key][2].append(pfn)
    page_groups = [LeakGroup(k, k, n, size, [], sorted(pfns))
                   for k, (n, size, pfns) in pgroups.items()]
    page_groups.sort(key=lambda g: (-g.bytes, -g.count, g.symbol))
    return Leaks(objects, page_groups, large, kfence, untraced)


def _symbol(ctx: KernelContext, site) -> str:
    """``%pS`` of SITE (an int from a dump's events; text gives it already)."""
    from ..kernel.kallsyms import format_symbol
    from ..target.base import TargetError

    if not isinstance(site, int):
        return str(site)
    try:
        return format_symbol(ctx, site)
    except TargetError:
        return f"{site:#x}"
