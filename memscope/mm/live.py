"""Did the running kernel move while a command read it?  (``-k``, the drgn plugin on a live
kernel.)

A running kernel cannot be paused for a read, so a command's answer is exact only if what
it read did not change meanwhile.  :func:`counters` reads the allocator's own counters —
every populated zone's ``free_area[order].nr_free`` (changed under ``zone->lock`` by every
buddy allocation and free, include/linux/mmzone.h) and the global ``vm_zone_stat[]``,
``vm_node_stat[]`` (mm/vmstat.c: free, file, anon, slab, page-table, ... pages, folded
from the per-CPU deltas) — as raw bytes; a command read between two equal readings saw a
kernel whose free lists and page counters did not move (:func:`moved`).  Unequal readings
are a race seen: the answer is approximate, and says so.

It cannot see what those counters do not count (a per-CPU list refilled and drained to the
same length, a slab object reused within a slab): equal readings say "no race seen", not
"no race".
"""

from __future__ import annotations

from .context import KernelContext


def counters(ctx: KernelContext) -> bytes:
    """The bytes of every populated zone's ``free_area[]`` (``nr_free`` and the list heads)
    and of ``vm_zone_stat[]``/``vm_node_stat[]`` (those present in the kernel), read from
    the target now (never from the context's snapshot cache; the zones' addresses come
    from it).

    :raises TargetError: the zones or ``free_area`` cannot be found or read."""
    t = ctx.t
    off = ctx.zone_layout.offset("free_area")
    size = ctx.nr_orders * ctx.free_area_size
    parts = [t.read(z.address + off, size) for z in ctx.all_zones()]
    for name in ("vm_zone_stat", "vm_node_stat"):
        if t.has_symbol(name):
            var = t.variable(name)
            parts.append(t.read(var.address, var.size))
    return b"".join(parts)


def moved(before: bytes, after: bytes) -> bool:
    """Whether the kernel's counters changed between two :func:`counters` readings."""
    return before != after
