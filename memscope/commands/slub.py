"""SLUB: ``slabinfo`` (``--walk``), ``slab CACHE``, ``whatis ADDR``, ``kmalloc``.

JSON records:

``slabinfo``: a list, one object per cache on ``slab_caches`` in list order (the order of
/proc/slabinfo), the :class:`memscope.mm.slub.SlabInfo` record::

    {"name": str, "active_objs": int, "num_objs": int, "objsize": int,
     "objperslab": int, "pagesperslab": int, "active_slabs": int, "num_slabs": int,
     "limit": 0, "batchcount": 0, "sharedfactor": 0, "sharedavail": 0}

``slabinfo --walk``: a list, one :class:`memscope.mm.slub.CacheUsage` per cache::

    {"name", "address", "objsize", "object_size", "refcount", "merged", "slabs",
     "slabs_by_where": {"cpu", "cpu-partial", "node-partial", "full", "unlisted": int},
     "objects", "allocated", "free_in_slabs", "free_cpu", "free_cpu_partial",
     "free_sheaves", "rcu_free", "free_barn", "kfence", "bytes", "used_bytes",
     "wasted_bytes", "problems": [problem]}

``slab CACHE``::

    {"cache": str, "address": int,
     "slabs": [{"slab": int, "pfn": int, "base": int, "node": int, "inuse": int,
                "objects": int, "allocated": int, "where": str}],   # "cpu N", "cpu-partial N",
                                                                     # "node-partial", "full",
                                                                     # "unlisted"
     "objects": [{"address": int, "index": int, "slab": int}],   # with --objects
     "free": [{"address": int, "index": int, "slab": int, "where": str}],  # with --free
     "problems": [problem]}

``whatis ADDR``: the :class:`memscope.mm.slub.WhatIs` record (``kind`` always;
``cache``, ``slab``, ``index``, ``offset``, ``state`` for slab objects).

``kmalloc``: a list, one :class:`memscope.mm.kmalloc.KmallocCache` per slot of
``kmalloc_caches[type][index]`` holding a cache, by type then index::

    {"kind": str, "type": int, "index": int, "cache": str, "address": int,
     "object_size": int, "size": int, "same_as": str | null, "refcount": int,
     "aliases": int, "slabs": int, "objects": int, "allocated": int, "kfence": int,
     "allocated_bytes": int, "slab_bytes": int,
     "requested_bytes": int | null, "waste_bytes": int | null}   # null: no orig_size

``problem`` is ``{"kind", "where", "message", "node", "zone"}``; kinds: cycle,
bad_pointer, too_long, unreadable, inuse_mismatch, double_free, unlisted, wrong_slab,
bad_sheaf, unknown_cache, broken_link, gave_up.  ``slabinfo --walk`` and ``slab`` exit
with status 1 when the walk finds a problem.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from tabulate import tabulate

from ..mm import kmalloc as _kmalloc, slub
from ..target.base import TargetError
from . import CommandError, Result, command, parse_number


def _slabinfo_args(p) -> None:
    p.add_argument("--walk", action="store_true",
                   help="walk every slab: the true counts (allocated, free in slabs, per-CPU, "
                   "sheaves, barns), slabs per state, memory used and wasted")


def _problems(ps) -> list[dict]:
    return [dataclasses.asdict(p) for p in ps]


@command("slabinfo", "the slab caches as /proc/slabinfo counts them (--walk: the true counts)",
         formats=("table", "json", "proc"), arguments=_slabinfo_args)
def slabinfo(ctx, args) -> Result:
    if getattr(args, "walk", False):
        return _walk(ctx)
    rows = slub.slabinfo(ctx)

    def table() -> str:
        return tabulate([[r.name, r.active_objs, r.num_objs, r.objsize, r.objperslab,
                          r.pagesperslab, r.num_slabs] for r in rows],
                        headers=["cache", "active objs", "objs", "objsize", "objs/slab",
                                 "pages/slab", "slabs"]) + "\n"

    return Result([dataclasses.asdict(r) for r in rows], table,
                  lambda: slub.format_slabinfo(rows))


def _walk(ctx) -> Result:
    rows = slub.slab_usage(ctx)
    problems = [p for r in rows for p in r.problems] + slub.slab_walker(ctx).problems
    data = [dataclasses.asdict(r) for r in rows]

    def table() -> str:
        t = tabulate([[r.name + (" (merged)" if r.merged else ""), r.objsize, r.slabs,
                       r.objects, r.allocated, r.free_in_slabs, r.free_cpu,
                       r.free_sheaves + r.free_barn, r.rcu_free, r.kfence, r.bytes >> 10,
                       r.wasted_bytes >> 10] for r in rows],
                     headers=["cache", "objsize", "slabs", "objects", "allocated",
                              "free in slabs", "free cpu", "sheaves+barn", "rcu_free",
                              "kfence", "KiB", "wasted KiB"])
        tot = (f"\n{sum(r.allocated for r in rows)} objects allocated in "
               f"{sum(r.slabs for r in rows)} slabs, {sum(r.bytes for r in rows) >> 10} KiB "
               f"({sum(r.wasted_bytes for r in rows) >> 10} KiB wasted)\n")
        return t + tot + "".join(f"problem: {p}\n" for p in problems)

    return Result(data, table, None, 1 if problems else 0)


def _slab_args(p) -> None:
    p.add_argument("cache", metavar="CACHE", help="the cache's name, as /proc/slabinfo "
                   "prints it")
    p.add_argument("--objects", action="store_true", help="list the allocated objects")
    p.add_argument("--free", action="store_true", help="list the free objects and where "
                   "each waits")


def _where(w: slub.CacheWalk, k: int) -> str:
    s = w.slabs
    name = slub.WHERE[int(s.where[k])]
    return f"{name} {int(s.cpu[k])}" if int(s.cpu[k]) >= 0 else name


@command("slab", "every slab of one cache: where it sits, objects in use; its objects",
         arguments=_slab_args)
def slab(ctx, args) -> Result:
    try:
        c = slub.find_kmem_cache(ctx, args.cache)
    except TargetError as e:
        raise CommandError(f"slab: {e}") from None
    w = slub.cache_walk(ctx, c)
    s = w.slabs
    addr, pos, index = slub.object_addresses(w)
    alloc = slub.allocated_mask(w, addr)
    per_slab = np.bincount(pos[alloc], minlength=len(s.pfn))
    slabs = [{"slab": int(s.slab[k]), "pfn": int(s.pfn[k]), "base": int(s.base[k]),
              "node": int(s.node[k]), "inuse": int(s.inuse[k]),
              "objects": int(s.objects[k]), "allocated": int(per_slab[k]),
              "where": _where(w, k)} for k in range(len(s.pfn))]
    data = {"cache": c.name, "address": c.address, "slabs": slabs}
    if args.objects:
        data["objects"] = [{"address": a, "index": i, "slab": int(s.slab[p])} for a, i, p in
                           zip(addr[alloc].tolist(), index[alloc].tolist(),
                               pos[alloc].tolist())]
    if args.free:
        data["free"] = [{"address": a, "index": i, "slab": int(s.slab[p]), "where": w.free[a]}
                        for a, i, p in zip(addr[~alloc].tolist(), index[~alloc].tolist(),
                                           pos[~alloc].tolist())]
    data["problems"] = _problems(w.problems)

    def table() -> str:
        out = [f"{c.name}: {len(slabs)} slabs, {int(alloc.sum())} of {len(addr)} objects "
               f"allocated, {c.size} bytes each",
               tabulate([[f"{r['slab']:#x}", f"{r['base']:#x}", r["node"],
                          f"{r['allocated']}/{r['objects']}", r["inuse"], r["where"]]
                         for r in slabs],
                        headers=["slab", "memory", "node", "allocated/objects", "inuse",
                                 "where"])]
        for key, title in (("objects", "allocated objects"), ("free", "free objects")):
            if key in data:
                out += ["", title, tabulate(
                    [[f"{o['address']:#x}", o["index"], f"{o['slab']:#x}"]
                     + ([o["where"]] if key == "free" else []) for o in data[key]],
                    headers=["address", "index", "slab"] + (["where"] if key == "free"
                                                            else []))]
        out += [f"problem: {p}" for p in w.problems]
        return "\n".join(out) + "\n"

    return Result(data, table, None, 1 if w.problems else 0)


def _whatis_args(p) -> None:
    p.add_argument("address", metavar="ADDR", help="a kernel virtual address (hex with 0x, "
                   "or decimal)")


@command("whatis", "what a kernel address is: slab object (cache, index, allocated or free), "
         "KFENCE, large kmalloc, or its page's class", arguments=_whatis_args)
def whatis(ctx, args) -> Result:
    addr = parse_number("whatis", "address", args.address)
    r = slub.whatis(ctx, addr)

    def table() -> str:
        if r.kind == "slab" and r.index is not None:
            extra = f" ({r.free_in})" if r.free_in else ""
            return (f"{addr:#x}: slab object {r.cache}[{r.index}] at {r.object:#x}+{r.offset}, "
                    f"slab {r.slab:#x}, {r.state}{extra}\n")
        if r.kind == "slab":
            return f"{addr:#x}: in a slab of {r.cache} ({r.slab and hex(r.slab)}) but no object\n"
        if r.kind == "buddy":
            return (f"{addr:#x}: pfn {r.pfn:#x}, free in the buddy allocator (block of order "
                    f"{r.order} at pfn {r.block_pfn:#x})\n")
        where = f"pfn {r.pfn:#x}, " if r.pfn is not None else ""
        return f"{addr:#x}: {where}{r.kind}\n"

    return Result(dataclasses.asdict(r), table)


_KMALLOC_EPILOG = """\
kmalloc(size, gfp) takes its object from kmalloc_caches[type][index]: the index is the
size rounded up (8, 16, 32, 64, 96, 128, 192, 256, ... 8192 bytes: kmalloc-<size>), the
type comes from the gfp flags:
  normal     GFP_KERNEL and the like                    kmalloc-<size>
  reclaim    __GFP_RECLAIMABLE                          kmalloc-rcl-<size>
  dma        __GFP_DMA                                  dma-kmalloc-<size>
  cgroup     __GFP_ACCOUNT (charged to a memory cgroup) kmalloc-cg-<size>
