"""A reference model of SLUB's allocated objects, driven by the kmem slab tracepoints
(mm/slub.c, mm/slab_common.c, include/trace/events/kmem.h).

State (:class:`SlabModel`): every allocated object, address -> cache name, as a dump's
slabs hold them (objects on no freelist, CPU freelist, sheaf or barn:
:func:`memscope.mm.slub.allocated_mask`); KFENCE objects (from the KFENCE pool, in no
slab) and large kmallocs (pages from the page allocator, ``kmalloc_large()``) are kept
apart.

Events:

- ``kmem_cache_alloc ptr`` (``slab_alloc_node()``'s ``trace_kmem_cache_alloc()``),
  ``kmalloc ptr bytes_alloc`` (``__kmalloc*()``'s ``trace_kmalloc()``), and 5.10's
  ``*_node`` variants: the object is allocated (``ptr`` 0: the allocation failed).  A
  kmalloc of more than ``KMALLOC_MAX_CACHE_SIZE`` (two pages under SLUB) is a large
  kmalloc: pages, not a slab object.
- ``kmem_cache_free ptr`` and ``kfree ptr``: the object is free again (``kfree(NULL)``
  is traced too, with ``ptr`` 0: nothing).

Paths without these tracepoints (``kmem_cache_alloc_bulk()``, ``kmem_cache_free_bulk()``
and the ``kfree_rcu()`` batches that free through it, objects freed by the slab's own
destruction) make the prediction diverge; :func:`compare_slab` names each object that
differs with its cache and the most likely cause.
"""

from __future__ import annotations

from ..mm import slub as _slub
from ..mm.context import KernelContext
from .buddy import Agreement, Divergence

__all__ = ("BULK_CACHES", "SlabModel", "allocated_objects", "compare_slab", "free_places", "replay_slab")

ALLOC_EVENTS = frozenset({"kmem_cache_alloc", "kmalloc", "kmem_cache_alloc_node",
                          "kmalloc_node"})
FREE_EVENTS = frozenset({"kmem_cache_free", "kfree"})


def allocated_objects(ctx: KernelContext) -> tuple[dict[int, str], tuple[int, int]]:
    """Every allocated slab object of the dump (address -> cache name) and the KFENCE
    pool's (start, end) addresses ((0, 0) without KFENCE)."""
    out: dict[int, str] = {}
    for c in _slub.kmem_caches(ctx):
        w = _slub.cache_walk(ctx, c)
        addr, _, _ = _slub.object_addresses(w)
        for a in addr[_slub.allocated_mask(w, addr)].tolist():
            out[int(a)] = c.name
    kf = _slub.kfence_objects(ctx)
    pool = (kf.pool, kf.pool + kf.pool_pages * ctx.t.page_size) if kf.pool else (0, 0)
    return out, pool


class SlabModel:
    """SLUB's allocated objects (see the module).

    :param live: address -> cache name of each allocated object.
    :param kfence: the KFENCE pool's (start, end): objects there are kept apart.
    :param large_min: the smallest ``bytes_alloc`` of a large kmalloc
        (``KMALLOC_MAX_CACHE_SIZE + 1``).
    """

    def __init__(self, live: dict[int, str], kfence: tuple[int, int], large_min: int):
        self.live: dict[int, str] = dict(live)
        self.kfence = kfence
        self.large_min = large_min
        self.large: set[int] = set()
        self.kfence_live: set[int] = set()
        self.divergences: list[Divergence] = []
        self.applied = 0

    def _in_kfence(self, ptr: int) -> bool:
        return self.kfence[0] <= ptr < self.kfence[1]

    def apply(self, name: str, f: dict) -> None:
        """Apply one event (name and fields); other events are ignored."""
        alloc = name in ALLOC_EVENTS
        if not alloc and name not in FREE_EVENTS:
            return
        ptr = f.get("ptr")
        if not isinstance(ptr, int) or not ptr:  # a failed allocation, kfree(NULL)
            return
        self.applied += 1
        if self._in_kfence(ptr):
            (self.kfence_live.add if alloc else self.kfence_live.discard)(ptr)
        elif alloc:
            if name.startswith("kmalloc") and f.get("bytes_alloc", 0) >= self.large_min:
                self.large.add(ptr)
                return
            if ptr in self.live:
                self.divergences.append(_alloc_live(ptr, name, self.live[ptr]))
            self.live[ptr] = f.get("name") or self.live.get(ptr, "?")
        elif ptr in self.large:
            self.large.discard(ptr)
        elif self.live.pop(ptr, None) is None:
            self.divergences.append(_free_not_live(ptr, name))


    def apply_all(self, events) -> None:
        """Apply EVENTS (:class:`memscope.events.Event` s) in order.  From a
        :class:`memscope.events.RingEvents`, only the slab events are looked at, from
        its columns, with the same outcome as :meth:`apply` on each."""
        from .buddy import _model_columns

        names = sorted(ALLOC_EVENTS | FREE_EVENTS)
        cols = _model_columns(events, {n: ("ptr", "bytes_alloc", "name") for n in names},
                              frozenset({"bytes_alloc", "name"})) \
            if _has_ptr_columns(events, names) else None
        if cols is None:
            for e in events:
                self.apply(e.name, e.fields)
            return
        # apply() on each, inlined (the same steps in the same order)
        alloc_k = {k for k, n in enumerate(names) if n in ALLOC_EVENTS}
        kmalloc_k = {k for k, n in enumerate(names) if n.startswith("kmalloc")}
        live, large, kfence_live, divs = self.live, self.large, self.kfence_live, \
            self.divergences
        lo, hi = self.kfence
        large_min = self.large_min
        applied = 0
        for k, _, ptr, bytes_alloc, cache, _ in zip(*cols):
            if not ptr:  # a failed allocation, kfree(NULL)
                continue
            applied += 1
            if lo <= ptr < hi:
                if k in alloc_k:
                    kfence_live.add(ptr)
                else:
                    kfence_live.discard(ptr)
            elif k in alloc_k:
                if k in kmalloc_k and (bytes_alloc or 0) >= large_min:
                    large.add(ptr)
                    continue
                if ptr in live:
                    divs.append(_alloc_live(ptr, names[k], live[ptr]))
                live[ptr] = cache or live.get(ptr, "?")
            elif ptr in large:
                large.discard(ptr)
            elif live.pop(ptr, None) is None:
                divs.append(_free_not_live(ptr, names[k]))
        self.applied += applied


