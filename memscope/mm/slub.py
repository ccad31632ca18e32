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
  count_partial_free_approx()"): exact up to MAX_PARTIAL_TO_SCAN (10000) partial slabs,
  else 5000 from each end of the list, scaled.

Walks are bounded: the cache list by :data:`MAX_CACHES`, a partial list by its
``nr_partial``, a freelist by its slab's object count; what does not fit is a
:class:`~memscope.kernel.problem.Problem`, never an exception or a hang.
"""

from __future__ import annotations

import dataclasses

from ..kernel.fields import read_member
from ..kernel.list import list_for_each, list_for_each_entry
from ..kernel.problem import Problem
from ..target.base import FaultError, Member, Target, TargetError
from .context import KernelContext

__all__ = ["SlubLayout", "KmemCache", "KmemCacheNode", "SlabInfo", "slub_layout",
           "kmem_caches", "find_kmem_cache", "slabinfo", "format_slabinfo", "oo_order",
           "oo_objects", "MAX_PARTIAL_TO_SCAN"]

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
                     get("cpu_slab"), get("cpu_sheaves"), nodes, problems)


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
