"""memscope's commands as Python functions on a :class:`drgn.Program`, for drgn scripts and
the drgn REPL, returning plain data (dataclasses).

    >>> import memscope.drgn_api as ms
    >>> ms.buddyinfo(prog)[0]
    ZoneBuddyInfo(node=0, zone='DMA', nr_free=[0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 3])
    >>> print(ms.format_pagetypeinfo(ms.pagetypeinfo(prog)), end="")
    >>> [p for p in ms.check(prog).problems]

Importing this module also registers the drgn command ``memscope`` (drgn 0.3.0's
``drgn.commands`` API), so that in the drgn REPL::

    >>> import memscope.drgn_api
    >>> %memscope buddyinfo -f proc
    >>> %memscope check

runs the same commands, with the same flags, as the ``memscope`` command line.  drgn can
load it by itself with ``DRGN_PLUGINS=memscope=memscope.drgn_api drgn -c VMCORE ...``.

The functions cache what they probe per Program (layouts, enumerators), so calling several
of them on one Program reads the debug info once.
"""

from __future__ import annotations

import argparse
import dataclasses
import weakref
from typing import Any

import drgn

from .mm import buddy as _buddy
from .mm import freelists as _fl
from .mm.buddy import PageTypeInfo, ZoneBuddyInfo, ZonePageTypes, format_buddyinfo, \
    format_pagetypeinfo
from .mm.freelists import FreeBlock, PcpList, Problem, ZoneFreeLists
from .mm import frag as _frag
from .mm import page as _page
from .mm import pageblock as _pageblock
from .mm.frag import ZoneFrag
from .mm.page import PageRecord, ZonePages
from .mm.pageblock import ZonePageblocks
from .mm.zone import MM
from .target.drgn import DrgnTarget

__all__ = ["buddyinfo", "pagetypeinfo", "freelists", "check", "pages", "page_records",
           "pageblocks", "frag", "CheckReport", "ZoneCheck", "ZonePages", "PageRecord",
           "ZonePageblocks", "ZoneFrag",
           "ZoneBuddyInfo", "PageTypeInfo", "ZonePageTypes", "ZoneFreeLists", "FreeBlock",
           "PcpList", "Problem", "format_buddyinfo", "format_pagetypeinfo", "mm_for"]

_MMS: "weakref.WeakKeyDictionary[drgn.Program, MM]" = weakref.WeakKeyDictionary()


def mm_for(prog: drgn.Program) -> MM:
    """The memscope view of PROG (created once per Program and cached).

    On a live target (``prog.set_kernel()``, QMP) each function call walks memory afresh;
    only layouts are cached."""
    try:
        return _MMS[prog]
    except (KeyError, TypeError):
        pass
    mm = MM(DrgnTarget(prog))
    try:
        _MMS[prog] = mm
    except TypeError:  # Program not weak-referenceable: no caching
        pass
    return mm


def _fresh(prog: drgn.Program) -> MM:
    # Layouts are cached in the MM; per-walk state (zones, walker) is recomputed per call.
    mm = mm_for(prog)
    for k in ("_freelist_walker",):
        mm.__dict__.pop(k, None)
    return mm


def buddyinfo(prog: drgn.Program) -> list[ZoneBuddyInfo]:
    """/proc/buddyinfo's numbers: ``free_area[order].nr_free`` of every populated zone.

    :return: one :class:`ZoneBuddyInfo` (node, zone, nr_free per order) per zone."""
    return _buddy.buddyinfo(_fresh(prog))


def pagetypeinfo(prog: drgn.Program) -> PageTypeInfo:
    """/proc/pagetypeinfo's numbers: free blocks per migratetype and order (list lengths,
    counted as the kernel does with its 100000 cap) and pageblocks per migratetype.
    :func:`format_pagetypeinfo` prints it as the kernel does."""
    return _buddy.pagetypeinfo(_fresh(prog))


def freelists(prog: drgn.Program, *, pcp: bool = True) -> list[ZoneFreeLists]:
    """Walk every free list (``free_area[order].free_list[migratetype]``) and, unless
    ``pcp=False``, every per-CPU page list of every populated zone.

    :return: one :class:`ZoneFreeLists` per zone: ``blocks`` (FreeBlock: node, zone,
        order, migratetype, pfn), ``pcp`` (PcpList: cpu, index, order, migratetype, pfns),
        ``nr_free``, ``pcp_count``, ``free_pages_counter`` and the ``problems`` found."""
    return _fl.freelists(_fresh(prog), pcp=pcp)


