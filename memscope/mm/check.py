"""``check``: the buddy half (:func:`memscope.mm.freelists.check`: free lists and per-CPU
lists against ``nr_free``, NR_FREE_PAGES and ``pcp->count``) and the slab half
(:func:`memscope.mm.slub_debug.check_slabs`: every slab of every cache walked, and the red
zones and poison of caches with SLUB debugging), in one report."""

from __future__ import annotations

import dataclasses

from ..kernel.problem import Problem
from . import freelists, slub_debug
from .context import KernelContext

__all__ = ["check"]


def check(ctx: KernelContext) -> freelists.CheckReport:
    """
    Check the buddy allocator and every slab (the ``check`` command and
    :func:`memscope.drgn_api.check`).

    :param ctx: the context of the target
    :return: a :class:`memscope.mm.freelists.CheckReport` whose ``problems`` are the buddy
        half's then the slab half's (``missing_page`` for each page the dump left out that
        a walk needed), ``slabs`` the :class:`memscope.mm.slub_debug.SlabCheck`,
        ``ok`` False when either found anything
    :raises TargetError: a type, member or symbol either half needs is missing
    :raises FaultError: a zone's ``free_area[]`` or ``slab_caches`` cannot be read
    """
    # On a live kernel, whether the counters moved is watched over the buddy half only
    # (memscope.mm.live.watched): the slab half reads no free list or counter, and its
    # races are the problems that do not repeat.
    from . import live

    with live.watched(ctx):
        report = freelists.check(ctx)  # its missing pages are among its problems
    ctx.t.forget_missing_pages()
    slabs = slub_debug.check_slabs(ctx)
    # A page the dump left out that the slab half needed (and the buddy half had not
    # already named): what it held was not checked.
    named = {p.message for p in report.problems if p.kind == "missing_page"}
    missing = [Problem("missing_page", "dump", str(m)) for m in ctx.t.missing_pages_read()
               if str(m) not in named]
    problems = report.problems + slabs.problems + missing
    return dataclasses.replace(report, ok=not problems, problems=problems, slabs=slabs)