(read from the kernel's enum kmalloc_cache_type: a kernel lists the kinds it has).

Columns: objects allocated and their bytes (allocated x object size) against the memory
of the cache's slabs; where the kernel stores each object's requested size (slub_debug
with user tracking, U, on a 6.1+ kernel), the bytes the callers asked for and what the
rounding up to the cache's size wasted.  "same as" marks a slot that holds another
slot's cache (counted once); "aliases" counts caches merged into a kmalloc cache.

examples:
  memscope -c vmcore -s vmlinux kmalloc
  memscope -c vmcore -s vmlinux kmalloc --kind cgroup -f json
"""


def _kmalloc_args(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _KMALLOC_EPILOG
    p.add_argument("--kind", metavar="KIND", help="only the caches of one kind: normal, "
                   "reclaim, dma, cgroup (the kinds the kernel has)")


@command("kmalloc", "kmalloc's caches by size and kind: objects and bytes in use against "
         "their slabs, requested bytes and rounding waste where slub_debug stores them",
         arguments=_kmalloc_args)
def kmalloc(ctx, args) -> Result:
    kind = getattr(args, "kind", None)
    try:
        rows = _kmalloc.kmalloc_caches(ctx)
    except TargetError as e:
        raise CommandError(f"kmalloc: {e}") from None
    if kind is not None:
        kinds = [k for k in _kmalloc.kmalloc_types(ctx) if k]
        if kind not in kinds:
            raise CommandError(f"kmalloc: no kind {kind!r} on this kernel (it has "
                               f"{', '.join(kinds)})")
        rows = [r for r in rows if r.kind == kind]

    def kib(n) -> str:
        return "-" if n is None else f"{n / 1024:.1f}"

    def table() -> str:
        t = tabulate([[r.kind, r.object_size, r.cache, r.slabs, f"{r.allocated}/{r.objects}",
                       kib(r.allocated_bytes), kib(r.slab_bytes), kib(r.requested_bytes),
                       "-" if r.waste_bytes is None or not r.allocated_bytes
                       else f"{100 * r.waste_bytes / r.allocated_bytes:.1f}%",
                       f"same as {r.same_as}" if r.same_as else
                       (f"{r.aliases} aliases" if r.aliases else "")] for r in rows],
                     headers=["kind", "size", "cache", "slabs", "allocated/objects",
                              "allocated KiB", "slab KiB", "requested KiB", "waste",
                              "note"])
        once = [r for r in rows if r.same_as is None]
        alloc = sum(r.allocated_bytes for r in once)
        tot = (f"\n{sum(r.allocated for r in once)} objects, {alloc >> 10} KiB allocated in "
               f"{sum(r.slab_bytes for r in once) >> 10} KiB of slabs")
        req = [r for r in once if r.requested_bytes is not None]
        if req:
            a = sum(r.allocated_bytes for r in req)
            q = sum(r.requested_bytes for r in req)
            tot += (f"; {q >> 10} KiB requested of {a >> 10} KiB allocated where stored "
                    f"({(a - q) >> 10} KiB rounding waste)")
        else:
            tot += "; requested sizes not stored (boot with slub_debug=U on 6.1+ to see them)"
        return t + tot + "\n"

    return Result([dataclasses.asdict(r) for r in rows], table)
