"""Mempools (``mempool_t``, mm/mempool.c): reserves of preallocated elements that
``mempool_alloc()`` falls back on when the allocator behind the pool fails.

The kernel keeps no list of mempools, so they are found where they live and checked:

- **globals**: the kernel image's ``.data`` and ``.bss`` (``_sdata`` to ``_edata``,
  ``__bss_start`` to ``_end``) are scanned for the kernel's own callbacks
  (``mempool_alloc_slab``, ``mempool_kmalloc``, ``mempool_alloc_pages``,
  ``mempool_kvmalloc``) at ``mempool_t.alloc``'s offset: a global ``mempool_t`` or one
  embedded in a global structure (``fs_bio_set.bio_pool``); the owner is named by
  ``%pS`` of the pool's address (``fs_bio_set+0x18/0x188``);
- **slab objects**: every slab (the SLUB walk's, from the decoded memmap; KFENCE's pool,
  which it leaves out, is not scanned) is scanned the same way: a
  pool embedded in an allocated structure (a ``bio_set`` of a block device or a
  device-mapper target), named by its cache and the object's address.

A hit is kept only if the rest of the structure agrees with it: ``free`` is the matching
``mempool_free_*`` callback, ``0 <= curr_nr <= min_nr``, ``min_nr`` at most
:data:`MAX_MIN_NR`, and ``elements`` a readable array whose first ``curr_nr`` entries are
non-NULL.  ``pool_data`` says what backs the pool: a ``kmem_cache`` (its ``object_size``
and name), a kmalloc size, or a page order.  Pools on their way to being freed
(``mempool_exit()`` clears the fields) are not found.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel import kallsyms
from ..kernel.addr import kernel_layout
from ..target.base import FaultError, TargetError
from .context import KernelContext

__all__ = ("Mempool", "MempoolScan", "mempool", "mempools")

#: alloc callback -> (its free callback, what pool_data is)
CALLBACKS = {
    "mempool_alloc_slab": ("mempool_free_slab", "slab"),
    "mempool_kmalloc": ("mempool_kfree", "kmalloc"),
    "mempool_kvmalloc": ("mempool_kvfree", "kvmalloc"),
    "mempool_alloc_pages": ("mempool_free_pages", "pages"),
}
#: A pool reserving more elements than this is not believed (the kernel's largest are a
#: few hundred).
MAX_MIN_NR = 1 << 16
_CHUNK = 8 << 20


@dataclasses.dataclass(frozen=True)
class Mempool:
    """One mempool: ``address`` of its ``mempool_t``; ``found`` "global" or "slab";
    ``owner`` who holds it (``%pS`` of a global, or ``CACHE object 0x...+0xoff``);
    ``min_nr`` elements reserved, ``curr_nr`` elements in the pool now (below ``min_nr``:
    allocations have drawn on it); ``backing`` "slab", "kmalloc", "kvmalloc" or "pages";
    ``element_size`` bytes per element (a slab cache's object_size, a kmalloc size, or
    PAGE_SIZE << order); ``cache`` the backing slab cache's name ("" otherwise);
    ``elements`` the addresses of the ``curr_nr`` elements held."""

    address: int
    found: str
    owner: str
    min_nr: int
    curr_nr: int
    backing: str
    element_size: int
    cache: str
    elements: tuple[int, ...]

    @property
    def below_min(self) -> bool:
        """Whether the pool has lent out part of its reserve (curr_nr < min_nr)."""
        return self.curr_nr < self.min_nr


@dataclasses.dataclass(frozen=True)
class MempoolScan:
    """The pools found, and how many hits each way were rejected by the checks."""

    pools: list[Mempool]
    rejected: dict[str, int]

    def count(self, found: str) -> int:
        return sum(1 for p in self.pools if p.found == found)


class _Checker:
    def __init__(self, ctx: KernelContext):
        t = self.t = ctx.t
        self.ctx = ctx
        name = "mempool_t" if t.has_type("mempool_t") else "struct mempool_s"
        self.ml = t.layout(name)
        self.callbacks = {t.symbol(a): (t.symbol(f) if t.has_symbol(f) else None, kind)
                          for a, (f, kind) in CALLBACKS.items() if t.has_symbol(a)}
        self.kc = t.layout("struct kmem_cache")

    def check(self, addr: int, found: str, owner: str) -> Mempool | None:
        t, ml = self.t, self.ml
        try:
            raw = t.read(addr, ml.size)
        except FaultError:
            return None
        def word(m, size=8, signed=False):
            return int.from_bytes(raw[ml.offset(m):ml.offset(m) + size], "little",
                                  signed=signed)
        alloc, free = word("alloc"), word("free")
        if alloc not in self.callbacks:
            return None
        want_free, backing = self.callbacks[alloc]
        min_nr, curr_nr = word("min_nr", 4, True), word("curr_nr", 4, True)
        if want_free is not None and free != want_free:
            return None
        if not 0 <= curr_nr <= min_nr <= MAX_MIN_NR or min_nr == 0:
            return None
        elements = word("elements")
        try:
            arr = np.frombuffer(t.read(elements, 8 * min_nr), "<u8") if min_nr else \
                np.zeros(0, np.uint64)
        except FaultError:
            return None
        held = arr[:curr_nr]
        if (held == 0).any():
            return None
        pool_data = word("pool_data")
        cache = ""
        if backing == "slab":
            try:
                size = t.read_u32(pool_data + self.kc.offset("object_size"))
                cache = t.read_cstr(t.read_u64(pool_data + self.kc.offset("name")), 64)
            except FaultError:
                return None
        elif backing == "pages":
            size = t.page_size << pool_data
        else:
            size = pool_data
        return Mempool(addr, found, owner, min_nr, curr_nr, backing, size, cache,
                       tuple(int(x) for x in held))


def _scan(t, lo: int, hi: int, targets: np.ndarray, alloc_off: int) -> list[int]:
    """mempool_t addresses whose alloc word, in [LO, HI), is one of TARGETS (sorted)."""
    out: list[int] = []

    def words(a: int, n: int) -> None:
        w = np.frombuffer(t.read(a, n), "<u8")
        # the callbacks are a few kernel text addresses: a range test first, then isin on
        # the few words inside it (isin's set-up costs more than the test on a small slab)
        near = np.flatnonzero((w >= targets[0]) & (w <= targets[-1]))
        for i in near[np.isin(w[near], targets)].tolist():
            out.append(a + 8 * i - alloc_off)

    # A page the dump left out holds no pool this scan can check: its reads are guesses
    # (speculative, not reported as missing).  On the 6.12 makedumpfile -d 31 dump of the
    # lab's kdump path, a page inside [__bss_start, __bss_stop) (pfn 0x209f1) is page
    # cache by its struct page (PG_lru; the kernel gave it back after boot), left out at
    # that level: mempools failed on it before.
    for a in range(lo, hi, _CHUNK):
        n = min(_CHUNK, hi - a) // 8 * 8
        try:
            with t.speculative():
                words(a, n)
        except FaultError:  # page by page: the chunk's other pages are scanned
            ps = t.page_size
            p = a
            while p < a + n:
                end = min((p // ps + 1) * ps, a + n)
                try:
                    with t.speculative():
                        words(p, (end - p) // 8 * 8)
                except FaultError:
                    pass
                p = end
    return out


def _runs(base: np.ndarray, size: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) of each run of adjacent slabs (BASE sorted, SIZE bytes each), each run
    at most _CHUNK unless one slab is larger: one read and one scan per run, not per slab."""
    runs: list[tuple[int, int]] = []
    for lo, n in zip(base.tolist(), size.tolist()):
        if runs and runs[-1][1] == lo and lo + n - runs[-1][0] <= _CHUNK:
            runs[-1] = (runs[-1][0], lo + n)
        else:
            runs.append((lo, lo + n))
    return runs


