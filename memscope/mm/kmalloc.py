"""kmalloc's caches (mm/slab_common.c, include/linux/slab.h): which cache serves each size
and kind, what its objects hold, and, where SLUB debugging stores it, what the callers
asked for, so that kmalloc's rounding waste shows.

The caches come from the kernel's own table, ``kmalloc_caches[type][index]``: ``type`` an
``enum kmalloc_cache_type`` value, ``index`` kmalloc_index() of the size (1 and 2 are the
96 and 192 byte caches, ``i >= 3`` is ``1 << i`` bytes).  Both dimensions are read from the
debug info (``NR_KMALLOC_TYPES`` is the array's length, ``KMALLOC_SHIFT_HIGH + 1`` the
row's), the kinds from the enumerators, never from a version number.  The layouts seen:

- v5.10: ``struct kmem_cache *kmalloc_caches[NR_KMALLOC_TYPES][KMALLOC_SHIFT_HIGH + 1]``,
  types KMALLOC_NORMAL, KMALLOC_RECLAIM (``kmalloc-rcl-*``), KMALLOC_DMA
  (``dma-kmalloc-*``);
- KMALLOC_CGROUP (``kmalloc-cg-*``, ``__GFP_ACCOUNT`` allocations) since v5.14, commit
  494c1dfe855e "mm: memcg/slab: create a new set of kmalloc-cg-<n> caches"; in v6.1 it
  comes right after KMALLOC_NORMAL (NORMAL, CGROUP, RECLAIM, DMA);
- v6.6 moved it after DMA and added KMALLOC_RANDOM_START..END (``kmalloc-rnd-NN-*``
  copies of the normal caches, CONFIG_RANDOM_KMALLOC_CACHES), commit 3c6152940584
  "Randomized slab caches for kmalloc()"; v6.10 added KMALLOC_NO_OBJ_EXT (caches for
  the slab extension vectors, with memory allocation profiling); by v7.2 the random
  copies are KMALLOC_PARTITION_START..END (Debian's 7.2 source);
- v6.11 typed the rows ``kmem_buckets`` (``struct kmem_cache *[KMALLOC_SHIFT_HIGH +
  1]``, commit 72e0fe2241ce "mm/slab: Introduce kmem_buckets typedef"): the same array;
- a type the kernel lacks is an enumerator equal to KMALLOC_NORMAL (``KMALLOC_DMA =
  KMALLOC_NORMAL`` without CONFIG_ZONE_DMA): such aliases are not kinds of their own.

(The commit ids were checked against the kernel's history in public mail and git
archives; each layout was read in Debian's 5.10, 6.1, 6.12 and 7.2 sources and is
detected, not assumed.)

One cache can sit in several slots: new_kmalloc_cache() points a KMALLOC_CGROUP slot at
the normal cache when kmem accounting is off (``cgroup.memory=nokmem``), and an index at
the cache of a larger aligned size when the architecture's minimum alignment demands it;
such a slot says ``same_as`` and the totals count each cache once.  A kmalloc cache may
also serve other caches merged into it (slab_common.c find_mergeable(): ``s->refcount``
above 1); their objects are in its slabs, and ``aliases`` says how many.

The requested size: with ``SLAB_STORE_USER`` a kmalloc cache stores it in each object
(``orig_size``, v6.1+; :func:`memscope.mm.slub_debug.orig_sizes`), so the bytes asked
for by the allocated objects can be set against ``allocated * object_size``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..target.base import TargetError
from . import slub, slub_debug
from .context import KernelContext

__all__ = ["KmallocCache", "kmalloc_types", "kmalloc_caches"]


def kmalloc_types(ctx: KernelContext) -> list[str | None]:
    """The kind of each ``enum kmalloc_cache_type`` value, indexed by the value
    (``NR_KMALLOC_TYPES`` entries): the enumerator without ``KMALLOC_``, in lower case
    (``"normal"``, ``"reclaim"``, ``"dma"``, ``"cgroup"``, ``"no_obj_ext"``), and for the
    copies of the normal caches ``"random N"`` / ``"partition N"``.

    :raises TargetError: the kernel has no ``enum kmalloc_cache_type``."""

    def probe() -> list[str | None]:
        e = ctx.t.enum("enum kmalloc_cache_type")
        n = e["NR_KMALLOC_TYPES"]
        normal = e.get("KMALLOC_NORMAL", 0)
        names: list[str | None] = [None] * n
        for prefix in ("RANDOM", "PARTITION"):
            lo, hi = e.get(f"KMALLOC_{prefix}_START"), e.get(f"KMALLOC_{prefix}_END")
            if lo is not None and hi is not None:
                for v in range(lo + 1, min(hi, n - 1) + 1):
                    names[v] = f"{prefix.lower()} {v - lo}"
        for name, v in e.items():
            if (name == "NR_KMALLOC_TYPES" or name.endswith(("_START", "_END"))
                    or not 0 <= v < n or (v == normal and name != "KMALLOC_NORMAL")):
                continue
            names[v] = name[len("KMALLOC_"):].lower()
        return names

    return ctx.probe("kmalloc_types", probe)


@dataclasses.dataclass
class KmallocCache:
    """
    One slot of ``kmalloc_caches[type][index]`` that holds a cache.

    - ``kind``: :func:`kmalloc_types` of ``type`` (``"normal"``, ``"reclaim"``,
      ``"dma"``, ``"cgroup"``, ...); ``type``, ``index``: the slot.
    - ``cache``, ``address``: the cache's name and ``struct kmem_cache *``.
    - ``object_size``: ``s->object_size``, the bytes kmalloc hands out from this cache;
      ``size``: ``s->size``, what each takes in the slab (metadata included).
    - ``same_as``: ``"KIND[INDEX]"`` of the first slot holding the same cache (its
      numbers are repeated here and not counted twice in totals), else None.
    - ``refcount``: ``s->refcount`` (-1: exempt from merging, as v6.1's
      new_kmalloc_cache() marks the normal caches under CONFIG_MEMCG_KMEM; v6.5 made
      that the SLAB_NO_MERGE flag); ``aliases``: ``refcount - 1`` (0 for -1), caches
      merged into this one (their objects are counted here too).
    - ``slabs``, ``objects``, ``allocated``: slabs found, objects they hold, objects
      allocated (:func:`memscope.mm.slub.cache_usage`); ``kfence``: objects allocated
      from the KFENCE pool instead (not in the byte counts).
    - ``allocated_bytes``: ``allocated * object_size``; ``slab_bytes``: the memory of the
      cache's slabs (pages * PAGE_SIZE).
    - ``requested_bytes``: the sum of the requested sizes stored in the allocated
      objects (``orig_size``), None when the cache stores none; ``waste_bytes``:
      ``allocated_bytes - requested_bytes`` (kmalloc's rounding), None likewise.
    """

    kind: str
    type: int
    index: int
    cache: str
    address: int
    object_size: int
    size: int
    same_as: str | None
    refcount: int
    aliases: int
    slabs: int
    objects: int
    allocated: int
    kfence: int
    allocated_bytes: int
    slab_bytes: int
    requested_bytes: int | None
    waste_bytes: int | None


def _table(ctx: KernelContext) -> np.ndarray:
    """``kmalloc_caches`` as a (NR_KMALLOC_TYPES x KMALLOC_SHIFT_HIGH + 1) uint64 array."""
    t = ctx.t
    v = t.variable("kmalloc_caches")
    ntypes = v.array_length or 0
    if not ntypes or v.size % (8 * ntypes):
        raise TargetError(f"kmalloc_caches is {v.type_name}, not an array of "
                          "NR_KMALLOC_TYPES rows of pointers")
    return np.frombuffer(t.read(v.address, v.size), "<u8").reshape(ntypes, -1)


def kmalloc_caches(ctx: KernelContext) -> list[KmallocCache]:
    """
    Every cache of ``kmalloc_caches[type][index]``, by type then index, with what it
    holds and, where the kernel stores requested sizes, what was asked for.

    :param ctx: the context of the target
    :return: one :class:`KmallocCache` per non-NULL slot
    :raises TargetError: the kernel has no ``kmalloc_caches`` or ``enum
        kmalloc_cache_type`` in its debug info, or a slot names a cache that is not on
        ``slab_caches`` (the message says which)
    """
    kinds = kmalloc_types(ctx)
    table = _table(ctx)
    by_addr = {c.address: c for c in slub.kmem_caches(ctx)}
    first: dict[int, str] = {}
    out = []
    for ty in range(min(len(kinds), table.shape[0])):
        kind = kinds[ty]
        for idx, ptr in enumerate(table[ty].tolist()):
            if not ptr or kind is None:
                continue
            c = by_addr.get(ptr)
            if c is None:
                raise TargetError(f"kmalloc_caches[{ty}][{idx}] = {ptr:#x} is not a cache on "
                                  "slab_caches")
            u = slub.cache_usage(ctx, c)
            requested = waste = None
            w = slub.cache_walk(ctx, c)
            orig = slub_debug.orig_sizes(ctx, w)
            if orig is not None:
                addr, _, _ = slub.object_addresses(w)
                requested = int(orig[slub.allocated_mask(w, addr)].sum())
                waste = u.allocated * c.object_size - requested
            out.append(KmallocCache(kind, ty, idx, c.name, c.address, c.object_size, c.size,
                                    first.get(ptr), c.refcount, max(c.refcount - 1, 0),
                                    u.slabs, u.objects, u.allocated, u.kfence,
                                    u.allocated * c.object_size, u.bytes, requested, waste))
            first.setdefault(ptr, f"{kind}[{idx}]")
    return out
