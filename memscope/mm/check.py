"""``check``: the buddy half (:func:`memscope.mm.freelists.check`: free lists and per-CPU
lists against ``nr_free``, NR_FREE_PAGES and ``pcp->count``) and the slab half
(:func:`memscope.mm.slub_debug.check_slabs`: every slab of every cache walked, and the red
zones and poison of caches with SLUB debugging), in one report."""

from __future__ import annotations

import dataclasses

from . import freelists, slub_debug
from .context import KernelContext

__all__ = ["check"]


def check(ctx: KernelContext) -> freelists.CheckReport:
    """
    Check the buddy allocator and every slab (the ``check`` command and
    :func:`memscope.drgn_api.check`).

    :param ctx: the context of the target
    :return: a :class:`memscope.mm.freelists.CheckReport` whose ``problems`` are the buddy
        half's then the slab half's, ``slabs`` the :class:`memscope.mm.slub_debug.SlabCheck`,
        ``ok`` False when either found anything
    :raises TargetError: a type, member or symbol either half needs is missing
    :raises FaultError: a zone's ``free_area[]`` or ``slab_caches`` cannot be read
    """
    report = freelists.check(ctx)
    slabs = slub_debug.check_slabs(ctx)
    problems = report.problems + slabs.problems
    return dataclasses.replace(report, ok=not problems, problems=problems, slabs=slabs)