def _alloc_live(ptr: int, event: str, cache: str) -> Divergence:
    return Divergence("alloc_live", ptr, 0, event, f"the model has this {cache} object "
                      "allocated already: its free had no tracepoint (kmem_cache_free_bulk, "
                      "a kfree_rcu batch) or was lost")


def _free_not_live(ptr: int, event: str) -> Divergence:
    return Divergence("free_not_live", ptr, 0, event, "the model has no such allocated "
                      "object: its allocation had no tracepoint (kmem_cache_alloc_bulk) or "
                      "was lost, or it is a large kmalloc made before the window")


def _has_ptr_columns(events, names) -> bool:
    """Whether every slab event type of EVENTS (a RingEvents) has a ``ptr`` column (else
    the events are applied one by one, as their fields are)."""
    from ..events import RingEvents

    if not isinstance(events, RingEvents):
        return False
    for i in events.ids_named(*names):
        cols = events.columns(i)
        if cols is None or isinstance(cols.get("ptr"), (list, type(None))):
            return False
    return True


#: Caches whose objects a kernel allocates or frees in bulk, without the per-object
#: tracepoints: the maple tree's nodes (lib/maple_tree.c: mt_alloc_bulk() ->
#: kmem_cache_alloc_bulk() in 6.1 and 6.12, mt_free_bulk() -> kmem_cache_free_bulk(), and
#: mt_free_one()'s kfree_rcu() in 7.2).
BULK_CACHES = {"maple_node": "the maple tree allocates its nodes with kmem_cache_alloc_bulk() "
               "and frees them with kmem_cache_free_bulk() or kfree_rcu() (lib/maple_tree.c), "
               "none of which emits the per-object events"}


def free_places(ctx: KernelContext) -> dict[int, str]:
    """Every free object of the dump's slabs with where it waits (``"slab"``, ``"cpu N"``,
    ``"sheaf main N"``, ``"rcu_free N"``, ``"barn N"``: :class:`memscope.mm.slub.CacheWalk`)."""
    out: dict[int, str] = {}
    for c in _slub.kmem_caches(ctx):
        out.update(_slub.cache_walk(ctx, c).free)
    return out


def compare_slab(model: SlabModel, live: dict[int, str],
                 places: dict[int, str] | None = None) -> Agreement:
    """The model's allocated objects against a later state's (address -> cache name).
    Objects are the same when their addresses are; the name of a cache the events give
    is not compared (merged caches share one ``kmem_cache``).  PLACES (the later state's
    free objects and where they wait, :func:`free_places`) explains an object the model
    has allocated that waits in an ``rcu_free`` sheaf: ``kfree_rcu()`` put it there
    (v6.18+ sheaves, mm/slub.c ``__kfree_rcu_sheaf()``) with no ``kmem_cache_free``
    event, and no event will come when the grace period frees the sheaf."""
    pred, real = set(model.live), set(live)
    divs = list(model.divergences)
    for a in sorted(real - pred):
        divs.append(Divergence("missing", a, 0, "", f"{live[a]}: " + BULK_CACHES[live[a]]
                               if live[a] in BULK_CACHES else
                               f"{live[a]} object allocated in the later state, free in "
                               "the model: allocated without a tracepoint "
                               "(kmem_cache_alloc_bulk) or in a lost event"))
    for a in sorted(pred - real):
        where = (places or {}).get(a, "")
        if where.startswith("rcu_free"):
            cause = (f"{model.live[a]} object freed by kfree_rcu() into CPU "
                     f"{where.split()[-1]}'s rcu_free sheaf (__kfree_rcu_sheaf(): no "
                     "kmem_cache_free event), waiting for a grace period")
        elif model.live[a] in BULK_CACHES:
            cause = f"{model.live[a]}: " + BULK_CACHES[model.live[a]]
        else:
            cause = (f"{model.live[a]} object allocated in the model, free in the later "
                     "state: freed without a tracepoint (kmem_cache_free_bulk, a kfree_rcu "
                     "batch) or in a lost event")
        divs.append(Divergence("extra", a, 0, "", cause))
    return Agreement("slab", len(pred & real), len(real - pred), len(pred - real), divs)


def replay_slab(a: KernelContext, b: KernelContext, events: list) -> tuple[Agreement, int]:
    """The slab model from A's allocated objects through EVENTS, compared with B's."""
    live_a, pool = allocated_objects(a)
    live_b, _ = allocated_objects(b)
    # KMALLOC_MAX_CACHE_SIZE is (1 << KMALLOC_SHIFT_HIGH) = two pages under SLUB
    # (include/linux/slab.h: KMALLOC_SHIFT_HIGH (PAGE_SHIFT + 1))
    model = SlabModel(live_a, pool, 2 * a.t.page_size + 1)
    model.apply_all(events)
    places = free_places(b) if set(model.live) - set(live_b) else None
    return compare_slab(model, live_b, places), model.applied