def mempools(ctx: KernelContext) -> MempoolScan:
    """Every mempool found in the kernel's data and in slab objects, checked (see the
    module), globals first, each list in address order.

    :raises TargetError: the kernel has no mempool callbacks (no mm/mempool.c)."""
    t = ctx.t
    c = _Checker(ctx)
    if not c.callbacks:
        raise TargetError("the kernel has none of mempool's callbacks (mempool_alloc_slab...)")
    targets = np.array(sorted(c.callbacks), np.uint64)
    alloc_off = c.ml.offset("alloc")
    pools: list[Mempool] = []
    rejected = {"global": 0, "slab": 0}
    lay = kernel_layout(t)
    ranges = [(t.symbol("_sdata"), t.symbol("_edata"))]
    if t.has_symbol("__bss_start"):
        ranges.append((t.symbol("__bss_start"), lay.kernel_end))
    seen = set()
    for lo, hi in ranges:
        for addr in _scan(t, lo, hi, targets, alloc_off):
            if addr in seen:
                continue
            seen.add(addr)
            p = c.check(addr, "global", kallsyms.format_symbol(ctx, addr))
            if p:
                pools.append(p)
            else:
                rejected["global"] += 1
    from . import slub

    # every slab (its pages and cache) as the SLUB walk found them in the decoded memmap
    w = slub.slab_walker(ctx)
    for lo, hi in _runs(w.base, w.npages.astype(np.uint64) * np.uint64(t.page_size)):
        for addr in _scan(t, lo, hi, targets, alloc_off):
            # the slab holding the alloc word found
            i = int(np.searchsorted(w.base, np.uint64(addr + alloc_off), "right")) - 1
            base, cache_addr = int(w.base[i]), int(w.slab_cache[i])
            cache = w.by_addr[cache_addr].name if cache_addr in w.by_addr else "?"
            p = c.check(addr, "slab", f"{cache} slab {base:#x} +{addr - base:#x}")
            if p:
                pools.append(p)
            else:
                rejected["slab"] += 1
    return MempoolScan(pools, rejected)


def mempool(ctx: KernelContext, addr: int) -> Mempool:
    """The ``mempool_t`` at ADDR, checked as :func:`mempools` checks what it finds (its
    callbacks, ``0 <= curr_nr <= min_nr``, a readable element array), with the elements
    it holds; ``found`` is "given", ``owner`` ``%pS`` of ADDR when a symbol covers it
    ("" otherwise).

    :raises TargetError: ADDR is not a mempool_t this kernel could be using (one line),
        or the kernel has no mempool callbacks."""
    c = _Checker(ctx)
    if not c.callbacks:
        raise TargetError("the kernel has none of mempool's callbacks (mempool_alloc_slab...)")
    p = c.check(addr, "given", "")
    if p is None:
        raise TargetError(f"{addr:#x} is not a mempool_t this kernel could be using (its "
                          "callbacks, counts or element array do not check)")
    owner = kallsyms.format_symbol(ctx, addr)
    return dataclasses.replace(p, owner="" if owner == f"{addr:#x}" else owner)
