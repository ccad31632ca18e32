"""Did the running kernel move while a command read it?  (``-k``, the drgn plugin on a live
kernel.)

A running kernel cannot be paused for a read, so a command's answer is exact only if what
it read did not change meanwhile.  :func:`counters` reads the allocator's own state words —
every populated zone's ``free_area[]`` (``nr_free`` and the list heads, changed under
``zone->lock`` by every buddy allocation and free, include/linux/mmzone.h), each CPU's
``struct per_cpu_pages`` of each zone (``count`` and the list heads: every page that goes
onto or off a pcp list moves a head or the count) and the global ``vm_zone_stat[]``,
``vm_node_stat[]`` (mm/vmstat.c: free, file, anon, slab, page-table, ... pages, folded
from the per-CPU deltas) — as raw bytes; a command read between two equal readings saw a
kernel whose free lists, pcp lists and page counters did not move (:func:`moved`).
Unequal readings are a race seen: the answer is approximate, and says so.

It cannot see what those words do not record (a list whose head entries stay while its
middle changes, a slab object reused within a slab): equal readings say "no race seen",
not "no race".
"""

from __future__ import annotations

import contextlib

from .context import KernelContext


def counters(ctx: KernelContext) -> bytes:
    """The bytes of every populated zone's ``free_area[]`` (``nr_free`` and the list heads),
    of its ``struct per_cpu_pages`` on each possible CPU (``count`` to the end of
    ``lists[]``) and of ``vm_zone_stat[]``/``vm_node_stat[]`` (those present), read from
    the target now (never from the context's snapshot cache; the zones' addresses come
    from it).

    :raises TargetError: the zones or ``free_area`` cannot be found or read."""
    from ..kernel.percpu import per_cpu_ptrs
    from .freelists import pcp_layout

    t = ctx.t
    off = ctx.zone_layout.offset("free_area")
    size = ctx.nr_orders * ctx.free_area_size
    member, inner, count_off, lists_off, nlists = pcp_layout(ctx)
    pcp_end = max(count_off + 4, lists_off + 16 * nlists)
    parts = []
    for z in ctx.all_zones():
        parts.append(t.read(z.address + off, size))
        for _, ptr in per_cpu_ptrs(t, t.read_u64(z.address + member)):
            parts.append(t.read((ptr + inner + count_off) & ((1 << 64) - 1),
                                pcp_end - count_off))
    for name in ("vm_zone_stat", "vm_node_stat"):
        if t.has_symbol(name):
            var = t.variable(name)
            parts.append(t.read(var.address, var.size))
    return b"".join(parts)


def moved(before: bytes, after: bytes) -> bool:
    """Whether the kernel's counters changed between two :func:`counters` readings."""
    return before != after


class Watch:
    """A live read's record of whether the counters moved, over the parts of a command
    that ask for it (:func:`watched`).  ``execute_live`` gives one to the command through
    the context (``ctx.live_watch``); a command whose answer depends on the counters in
    only one part (``check``: its buddy half; its slab half reads no free list, and its
    races are the problems that do not repeat) watches that part alone, so that a race
    elsewhere in a seconds-long read is not called one of its answer's."""

    def __init__(self) -> None:
        self.used = False
        self.moved = False


class Reading:
    """What :func:`reading` saw: ``moved`` is set when the block is left."""

    def __init__(self) -> None:
        self.moved = False


@contextlib.contextmanager
def reading(ctx: KernelContext):
    """Read the counters before and after the block; the yielded :class:`Reading`'s
    ``moved`` is then True when the two readings differ or either failed (a kernel that
    could not be read twice is not known to have stood still)."""
    from ..target.base import TargetError

    def now() -> bytes | None:
        try:
            return counters(ctx)
        except TargetError:
            return None

    r = Reading()
    before = now()
    yield r
    after = now()
    r.moved = before is None or after is None or moved(before, after)


@contextlib.contextmanager
def watched(ctx: KernelContext):
    """Read the counters around the block when CTX is watched by a live read (else do
    nothing); a failed reading counts as moved."""
    w = getattr(ctx, "live_watch", None)
    if w is None:
        yield
        return
    with reading(ctx) as r:
        yield
    w.used = True
    w.moved = w.moved or r.moved