@dataclasses.dataclass(frozen=True)
class ZoneCheck:
    node: int
    zone: str
    nr_free: list[int]  # free_area[order].nr_free
    walked: list[int]  # blocks found on the lists, per order
    free_pages: int  # pages on the free lists, MIGRATE_ISOLATE excluded
    free_pages_counter: int | None  # NR_FREE_PAGES, per-CPU diffs included
    pcp_pages: int


@dataclasses.dataclass(frozen=True)
class CheckReport:
    ok: bool
    zones: list[ZoneCheck]
    problems: list[Problem]


def check(prog: drgn.Program) -> CheckReport:
    """Walk the free lists and verify them: every entry a PageBuddy page of the list's
    order inside the zone, no cycle, no cross-linked or broken list, walked counts equal to
    ``nr_free`` and to the zone's NR_FREE_PAGES, pcp lists equal to ``pcp->count``.

    :return: a :class:`CheckReport`; ``ok`` is False when any problem was found."""
    mm = _fresh(prog)
    zones = _fl.freelists(mm)
    iso = _fl.walker(mm).isolate
    rows = [ZoneCheck(z.node, z.zone, z.nr_free, [sum(x) for x in z.walked],
                      sum(z.walked[o][mt] << o for o in range(len(z.walked))
                          for mt in range(len(z.walked[o])) if mt != iso),
                      z.free_pages_counter, sum(len(p.pfns) << p.order for p in z.pcp))
            for z in zones]
    problems = [p for z in zones for p in z.problems]
    return CheckReport(not problems, rows, problems)


def _new(prog: drgn.Program) -> MM:
    # The struct page decode is cached per MM: a new MM on the same target (whose layout
    # cache is kept) decodes memory afresh, as a live target needs.
    return MM(mm_for(prog).t)


def pages(prog: drgn.Program) -> list[ZonePages]:
    """Every physical page classified (buddy, pcp, slab, anon, pagecache, pagetable,
    reserved, hole, ...), decoded in bulk from the struct page array.

    :return: one :class:`ZonePages` per zone: ``counts`` (class -> pages), buddy blocks per
        order, pcp pages, compound tails and pages that changed under the read."""
    return _page.zone_counts(_new(prog))


def page_records(prog: drgn.Program, lo: int, hi: int) -> list[PageRecord]:
    """The pages of pfns [LO, HI): class, flags, order, refcount, mapcount, ..."""
    return _page.page_records(_new(prog), lo, hi)


def pageblocks(prog: drgn.Program) -> list[ZonePageblocks]:
    """Pageblocks per migratetype, skip and isolate bits, and mixed blocks, per zone."""
    return _pageblock.zone_pageblocks(_new(prog))


def frag(prog: drgn.Program, gfp: str = "kernel") -> list[ZoneFrag]:
    """Per zone and order: free pages, unusable free space index, extfrag index, largest
    free block and whether an allocation of that order would succeed now for GFP
    ("kernel", "movable" or "atomic"), as ``zone_watermark_ok`` decides."""
    return _frag.zone_frag(_new(prog), gfp)


# --- drgn command registration -------------------------------------------------------
def _register() -> bool:
    try:
        from drgn.commands import argument, command
    except ImportError:  # drgn < 0.0.31 has no command API
        return False
    from . import commands as _commands

    _commands._load()
    names = sorted(_commands.COMMANDS)

    @command(
        name="memscope",
        description="memscope: kernel memory-management state (" + ", ".join(names) + ")",
        arguments=(
            argument("subcommand", choices=names, help="the memscope command to run"),
            argument("-f", "--format", choices=("table", "json", "proc"), default="table",
                     help="output format (default: table)"),
            argument("rest", nargs=argparse.REMAINDER,
                     help="the subcommand's own options, as on the command line"),
        ),
    )
    def _cmd_memscope(prog: drgn.Program, name: str, args: argparse.Namespace,
                      **kwargs: Any) -> int:
        import sys

        from .cli import _Parser
        from .commands import CommandError, add_subparsers
        from .errors import MemscopeError
        from .target.base import TargetError

        # The command line's parser: a bad option is one line "memscope: ..." on stderr
        # (argparse's own prints its usage too).
        parser = _Parser(prog="memscope", add_help=False)
        add_subparsers(parser)
        try:
            sub = parser.parse_args([args.subcommand, "-f", args.format, *args.rest])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 2
        cmd = _commands.COMMANDS[args.subcommand]
        try:
            result = cmd.run(_fresh(prog), sub)
            print(result.render(sub.format), end="")
        except (CommandError, MemscopeError, TargetError) as e:
            print(f"memscope: {e}", file=sys.stderr)
            return 2
        return result.exit_status

    return True


#: Whether the ``memscope`` drgn command was registered (drgn has a command API).
DRGN_COMMAND_REGISTERED = _register()
