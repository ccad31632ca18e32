"""SLUB, the kernel's slab allocator (mm/slub.c, mm/slab.h, mm/slab_common.c): the caches,
their per-node counters and partial lists, /proc/slabinfo, and the true state of every slab
and object.

Layouts (each detected from the debug info by :class:`SlubLayout`, the commit that changed
it cited there):

- the slab's metadata lives in ``struct page`` (5.10: ``slab_cache``, ``freelist``,
  ``counters`` {inuse:16, objects:15, frozen:1}) or in ``struct slab``, which overlays the
  struct page (since v5.17, commit d122019bf061 "mm: Split slab into its own type");
- per-CPU state: ``kmem_cache.cpu_slab`` -> ``kmem_cache_cpu`` {freelist, tid, page|slab,
  partial} until v7.0 (removed by commit 32c894c7274b "slab: remove struct
  kmem_cache_cpu"); ``kmem_cache.cpu_sheaves`` -> ``slub_percpu_sheaves`` {main, spare,
  rcu_free} since v6.18 (commit 2d517aa09bbc "slab: add opt-in caching layer of percpu
  sheaves");
- per-node state: ``kmem_cache.node[]`` of ``struct kmem_cache_node *`` (with a ``barn``
  member from v6.18), or ``kmem_cache.per_node[]`` of {barn, node} since v7.1 (commit
  5ba6bc27b1f9 "slab: move barn from kmem_cache_node");
- /proc/slabinfo's free count: the node partial lists counted exactly to v6.9,
  ``count_partial_free_approx()`` from v6.10 (commit 1c5610f451be "slub: introduce
  count_partial_free_approx()", merged for v6.10: Debian's 6.12 source has the function,
  6.1's has not): exact up to MAX_PARTIAL_TO_SCAN (10000) partial slabs,
  else 5000 from each end of the list, scaled.

Walks are bounded: the cache list by :data:`MAX_CACHES`, a partial list by its
``nr_partial``, a freelist by its slab's object count; what does not fit is a
:class:`~memscope.kernel.problem.Problem`, never an exception or a hang.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.addr import kernel_layout, region as _region, virt_to_phys
from ..kernel.fields import read_member
from ..kernel.list import list_for_each_entry
from ..kernel.percpu import per_cpu_ptrs
from ..kernel.problem import Problem, ProblemSink
from ..target.base import FaultError, Member, Target, TargetError
from . import page as _page
from .context import KernelContext

__all__ = ["SlubLayout", "KmemCache", "KmemCacheNode", "SlabInfo", "slub_layout",
           "kmem_caches", "find_kmem_cache", "slabinfo", "format_slabinfo", "oo_order",
           "oo_objects", "MAX_PARTIAL_TO_SCAN", "count_partial_free", "get_slabinfo",
           "WHERE", "CacheSlabs", "CacheWalk", "CacheUsage", "KfenceObjects", "WhatIs",
           "slab_walker", "cache_walk", "cache_usage", "slab_usage", "kfence_objects",
           "object_addresses", "allocated_mask", "whatis"]

#: The most caches :func:`kmem_caches` walks on ``slab_caches`` (a live kernel has a few
#: hundred; more is a corrupted list).
MAX_CACHES = 100_000
#: mm/slub.c MAX_PARTIAL_TO_SCAN (v6.10+).
MAX_PARTIAL_TO_SCAN = 10000
#: mm/slub.c OO_SHIFT: ``kmem_cache_order_objects.x`` is order << 16 | objects.
OO_SHIFT = 16
OO_MASK = (1 << OO_SHIFT) - 1
MASK64 = (1 << 64) - 1


def oo_order(x: int) -> int:
    """mm/slub.c oo_order(): the page order of a slab from ``kmem_cache_order_objects.x``."""
    return x >> OO_SHIFT


def oo_objects(x: int) -> int:
    """mm/slub.c oo_objects(): the objects in a slab from ``kmem_cache_order_objects.x``."""
    return x & OO_MASK


class SlubLayout:
    """What the SLUB readers need from the debug info, probed once per kernel (see the
    module for the layouts and the commits that changed them)."""

    def __init__(self, t: Target):
        kc = t.layout("struct kmem_cache")
        self.kmem_cache = kc
        # --- per node: node[] (to v7.0) or per_node[] {barn, node} (v7.1, 5ba6bc27b1f9)
        if kc.has("per_node"):
            m = kc["per_node"]
            pn = t.layout("struct kmem_cache_per_node_ptrs")
            self.node_in, self.barn_in = pn.offset("node"), pn.offset("barn")
        else:
            m = kc["node"]
            self.node_in, self.barn_in = 0, None
        self.nodes_off = m.offset
        self.max_nodes = m.array_length or 1
        self.node_stride = m.size // self.max_nodes
        kn = t.layout("struct kmem_cache_node")
        self.kmem_cache_node = kn
        if not kn.has("nr_slabs"):
            raise TargetError("struct kmem_cache_node has no nr_slabs: the kernel was built "
                              "without CONFIG_SLUB_DEBUG, which /proc/slabinfo needs")
        # kmem_cache_node.barn: v6.18-v7.0 (2d517aa09bbc; moved to per_node[] in v7.1)
        self.node_barn_off = kn.offset("barn") if kn.has("barn") else None
        # --- per CPU
        self.cpu_slab_off = kc.offset("cpu_slab") if kc.has("cpu_slab") else None
        self.cpu_sheaves_off = kc.offset("cpu_sheaves") if kc.has("cpu_sheaves") else None
        if self.cpu_slab_off is not None:
            kcc = t.layout("struct kmem_cache_cpu")
            self.kmem_cache_cpu = kcc
            self.cpu_freelist_off = kcc.offset("freelist")
            # kmem_cache_cpu.page became .slab with struct slab (v5.17, bb192ed9aa71)
            self.cpu_slab_slab_off = kcc.offset("slab" if kcc.has("slab") else "page")
            # .partial exists with CONFIG_SLUB_CPU_PARTIAL (every Debian kernel)
            self.cpu_partial_off = kcc.offset("partial") if kcc.has("partial") else None
        if self.cpu_sheaves_off is not None:
            ps = t.layout("struct slub_percpu_sheaves")
            self.sheaves_members = {n: ps.offset(n) for n in ("main", "spare", "rcu_free")
                                    if ps.has(n)}
            self.pcs_size = ps.size
            sh = t.layout("struct slab_sheaf")
            self.sheaf_size_off = sh.offset("size")
            self.sheaf_objects_off = sh.offset("objects")
            self.sheaf_barn_list_off = sh.offset("barn_list")
            self.sheaf_cache_off = sh.offset("cache")
            nb = t.layout("struct node_barn")
            self.barn_full_off = nb.offset("sheaves_full")
            self.barn_empty_off = nb.offset("sheaves_empty")
            self.barn_nr_full_off = nb.offset("nr_full")
            self.barn_nr_empty_off = nb.offset("nr_empty")
        # --- the slab: struct slab since v5.17 (d122019bf061), struct page before
        self.slab_type = "struct slab" if t.has_type("struct slab") else "struct page"
        sl = t.layout(self.slab_type)
        self.slab = sl
        self.slab_cache = sl["slab_cache"]
        self.freelist = sl["freelist"]
        self.counters = sl["counters"]
        self.inuse = sl["inuse"]
        self.objects = sl["objects"]
        self.frozen = sl["frozen"]
        self.slab_list_off = sl.offset("slab_list")
        # The cpu partial list's link: slab->next (gone in 7.x, with the cpu slabs).
        self.next_off = sl.offset("next") if sl.has("next") else None
        # --- kmem_cache members
        self.kc_read = self.nodes_off  # bytes of kmem_cache before node[] / per_node[]
        # count_partial_free_approx() (v6.10, 1c5610f451be) is a function of its own in
        # every kernel that has it (not inlined on the lab kernels): its symbol says
        # which arithmetic /proc/slabinfo uses.
        self.partial_free_approx = t.has_symbol("count_partial_free_approx")

    def counter_field(self, m: Member, counters: int) -> int:
        """Bit field M (inuse, objects or frozen) of a ``counters`` word."""
        shift = (m.offset - self.counters.offset) * 8 + m.bit_offset
        return counters >> shift & ((1 << (m.bit_size or 8 * m.size)) - 1)


def slub_layout(ctx: KernelContext) -> SlubLayout:
    """The :class:`SlubLayout` of the target's kernel (a probe).

    :raises TargetError: a type or member SLUB needs is missing (the message names it)."""
    return ctx.probe("slub_layout", lambda: SlubLayout(ctx.t))


@dataclasses.dataclass
class KmemCacheNode:
    """
    One ``struct kmem_cache_node`` (mm/slub.c): a cache's slabs on one NUMA node.

    - ``node``: the node id (index in ``kmem_cache.node[]`` / ``per_node[]``).
    - ``address``: the ``struct kmem_cache_node``.
    - ``nr_partial``: ``n->nr_partial``, slabs on the node partial list.
    - ``nr_slabs``, ``total_objects``: ``n->nr_slabs``, ``n->total_objects`` (SLUB_DEBUG
      counters of every slab of the node, whatever list it is on).
    - ``partial_free``: free objects on the partial list (sum of ``objects - inuse``),
      counted as /proc/slabinfo counts them (approximated when the kernel does).
    - ``partial_slabs``: the partial list, in list order (``struct slab *``; ``struct
      page *`` on 5.10).
    - ``barn``: the node's ``struct node_barn *`` (v6.18+), else 0.
    """

    node: int
    address: int
    nr_partial: int
    nr_slabs: int
    total_objects: int
    partial_free: int
    partial_slabs: list[int]
    barn: int = 0


@dataclasses.dataclass
class KmemCache:
    """
    One ``struct kmem_cache`` (mm/slab.h), as listed on ``slab_caches``.

    - ``address``, ``name``: the cache and ``s->name``.
    - ``size``: ``s->size``, bytes an object takes in the slab (metadata included);
      ``object_size``: ``s->object_size``, what the user asked for.
    - ``offset``: ``s->offset``, where in a free object the free pointer is.
    - ``order``, ``objects``: ``oo_order(s->oo)``, ``oo_objects(s->oo)``: pages per slab
      (as an order) and objects per slab.
    - ``refcount``: ``s->refcount``; above 1 the cache serves merged (aliased) caches.
    - ``flags``: ``s->flags`` (SLAB_* bits).
    - ``random``: ``s->random``, the freelist pointer's hardening key (0 without
      CONFIG_SLAB_FREELIST_HARDENED).
    - ``red_left_pad``: ``s->red_left_pad``, bytes before the first object.
    - ``cpu_slab``, ``cpu_sheaves``: the ``__percpu`` pointers (0 where the kernel has
      none).
    - ``nodes``: one :class:`KmemCacheNode` per node with one
      (``for_each_kmem_cache_node``).
    - ``problems``: what went wrong walking its lists.
    - ``inuse``: ``s->inuse``, where the object's metadata starts (the free pointer when
      it is outside the object, then SLUB debugging's tracks; mm/slub.c
      calculate_sizes()).
    """

    address: int
    name: str
    size: int
    object_size: int
    offset: int
    order: int
    objects: int
    refcount: int
    flags: int
    random: int
    red_left_pad: int
    cpu_slab: int
    cpu_sheaves: int
    nodes: list[KmemCacheNode]
    problems: list[Problem]
    inuse: int = 0


def nr_node_ids(t: Target) -> int:
    """``nr_node_ids``: node ids go from 0 to this, exclusive (1 without the symbol)."""
    try:
        return t.read_u32(t.symbol("nr_node_ids"))
    except TargetError:
        return 1


class _SlabReader:
    """Reads a whole struct slab the first time a list walk asks for its list_head, so
    that the walk and the counters it needs take one read per slab."""

    def __init__(self, t: Target, sl: SlubLayout):
        self.t = t
        self.link = sl.slab_list_off
        self.size = sl.slab.size
        self.raw: dict[int, bytes] = {}

    def __call__(self, address: int, size: int) -> bytes:
        base = address - self.link
        raw = self.raw.get(base)
        if raw is None:
            try:
                raw = self.raw[base] = self.t.read(base, self.size)
            except FaultError:
                return self.t.read(address, size)
        return raw[self.link:self.link + size]


def _read_node(ctx: KernelContext, sl: SlubLayout, nid: int, addr: int, barn: int,
               name: str, problems: list[Problem]) -> KmemCacheNode:
    t = ctx.t
    kn = sl.kmem_cache_node
    raw = t.read(addr, kn.size)
    nr_partial = read_member(kn["nr_partial"], raw)
    nr_slabs = read_member(kn["nr_slabs"], raw)
    total = read_member(kn["total_objects"], raw)
    if sl.node_barn_off is not None:
        barn = read_member(kn["barn"], raw)
    reader = _SlabReader(t, sl)
    where = f"{name} node {nid} partial"
    slabs = list(list_for_each_entry(t, sl.slab_type, addr + kn.offset("partial"), "slab_list",
                                     bound=nr_partial, problems=problems, where=where,
                                     read=reader))
    free = [sl.counter_field(sl.objects, c) - sl.counter_field(sl.inuse, c)
            for c in (read_member(sl.counters, reader.raw[s]) if s in reader.raw
                      else t.read_u64(s + sl.counters.offset) for s in slabs)]
    return KmemCacheNode(nid, addr, nr_partial, nr_slabs, total,
                         count_partial_free(sl, free, nr_partial, total), slabs, barn)


def count_partial_free(sl: SlubLayout, free: list[int], nr_partial: int,
                       total_objects: int) -> int:
    """The free objects of a node partial list as /proc/slabinfo counts them: to v6.9
    ``count_partial(n, count_free)``, the exact sum; from v6.10
    ``count_partial_free_approx(n)``: exact when ``nr_partial <= MAX_PARTIAL_TO_SCAN``,
    else the first and the last ``MAX_PARTIAL_TO_SCAN / 2`` slabs of the list summed and
    scaled, ``mult_frac(x, nr_partial, scanned)``, capped at ``total_objects``.

    :param free: ``objects - inuse`` of each slab on the list, in list order
    :param nr_partial: ``n->nr_partial``
    :param total_objects: ``n->total_objects``
    """
    if not sl.partial_free_approx or nr_partial <= MAX_PARTIAL_TO_SCAN:
        return sum(free)
    half = MAX_PARTIAL_TO_SCAN // 2
    # The kernel walks the first half forward and the second half backward from the
    # tail; on a consistent list those are the last entries of the forward walk.
    scanned_slabs = free[:half] + (free[half:][-half:] if len(free) > half else [])
    x, scanned = sum(scanned_slabs), len(scanned_slabs)
    if not scanned:
        return 0
    x = x // scanned * nr_partial + x % scanned * nr_partial // scanned  # mult_frac()
    return min(x, total_objects)


def _read_cache(ctx: KernelContext, sl: SlubLayout, addr: int, nnodes: int) -> KmemCache:
    t = ctx.t
    kc = sl.kmem_cache
    raw = t.read(addr, sl.nodes_off + nnodes * sl.node_stride)

    def get(name: str, default: int = 0) -> int:
        return read_member(kc[name], raw) if kc.has(name) else default

    name = t.read_cstr(get("name"))
    oo = read_member(kc["oo"], raw, signed=False) if kc["oo"].size <= 8 else 0
    problems: list[Problem] = []
    nodes = []
    for nid in range(nnodes):
        base = sl.nodes_off + nid * sl.node_stride
        n = int.from_bytes(raw[base + sl.node_in:base + sl.node_in + 8], "little")
        if not n:
            continue
        barn = (int.from_bytes(raw[base + sl.barn_in:base + sl.barn_in + 8], "little")
                if sl.barn_in is not None else 0)
        nodes.append(_read_node(ctx, sl, nid, n, barn, name, problems))
    return KmemCache(addr, name, get("size"), get("object_size"), get("offset"),
                     oo_order(oo), oo_objects(oo), get("refcount"), get("flags"),
                     get("random"), get("red_left_pad"),
                     get("cpu_slab"), get("cpu_sheaves"), nodes, problems, get("inuse"))


def kmem_caches(ctx: KernelContext) -> list[KmemCache]:
    """
    Get every cache on ``slab_caches`` (mm/slab_common.c), in list order (the order of
    /proc/slabinfo), with its per-node counters and node partial lists, read once per
    snapshot.

    :param ctx: the context of the target
    :return: one :class:`KmemCache` per cache; a broken cache list ends the list (the
        problem is on the last cache read, or raised when there is none)
    :raises TargetError: a type, member or symbol SLUB needs is missing
    :raises FaultError: ``slab_caches`` or a cache on it cannot be read
    """
    return ctx.snapshot("kmem_caches", lambda: _kmem_caches(ctx))


def _kmem_caches(ctx: KernelContext) -> list[KmemCache]:
    t = ctx.t
    sl = slub_layout(ctx)
    nnodes = min(nr_node_ids(t), sl.max_nodes)
    problems: list[Problem] = []
    out = []
    for addr in list_for_each_entry(t, "struct kmem_cache", t.symbol("slab_caches"), "list",
                                    bound=MAX_CACHES, problems=problems,
                                    where="slab_caches"):
        out.append(_read_cache(ctx, sl, addr, nnodes))
    if problems:
        if not out:
            raise TargetError(f"slab_caches: {problems[0].message}")
        out[-1].problems.extend(problems)
    return out


def find_kmem_cache(ctx: KernelContext, name: str) -> KmemCache:
    """The cache named NAME on ``slab_caches`` (the first, as ``find_slab_cache()``).

    :raises TargetError: no cache has that name."""
    for c in kmem_caches(ctx):
        if c.name == name:
            return c
    raise TargetError(f"no slab cache named {name!r}")


@dataclasses.dataclass(frozen=True)
class SlabInfo:
    """
    One line of /proc/slabinfo (mm/slab_common.c cache_show(), mm/slub.c get_slabinfo()).

    - ``name``: ``s->name``.
    - ``active_objs``: ``num_objs`` minus the free objects of the node partial lists
      (see :func:`count_partial_free`): objects free in per-CPU slabs, per-CPU partial
      slabs, sheaves and barns count as active.
    - ``num_objs``: the sum of ``n->total_objects`` over the nodes.
    - ``objsize``: ``s->size`` in bytes.
    - ``objperslab``, ``pagesperslab``: ``oo_objects(s->oo)``, ``1 << oo_order(s->oo)``.
    - ``active_slabs``, ``num_slabs``: both the sum of ``n->nr_slabs``.
    - ``limit``, ``batchcount``, ``sharedfactor``, ``sharedavail``: 0 (SLAB's tunables;
      SLUB prints zeros).
    """

    name: str
    active_objs: int
    num_objs: int
    objsize: int
    objperslab: int
    pagesperslab: int
    active_slabs: int
    num_slabs: int
    limit: int = 0
    batchcount: int = 0
    sharedfactor: int = 0
    sharedavail: int = 0


def get_slabinfo(c: KmemCache) -> SlabInfo:
    """mm/slub.c get_slabinfo() of one cache."""
    nr_slabs = sum(n.nr_slabs for n in c.nodes)
    nr_objs = sum(n.total_objects for n in c.nodes)
    nr_free = sum(n.partial_free for n in c.nodes)
    return SlabInfo(c.name, nr_objs - nr_free, nr_objs, c.size, c.objects, 1 << c.order,
                    nr_slabs, nr_slabs)


def slabinfo(ctx: KernelContext) -> list[SlabInfo]:
    """
    Get /proc/slabinfo's numbers: one :class:`SlabInfo` per cache on ``slab_caches``, in
    list order, with the arithmetic of the target's kernel.

    :param ctx: the context of the target
    :return: the lines' records, in the order /proc/slabinfo prints them
    :raises TargetError: as :func:`kmem_caches`
    :raises FaultError: as :func:`kmem_caches`
    """
    return [get_slabinfo(c) for c in kmem_caches(ctx)]


SLABINFO_HEADER = ("slabinfo - version: 2.1\n"
                   "# name            <active_objs> <num_objs> <objsize> <objperslab> "
                   "<pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata "
                   "<active_slabs> <num_slabs> <sharedavail>\n")


def format_slabinfo(rows: list[SlabInfo]) -> str:
    """
    Print ROWS as /proc/slabinfo, byte for byte: mm/slab_common.c print_slabinfo_header()
    (without CONFIG_DEBUG_SLAB, which SLUB kernels lack) and cache_show()'s
    ``"%-17s %6lu %6lu %6u %4u %4d : tunables %4u %4u %4u : slabdata %6lu %6lu %6lu"``.

    :param rows: :func:`slabinfo`'s records
    :return: the text
    """
    return SLABINFO_HEADER + "".join(
        f"{r.name:<17} {r.active_objs:6d} {r.num_objs:6d} {r.objsize:6d} {r.objperslab:4d} "
        f"{r.pagesperslab:4d} : tunables {r.limit:4d} {r.batchcount:4d} {r.sharedfactor:4d}"
        f" : slabdata {r.active_slabs:6d} {r.num_slabs:6d} {r.sharedavail:6d}\n"
        for r in rows)


# =====================================================================================
# The true state: every slab and every object (``slabinfo --walk``, ``slab``, ``whatis``)
# =====================================================================================


#: Where a slab sits (``Slab.where``): the CPU slab of a CPU (to v6.19), on a CPU's partial
#: list (to v6.19), on its node's partial list, full (on no list: SLUB keeps full slabs on
#: none without debugging), or on no list although it has free objects (``unlisted``: a
#: problem on a frozen dump).
WHERE = ("cpu", "cpu-partial", "node-partial", "full", "unlisted")
W_CPU, W_CPU_PARTIAL, W_NODE_PARTIAL, W_FULL, W_UNLISTED = range(5)
#: The most objects a sheaf can hold before memscope calls it corrupted (sheaf_capacity
#: is at most a few hundred on the lab kernels).
MAX_SHEAF = 1 << 16


def _swab64(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "little"), "big")


@dataclasses.dataclass
class CacheSlabs:
    """The slabs of one cache found in the memmap, as parallel numpy arrays (one entry per
    slab, in pfn order): ``pfn`` of the slab's first page, ``slab`` (``struct slab *``:
    the struct page of that pfn), ``base`` (the first byte of the slab's memory,
    ``slab_address()``), ``node``, ``objects``, ``inuse``, ``freelist`` (raw pointer),
    ``where`` (a :data:`WHERE` index), ``cpu`` (the CPU of a cpu or cpu-partial slab, else
    -1), ``nfree`` (objects on the slab's own freelist, decoded)."""

    pfn: np.ndarray
    slab: np.ndarray
    base: np.ndarray
    node: np.ndarray
    objects: np.ndarray
    inuse: np.ndarray
    freelist: np.ndarray
    where: np.ndarray
    cpu: np.ndarray
    nfree: np.ndarray


@dataclasses.dataclass
class CacheWalk:
    """
    One cache's true state, from every slab walked (:func:`slab_walk`).

    - ``cache``: the :class:`KmemCache`.
    - ``slabs``: its :class:`CacheSlabs`.
    - ``free``: free object address -> where it is free: ``"slab"`` (its slab's
      freelist), ``"cpu N"`` (CPU N's lockless freelist, ``kmem_cache_cpu.freelist``),
      ``"sheaf main N"``, ``"sheaf spare N"``, ``"rcu_free N"`` (CPU N's sheaves; an
      ``rcu_free`` object waits for an RCU grace period), ``"barn N"`` (a full sheaf of
      node N's barn).
    - ``problems``: what is wrong (cache, slab address, object in the message).
    """

    cache: KmemCache
    slabs: CacheSlabs
    free: dict[int, str]
    problems: list[Problem]

    def count(self, prefix: str) -> int:
        """Free objects whose place starts with PREFIX."""
        return sum(1 for w in self.free.values() if w.startswith(prefix))


class _Walker:
    """The walk of one snapshot: the memmap's slab pages, grouped by cache."""

    def __init__(self, ctx: KernelContext):
        self.ctx = ctx
        t = self.t = ctx.t
        self.sl = slub_layout(ctx)
        self.caches = kmem_caches(ctx)
        self.by_addr = {c.address: c for c in self.caches}
        self.pl = _page.page_layout(ctx)
        self.kl = kernel_layout(t)
        self.page_shift = t.page_size.bit_length() - 1
        self.swab: bool | None = None  # the hardened encoding, decided on first use
        self.problems: list[Problem] = []
        self.kfence = kfence_objects(ctx)
        self._find_slabs()

    # --- slab pages from the memmap --------------------------------------------------
    def _words(self, pm: "_page.PageMap", pfns: np.ndarray) -> dict[str, np.ndarray]:
        """slab_cache, freelist and counters of the slabs at PFNS (indices into the piece
        PM of the memmap): taken from the decoded memmap where struct slab's word is one
        it keeps (struct slab overlays struct page), else read."""
        pl, sl = self.pl, self.sl
        kept = {getattr(pl, "compound_off", -1): "compound",
                getattr(pl, "mapping_off", -1): "mapping",
                getattr(pl, "index_off", -1): "index",
                getattr(pl, "private_off", -1): "private"}
        out = {}
        for name, m in (("slab_cache", sl.slab_cache), ("freelist", sl.freelist),
                        ("counters", sl.counters)):
            field = kept.get(m.offset)
            if field is not None and field in pm.pages and pm.pages[field].dtype.itemsize == 8:
                out[name] = pm.pages[field][pfns].astype(np.uint64)
            else:
                out[name] = np.array([self.t.read_u64(
                    pm.vmemmap + (pm.start_pfn + int(p)) * pm.page_size_struct + m.offset)
                    for p in pfns], np.uint64)
        return out

    def _find_slabs(self) -> None:
        """The slab pages, from the memmap streamed in pieces (memscope.mm.page.pieces):
        memory bounded by one piece plus the slabs' own arrays, whatever the machine's
        size."""
        heads_l, npages_l, words_l, zid_l = [], [], {}, []
        # Slabs whose last page may be in a later piece: (piece number, index in it, pfn).
        open_: list[tuple[int, int, int]] = []
        n = _page.max_pfn(self.ctx)
        zones_ = _page.zones(self.ctx)
        self.vmemmap = _page.vmemmap_base(self.ctx)
        self.page_size_struct = self.pl.size
        unread: list[np.ndarray] = []  # [start, end) pfn runs whose struct page was not read
        for pm in _page.pieces(self.ctx):
            lo = pm.start_pfn
            edges = np.flatnonzero(np.diff(np.concatenate(([1], pm.valid.view(np.int8), [1]))))
            unread.append(edges.reshape(-1, 2) + lo)
            nontail = np.flatnonzero(~pm.tail)
            if open_ and len(nontail):  # they end at this piece's first page that is no tail
                for piece, i, pfn in open_:
                    npages_l[piece][i] = int(nontail[0]) + lo - pfn
                open_ = []
            # The pages' own slab type, not their class: a corrupted free list whose block
            # claims slab pages must not hide the slabs (the buddy half reports the block).
            is_slab = pm.slab if pm.slab is not None \
                else (pm.cls == _page.C["slab"]) & pm.valid
            heads = np.flatnonzero(is_slab & ~pm.tail)
            # KFENCE pool pages are slab pages too (kfence_init_pool() sets PG_slab/PGTY_slab
            # on each object page): their objects are counted apart (kfence_objects()).
            if self.kfence.pool_pages:
                kl = self.kfence.pool_pfn - lo
                heads = heads[(heads < kl) | (heads >= kl + self.kfence.pool_pages)]
            # Pages per slab: the head and the compound tails after it (-1: up to the first
            # page that is no tail in a later piece, or the end of the memmap).
            k = np.searchsorted(nontail, heads, "right")
            nxt = nontail[np.minimum(k, len(nontail) - 1)] if len(nontail) else heads
            npages = np.where(nxt > heads, nxt - heads, -1)
            open_ += [(len(heads_l), i, int(heads[i]) + lo)
                      for i in np.flatnonzero(npages < 0).tolist()]
            for key, v in self._words(pm, heads).items():
                words_l.setdefault(key, []).append(v)
            heads_l.append(heads + lo)
            npages_l.append(npages)
            zid_l.append(pm.zone_id[heads])
        if not heads_l:
            heads_l, npages_l, zid_l = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], \
                [np.zeros(0, np.int16)]
            words_l = {k: [np.zeros(0, np.uint64)] for k in ("slab_cache", "freelist",
                                                            "counters")}
        heads = np.concatenate(heads_l)
        npages = np.concatenate(npages_l)
        npages = np.where(npages < 0, n - heads, npages)  # to the end of the memmap
        w = {k: np.concatenate(v) for k, v in words_l.items()}
        zid = np.concatenate(zid_l)
        sl = self.sl
        cnt = w["counters"]

        def field(m: Member) -> np.ndarray:
            shift = (m.offset - sl.counters.offset) * 8 + m.bit_offset
            return ((cnt >> np.uint64(shift)) & np.uint64((1 << m.bit_size) - 1)).astype(
                np.int64)

        self.heads = heads
        self.npages = npages
        self.unread = np.concatenate(unread) if unread else np.zeros((0, 2), np.int64)
        self.slab_cache = w["slab_cache"]
        self.freelist = w["freelist"]
        self.objects = field(sl.objects)
        self.inuse = field(sl.inuse)
        self.base = (np.uint64(self.kl.page_offset) + (heads.astype(np.uint64) << np.uint64(
            self.page_shift)) - np.uint64(self.kl.phys_offset))
        nodes = np.array([z.node for z in zones_] + [-1], np.int64)
        self.node = nodes[zid]
        order = np.argsort(self.slab_cache, kind="stable")
        self._order = order
        sc = self.slab_cache[order]
        self._cache_keys, self._starts = np.unique(sc, return_index=True)
        unknown = set(int(k) for k in self._cache_keys) - set(self.by_addr)
        for k in sorted(unknown):
            n = int(np.count_nonzero(self.slab_cache == np.uint64(k)))
            self.problems.append(Problem("unknown_cache", "slab pages",
                                         f"{n} slab page(s) name cache {k:#x}, which is not "
                                         "on slab_caches"))

    def slab_indices(self, cache: int) -> np.ndarray:
        """Indices (into the walker's arrays) of the slabs of CACHE, in pfn order."""
        i = np.searchsorted(self._cache_keys, np.uint64(cache))
        if i >= len(self._cache_keys) or self._cache_keys[i] != np.uint64(cache):
            return np.zeros(0, np.int64)
        end = self._starts[i + 1] if i + 1 < len(self._starts) else len(self._order)
        return np.sort(self._order[self._starts[i]:end])

    def slab_of(self, addr: int) -> int | None:
        """Index of the slab whose memory holds ADDR, or None."""
        i = int(np.searchsorted(self.base, np.uint64(addr), "right")) - 1
        if i < 0:
            return None
        end = int(self.base[i]) + (int(self.npages[i]) << self.page_shift)
        return i if addr < end else None

    # --- freelists -----------------------------------------------------------------------
    def _decode(self, c: KmemCache, ptr_addr: int, raw: int) -> int:
        """The next free object from the word RAW stored at PTR_ADDR (freelist_ptr_decode():
        ``ptr ^ s->random ^ swab(ptr_addr)`` when hardened; the swab() came with v5.7,
        commit 1ad53d9fa3f6, and is tried first, the plain xor if it leads nowhere)."""
        if not self.sl.kmem_cache.has("random"):
            return raw
        if self.swab is False:
            return raw ^ c.random ^ ptr_addr
        v = raw ^ c.random ^ _swab64(ptr_addr)
        if self.swab is None and v:
            if self.slab_of(v) is None:
                alt = raw ^ c.random ^ ptr_addr
                if alt and self.slab_of(alt) is not None:
                    self.swab = False
                    return alt
            else:
                self.swab = True
        return v

    def freelist_chain(self, c: KmemCache, first: int, slab_i: int, bound: int,
                       sink: ProblemSink, mem: bytes | None = None) -> list[int]:
        """The objects of the freelist starting at FIRST inside slab SLAB_I, at most BOUND;
        wild pointers, misaligned pointers and cycles become problems."""
        base = int(self.base[slab_i]) + c.red_left_pad
        nobj = int(self.objects[slab_i])
        out: list[int] = []
        seen: set[int] = set()
        nexts: list[int] | None = None
        hardened = self.sl.kmem_cache.has("random")
        p = first
        while p:
            idx, rem = divmod(p - base, c.size) if c.size else (0, 1)
            if rem or not 0 <= idx < nobj:
                sink.add("bad_pointer", f"slab {self.slab_addr(slab_i):#x}: freelist pointer "
                         f"{p:#x} after {len(out)} objects is not an object of the slab")
                break
            if p in seen:
                sink.add("cycle", f"slab {self.slab_addr(slab_i):#x}: freelist comes back to "
                         f"{p:#x} after {len(out)} objects")
                break
            if len(out) >= bound:
                sink.add("too_long", f"slab {self.slab_addr(slab_i):#x}: freelist longer than "
                         f"{bound} objects")
                break
            seen.add(p)
            out.append(p)
            if nexts is None and mem is not None and (self.swab is not None or not hardened):
                nexts = self._next_pointers(c, slab_i, mem)
            if nexts:
                p = nexts[idx]
                continue
            at = p + c.offset
            try:
                if mem is not None:
                    o = at - int(self.base[slab_i])
                    raw = int.from_bytes(mem[o:o + 8], "little")
                else:
                    raw = self.t.read_u64(at)
            except FaultError:
                sink.add("unreadable", f"slab {self.slab_addr(slab_i):#x}: free object {p:#x} "
                         "cannot be read")
                break
            p = self._decode(c, at, raw)
        return out

    def _next_pointers(self, c: KmemCache, slab_i: int, mem: bytes) -> list[int]:
        """The decoded free pointer of every object of slab SLAB_I, from its memory MEM,
        in one numpy pass (``[]`` when the words are not 8-byte aligned in MEM: the caller
        then decodes them one by one)."""
        nobj = int(self.objects[slab_i])
        first = c.red_left_pad + c.offset
        if first % 8 or c.size % 8 or first + (nobj - 1) * c.size + 8 > len(mem):
            return []
        words = np.frombuffer(mem, "<u8")[first // 8::c.size // 8][:nobj]
        at = self.base[slab_i] + np.uint64(first) + np.arange(nobj, dtype=np.uint64) * \
            np.uint64(c.size)
        if not self.sl.kmem_cache.has("random"):
            return words.tolist()
        key = at.byteswap() if self.swab else at
        return (words ^ np.uint64(c.random) ^ key).tolist()

    def slab_memory(self, i: int) -> bytes | None:
        """The memory of slab I in one read (None when it cannot be read: the freelist
        walk then reads object by object and reports what it cannot read)."""
        try:
            return self.t.read(int(self.base[i]), int(self.npages[i]) << self.page_shift)
        except FaultError:
            return None

    def slab_addr(self, i: int) -> int:
        return self.vmemmap + int(self.heads[i]) * self.page_size_struct

    def slab_index_of_struct(self, slab_ptr: int) -> int | None:
        pfn, rem = divmod(slab_ptr - self.vmemmap, self.page_size_struct)
        if rem:
            return None
        i = int(np.searchsorted(self.heads, pfn))
        return i if i < len(self.heads) and self.heads[i] == pfn else None

    # --- one cache -----------------------------------------------------------------------
    def cache(self, c: KmemCache) -> CacheWalk:
        t, sl = self.t, self.sl
        problems: list[Problem] = list(c.problems)
        sink = ProblemSink(problems, c.name)
        idx = self.slab_indices(c.address)
        where = np.full(len(idx), W_FULL, np.int8)
        cpu_of = np.full(len(idx), -1, np.int64)
        pos = {int(i): k for k, i in enumerate(idx)}
        free: dict[int, str] = {}
        bound_slabs = len(idx) + 1

        unread: list[str] = []  # slabs whose struct page the target does not hold

        def mark(slab_ptr: int, w: int, cpu: int, what: str) -> int | None:
            i = self.slab_index_of_struct(slab_ptr)
            if i is None or i not in pos:
                # A slab is known by its struct page: one the memmap walk could not read
                # (a filtered or truncated dump) was never seen as a slab, which is no
                # fault of the list.
                pfn = (slab_ptr - self.vmemmap) // self.page_size_struct
                k = int(np.searchsorted(self.unread[:, 0], pfn, "right")) - 1
                if k >= 0 and pfn < self.unread[k, 1]:
                    unread.append(f"{what} {slab_ptr:#x}")
                    return None
                sink.add("wrong_slab", f"{what} {slab_ptr:#x} is not a slab of this cache")
                return None
            where[pos[i]] = w
            cpu_of[pos[i]] = cpu
            return i

        # Node partial lists (walked by kmem_caches()).
        for n in c.nodes:
            for s in n.partial_slabs:
                mark(s, W_NODE_PARTIAL, -1, f"node {n.node} partial slab")
        # Per-CPU slabs and partial lists (to v6.19).
        if sl.cpu_slab_off is not None and c.cpu_slab:
            for cpu, raw in self._per_cpu(c.cpu_slab, sl.kmem_cache_cpu.size,
                                          "kmem_cache_cpu", sink):
                fl = int.from_bytes(raw[sl.cpu_freelist_off:][:8], "little")
                s = int.from_bytes(raw[sl.cpu_slab_slab_off:][:8], "little")
                if s:
                    i = mark(s, W_CPU, cpu, f"cpu {cpu} slab")
                    if i is not None and fl:
                        for o in self.freelist_chain(c, fl, i, int(self.objects[i]), sink,
                                                     self.slab_memory(i)):
                            free[o] = f"cpu {cpu}"
                p = (int.from_bytes(raw[sl.cpu_partial_off:][:8], "little")
                     if sl.cpu_partial_off is not None else 0)
                steps = 0
                while p and sl.next_off is not None:
                    if steps >= bound_slabs:
                        sink.add("too_long", f"cpu {cpu} partial list longer than the "
                                 f"cache's {len(idx)} slabs")
                        break
                    if mark(p, W_CPU_PARTIAL, cpu, f"cpu {cpu} partial slab") is None:
                        break
                    steps += 1
                    try:
                        p = t.read_u64(p + sl.next_off)
                    except FaultError:
                        sink.add("unreadable", f"cpu {cpu} partial slab {p:#x} cannot be read")
                        break
        # Sheaves (v6.18+) and barns.
        if sl.cpu_sheaves_off is not None and c.cpu_sheaves:
            for cpu, raw in self._per_cpu(c.cpu_sheaves, sl.pcs_size, "slub_percpu_sheaves",
                                          sink):
                for name, off in sl.sheaves_members.items():
                    sheaf = int.from_bytes(raw[off:off + 8], "little")
                    if sheaf:
                        place = f"sheaf {name} {cpu}" if name != "rcu_free" else f"rcu_free {cpu}"
                        self._sheaf(c, sheaf, place, free, sink)
            for n in c.nodes:
                if not n.barn:
                    continue
                try:
                    braw = t.read(n.barn, sl.barn_nr_empty_off + 4)
                except FaultError:
                    sink.add("unreadable", f"node {n.node} barn {n.barn:#x} cannot be read")
                    continue
                nr_full = int.from_bytes(braw[sl.barn_nr_full_off:][:4], "little")
                for sheaf in list_for_each_entry(t, "struct slab_sheaf",
                                                 n.barn + sl.barn_full_off, "barn_list",
                                                 bound=nr_full, problems=problems,
                                                 where=f"{c.name} node {n.node} barn full"):
                    self._sheaf(c, sheaf, f"barn {n.node}", free, sink)
        # Every slab's own freelist: read the slabs that have free objects in one piece.
        nfree = np.zeros(len(idx), np.int64)
        for k, i in enumerate(idx.tolist()):
            first = int(self.freelist[i])
            expect = int(self.objects[i]) - int(self.inuse[i])
            if not first:
                if expect > 0 and where[k] != W_CPU:
                    sink.add("inuse_mismatch", f"slab {self.slab_addr(i):#x}: inuse "
                             f"{int(self.inuse[i])} of {int(self.objects[i])} objects but an "
                             "empty freelist")
                continue
            chain = self.freelist_chain(c, first, i, int(self.objects[i]), sink,
                                        self.slab_memory(i))
            nfree[k] = len(chain)
            for o in chain:
                if o in free:
                    sink.add("double_free", f"slab {self.slab_addr(i):#x}: object {o:#x} is on "
                             f"the slab's freelist and free in {free[o]}")
                free[o] = "slab"
            if len(chain) != expect:
                sink.add("inuse_mismatch", f"slab {self.slab_addr(i):#x}: {len(chain)} objects "
                         f"on the freelist, objects - inuse = {expect}")
        where[(where == W_FULL) & (self.inuse[idx] < self.objects[idx])] = W_UNLISTED
        for k in np.flatnonzero(where == W_UNLISTED)[:4].tolist():
            i = int(idx[k])
            sink.add("unlisted", f"slab {self.slab_addr(i):#x} has free objects but is on no "
                     "list and no CPU")
        slabs = CacheSlabs(self.heads[idx], np.array([self.slab_addr(i) for i in idx.tolist()],
                                                     np.uint64),
                           self.base[idx], self.node[idx], self.objects[idx], self.inuse[idx],
                           self.freelist[idx], where, cpu_of, nfree)
        if unread:
            sink.add("unreadable", f"{len(unread)} slab(s) on its lists are not known: the "
                     f"memmap walk could not read their struct pages (the first: {unread[0]})")
        return CacheWalk(c, slabs, free, problems)

    def _per_cpu(self, ptr: int, size: int, what: str, sink: ProblemSink):
        """(cpu, SIZE bytes of ``per_cpu_ptr(PTR, cpu)``) for each possible CPU; an
        unreadable copy is a problem."""
        for cpu, base in per_cpu_ptrs(self.t, ptr):
            try:
                yield cpu, self.t.read(base, size)
            except FaultError:
                sink.add("unreadable", f"cpu {cpu}: {what} {base:#x} cannot be read")

    def _sheaf(self, c: KmemCache, sheaf: int, place: str, free: dict[int, str],
               sink: ProblemSink) -> None:
        sl, t = self.sl, self.t
        try:
            hdr = t.read(sheaf, sl.sheaf_objects_off)
            size = int.from_bytes(hdr[sl.sheaf_size_off:][:4], "little")
            owner = int.from_bytes(hdr[sl.sheaf_cache_off:][:8], "little")
            if size > MAX_SHEAF:
                sink.add("bad_sheaf", f"{place}: sheaf {sheaf:#x} claims {size} objects")
                return
            objs = np.frombuffer(t.read(sheaf + sl.sheaf_objects_off, 8 * size), "<u8")
        except FaultError:
            sink.add("unreadable", f"{place}: sheaf {sheaf:#x} cannot be read")
            return
        # init_percpu_sheaves(): caches without sheaves (sheaf_capacity 0: kmem_cache,
        # kmem_cache_node, debugged caches) share a static empty bootstrap_sheaf whose
        # cache is NULL.
        if owner != c.address and not (owner == 0 and size == 0):
            sink.add("bad_sheaf", f"{place}: sheaf {sheaf:#x} belongs to cache {owner:#x}")
        for o in objs.tolist():
            i = self.slab_of(o)
            if i is None or int(self.slab_cache[i]) != c.address:
                sink.add("bad_sheaf", f"{place}: sheaf {sheaf:#x} holds {o:#x}, which is not an "
                         "object of this cache")
                continue
            if o in free:
                sink.add("double_free", f"{place}: object {o:#x} is free twice (also "
                         f"{free[o]})")
            free[o] = place


def slab_walker(ctx: KernelContext) -> _Walker:
    """The walk of every slab of the snapshot (the memmap decoded once, for all caches)."""
    return ctx.snapshot("slab_walker", lambda: _Walker(ctx))


def cache_walk(ctx: KernelContext, c: KmemCache) -> CacheWalk:
    """The true state of cache C (see :class:`CacheWalk`), computed once per snapshot."""
    return ctx.snapshot(f"cache_walk {c.address:#x}", lambda: slab_walker(ctx).cache(c))


# --- KFENCE ------------------------------------------------------------------------------
@dataclasses.dataclass
class KfenceObjects:
    """The KFENCE pool (mm/kfence/core.c): ``__kfence_pool`` (0 when KFENCE is off or
    ``kfence.sample_interval=0``, as Debian boots), its first pfn and pages, and per cache
    address the objects allocated from it (``kfence_metadata[i].state ==
    KFENCE_OBJECT_ALLOCATED``, counted under ``meta->cache``)."""

    pool: int
    pool_pfn: int
    pool_pages: int
    allocated: dict[int, int]


def kfence_objects(ctx: KernelContext) -> KfenceObjects:
    """Read the KFENCE pool's objects (see :class:`KfenceObjects`).  The number of objects
    (CONFIG_KFENCE_NUM_OBJECTS) is not in the debug info: it is the number of leading
    ``kfence_metadata[]`` entries whose ``addr`` lies in the object page
    kfence_init_pool() gave them (``__kfence_pool + 2 * (i + 1) * PAGE_SIZE``)."""
    t = ctx.t
    try:
        pool = t.read_u64(t.symbol("__kfence_pool"))
        meta = t.read_u64(t.symbol("kfence_metadata"))
        ml = t.layout("struct kfence_metadata")
        allocated_state = t.enum_value("enum kfence_object_state", "KFENCE_OBJECT_ALLOCATED")
    except TargetError:
        return KfenceObjects(0, 0, 0, {})
    if not pool or not meta:
        return KfenceObjects(0, 0, 0, {})
    ps = t.page_size
    out: dict[int, int] = {}
    n = 0
    while n < 1 << 16:
        try:
            raw = t.read(meta + n * ml.size, ml.size)
        except FaultError:
            break
        addr = read_member(ml["addr"], raw)
        if addr & ~(ps - 1) != pool + 2 * (n + 1) * ps:
            break
        if read_member(ml["state"], raw) == allocated_state:
            cache = read_member(ml["cache"], raw)
            out[cache] = out.get(cache, 0) + 1
        n += 1
    pfn = virt_to_phys(kernel_layout(t), pool) >> (ps.bit_length() - 1)
    return KfenceObjects(pool, pfn, 2 * (n + 1), out)


# --- slabinfo --walk -----------------------------------------------------------------------
@dataclasses.dataclass
class CacheUsage:
    """
    One cache's true numbers (``slabinfo --walk``), from every slab walked.

    - ``name``, ``address``: the cache.
    - ``objsize``, ``object_size``: ``s->size`` (bytes per object in a slab) and
      ``s->object_size`` (bytes the user asked for).
    - ``refcount``: ``s->refcount``; ``merged``: it is above 1 (other caches were merged
      into this one, slab_common.c find_mergeable(); they all allocate ``objsize`` bytes).
    - ``slabs``: slabs found in the memmap; ``slabs_by_where``: per :data:`WHERE` place.
    - ``objects``: objects those slabs hold (``slab->objects`` summed).
    - ``allocated``: objects handed out (no freelist, CPU freelist, sheaf or barn holds
      them).
    - ``free_in_slabs``: on the slabs' own freelists.
    - ``free_cpu``: on CPU lockless freelists (``kmem_cache_cpu.freelist``, to v6.19).
    - ``free_cpu_partial``: free objects of the slabs on CPU partial lists (included in
      ``free_in_slabs``).
    - ``free_sheaves``: in CPU sheaves (main, spare); ``rcu_free``: in ``rcu_free``
      sheaves, waiting for a grace period; ``free_barn``: in the full sheaves of the
      nodes' barns (v6.18+).
    - ``kfence``: objects of this cache allocated from the KFENCE pool (not in any slab).
    - ``bytes``: memory of the slabs (pages * PAGE_SIZE); ``used_bytes``: ``allocated *
      object_size``; ``wasted_bytes``: ``bytes - used_bytes - free objects * objsize``
      (per-object padding and metadata of allocated objects, and each slab's tail).
    - ``problems``: :class:`~memscope.kernel.problem.Problem` records of the walk.
    """

    name: str
    address: int
    objsize: int
    object_size: int
    refcount: int
    merged: bool
    slabs: int
    slabs_by_where: dict[str, int]
    objects: int
    allocated: int
    free_in_slabs: int
    free_cpu: int
    free_cpu_partial: int
    free_sheaves: int
    rcu_free: int
    free_barn: int
    kfence: int
    bytes: int
    used_bytes: int
    wasted_bytes: int
    problems: list[Problem]


def cache_usage(ctx: KernelContext, c: KmemCache) -> CacheUsage:
    """The :class:`CacheUsage` of cache C."""
    w = cache_walk(ctx, c)
    s = w.slabs
    wk = slab_walker(ctx)
    nfree = int(s.nfree.sum())
    free_cpu = w.count("cpu ")
    sheaves = w.count("sheaf ")
    rcu = w.count("rcu_free")
    barn = w.count("barn")
    objects = int(s.objects.sum())
    allocated = objects - nfree - free_cpu - sheaves - rcu - barn
    pages = int(wk.npages[wk.slab_indices(c.address)].sum()) if len(s.pfn) else 0
    total = pages << wk.page_shift
    used = allocated * c.object_size
    return CacheUsage(
        c.name, c.address, c.size, c.object_size, c.refcount, c.refcount > 1, len(s.pfn),
        {name: int(np.count_nonzero(s.where == k)) for k, name in enumerate(WHERE)},
        objects, allocated, nfree, free_cpu,
        int(s.nfree[s.where == W_CPU_PARTIAL].sum()), sheaves, rcu, barn,
        wk.kfence.allocated.get(c.address, 0), total, used,
        total - used - (objects - allocated) * c.size, w.problems)


def slab_usage(ctx: KernelContext) -> list[CacheUsage]:
    """
    Walk every slab of every cache (``slabinfo --walk``): the slab pages come from the
    memmap decoded once (mm/page.py), their struct slab words from the same decode, each
    freelist is decoded (bounded by the slab's object count), and the per-CPU freelists,
    CPU partial lists, sheaves and barns are read per cache.

    :param ctx: the context of the target
    :return: one :class:`CacheUsage` per cache, in ``slab_caches`` order
    :raises TargetError: as :func:`kmem_caches` and :func:`memscope.mm.page.memmap`
    """
    return [cache_usage(ctx, c) for c in kmem_caches(ctx)]


def object_addresses(w: CacheWalk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every object of the cache's slabs: (address, slab position in ``w.slabs``, index in
    its slab), in slab (pfn) then index order; uint64, int64, int64 arrays."""
    s, c = w.slabs, w.cache
    n = s.objects.astype(np.int64)
    total = int(n.sum())
    slab_pos = np.repeat(np.arange(len(n)), n)
    first = np.repeat(np.cumsum(n) - n, n)
    index = np.arange(total, dtype=np.int64) - first
    addr = (s.base[slab_pos] + np.uint64(c.red_left_pad)
            + index.astype(np.uint64) * np.uint64(c.size))
    return addr, slab_pos, index


def allocated_mask(w: CacheWalk, addr: np.ndarray) -> np.ndarray:
    """Which of ADDR (object addresses of the cache) are allocated: on no freelist, CPU
    freelist, sheaf or barn."""
    if not w.free:
        return np.ones(len(addr), bool)
    return ~np.isin(addr, np.fromiter(w.free, np.uint64, len(w.free)))


# --- whatis ----------------------------------------------------------------------------------


@dataclasses.dataclass
class WhatIs:
    """
    What an address is (``whatis ADDR``).

    - ``address``: the address asked about.
    - ``kind``: ``"slab"`` (an object, or a slab's unused tail), ``"kfence"`` (in the
      KFENCE pool), ``"kmalloc_large"``, a page class of :data:`memscope.mm.page.CLASSES`
      for other direct-map addresses (``"buddy"``, ``"pcp"``, ``"pagecache"``, ``"anon"``,
      ``"pagetable"``, ``"hugetlb"``, ``"reserved"``, ``"kernel"``, ``"free"``,
      ``"hole"``, ...), ``"memmap"`` (a struct page in the vmemmap), ``"kernel image"``,
      ``"modules"``, ``"vmalloc"``, or ``"unknown"`` (no kernel region).  For a struct
      page that is a slab's struct slab, ``cache`` and ``slab`` name it.
    - ``pfn``: the page frame (direct map and memmap addresses), else None.
    - ``cache``, ``slab`` (``struct slab *``), ``index`` (object in the slab, None in a
      slab's tail), ``offset`` (bytes into the object), ``object`` (its address),
      ``state`` (``"allocated"`` or ``"free"``), ``free_in`` (where a free object waits:
      ``"slab"``, ``"cpu N"``, ``"sheaf main N"``, ``"sheaf spare N"``, ``"rcu_free N"``,
      ``"barn N"``): slab objects only.
    - ``block_pfn``, ``order``: the free buddy block holding the page (buddy only).
    """

    address: int
    kind: str
    pfn: int | None = None
    cache: str | None = None
    slab: int | None = None
    index: int | None = None
    offset: int | None = None
    object: int | None = None
    state: str | None = None
    free_in: str | None = None
    block_pfn: int | None = None
    order: int | None = None


def whatis(ctx: KernelContext, addr: int) -> WhatIs:
    """
    Say what ADDR is: a slab object (cache, slab, index, offset, allocated or free and
    where), a KFENCE object, a large kmalloc, or else its page's class from the memmap
    (mm/page.py), a struct page, or the kernel region it lies in.

    :param ctx: the context of the target
    :param addr: a kernel virtual address
    :return: a :class:`WhatIs`
    :raises TargetError: as :func:`slab_usage`
    """
    t = ctx.t
    kl = kernel_layout(t)
    reg = _region(kl, addr)
    pm = _page.memmap(ctx)
    shift = t.page_size.bit_length() - 1
    if reg == "vmemmap":
        # A struct page; the struct slab of a slab's first page names its cache.
        pfn, _ = divmod(addr - pm.vmemmap, pm.page_size_struct)
        wk = slab_walker(ctx)
        i = wk.slab_index_of_struct(pm.vmemmap + pfn * pm.page_size_struct)
        c = wk.by_addr.get(int(wk.slab_cache[i])) if i is not None else None
        return WhatIs(addr, "memmap", pfn, c and c.name, i is not None and wk.slab_addr(i)
                      or None)
    if reg != "direct map":
        return WhatIs(addr, reg or "unknown")
    pfn = virt_to_phys(kl, addr) >> shift
    if not 0 <= pfn < pm.nr_pages:
        return WhatIs(addr, "hole", pfn)
    wk = slab_walker(ctx)
    kf = wk.kfence
    if kf.pool_pages and kf.pool_pfn <= pfn < kf.pool_pfn + kf.pool_pages:
        return WhatIs(addr, "kfence", pfn)
    cls = _page.CLASSES[pm.cls[pfn]]
    if cls == "slab":
        i = wk.slab_of(addr)
        c = wk.by_addr.get(int(wk.slab_cache[i])) if i is not None else None
        if c is None:
            return WhatIs(addr, "slab", pfn)
        w = cache_walk(ctx, c)
        first = int(wk.base[i]) + c.red_left_pad
        idx, off = divmod(addr - first, c.size)
        if not 0 <= idx < int(wk.objects[i]):
            return WhatIs(addr, "slab", pfn, c.name, wk.slab_addr(i))
        obj = first + idx * c.size
        where = w.free.get(obj)
        return WhatIs(addr, "slab", pfn, c.name, wk.slab_addr(i), idx, off, obj,
                      "free" if where else "allocated", where)
    if cls == "buddy":
        lo = max(pfn - (1 << (ctx.nr_orders - 1)) + 1, 0)
        starts = np.flatnonzero(pm.order[lo:pfn + 1] >= 0)
        for s in starts[::-1].tolist():
            o = int(pm.order[lo + s])
            if lo + s + (1 << o) > pfn:
                return WhatIs(addr, "buddy", pfn, block_pfn=lo + s, order=o)
    return WhatIs(addr, cls, pfn)
