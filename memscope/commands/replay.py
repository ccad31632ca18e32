"""``replay --from A --to B [--events FILE]``: predict dump B from dump A and the events
traced in between (:mod:`memscope.model.replay`), and say where the prediction and B
agree.

A and B are lab snapshot directories (``vmcore`` inside, the vmlinux named by the lab
run's ``meta.json``) or vmcore files read with ``-s VMLINUX``.  The events are B's ring
buffer's window after A by default; ``--events FILE`` takes trace text instead
(:mod:`memscope.events.text`; only its events later than A's last ring-buffer event on
each CPU would be exact: the file is taken as the window as it is).

JSON output::

    {"events": int, "applied": int, "lost": int,
     "allocators": [{"allocator": "buddy" | "pcp" | "slab" | "cma" | "vmalloc",
                     "matched": int, "missing": int, "extra": int,
                     "divergences": [{"kind": str, "pfn": int, "order": int,
                                      "event": str, "cause": str}]}]}

(for ``slab`` a divergence's ``pfn`` is the object's address; for ``vmalloc`` the area's
start address, with its ``size`` in bytes; a ``cma`` divergence is a run of ``count``
pages from ``pfn``).  ``cma`` (bitmap bits: :mod:`memscope.model.cma`) is there when the
earlier dump has an activated CMA area, ``vmalloc`` (busy and lazily freed areas:
:mod:`memscope.model.vmalloc`) when the kernel has the vmalloc tracepoints (6.12, 7.2).
Exit status 0 when every allocator agrees, 1 when something diverges, 2 for bad input.

``--leaks``: instead, what the window allocated and B still holds, by call site
(:mod:`memscope.model.leaks`; JSON: ``events``, ``lost`` and the keys of
:meth:`memscope.model.leaks.Leaks.to_json`); exit status 0.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from tabulate import tabulate

from . import CommandError, Result


def add_arguments(p) -> None:
    p.add_argument("--from", dest="replay_from", required=True, metavar="A",
                   help="the earlier dump: a lab snapshot directory or a vmcore")
    p.add_argument("--to", dest="replay_to", required=True, metavar="B",
                   help="the later dump of the same boot")
    p.add_argument("--events", dest="events_file", metavar="FILE",
                   help="trace text to replay instead of B's ring buffer: every event of "
                        "the file is applied, so give it the window only (the events after "
                        "A, up to B)")
    p.add_argument("--leaks", action="store_true",
                   help="instead of the agreement: what the window allocated and B still "
                        "holds, by call site, largest first (memscope.model.leaks)")
    p.add_argument("--all", dest="all_divergences", action="store_true",
                   help="list every divergence in the table (default: the first 20 of each "
                        "allocator, then how many more, by kind and cause)")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table",
                   help="output format (default: table)")


def _dump(path: str, vmlinux: str | None) -> tuple[str, str]:
    """(vmcore, vmlinux) of a lab snapshot directory or a vmcore file."""
    p = Path(path)
    if p.is_dir():
        core = p / "vmcore"
        if not core.is_file():
            raise CommandError(f"replay: {p} has no vmcore (not a lab snapshot directory)")
        if vmlinux is None:
            for meta in (p / "meta.json", p.parent / "meta.json"):
                if meta.is_file():
                    try:
                        vmlinux = json.loads(meta.read_text())["vmlinux"]
                    except (ValueError, KeyError, OSError):
                        raise CommandError(f"replay: {meta} is not a lab run's meta.json") \
                            from None
                    break
        p = core
    elif not p.exists():
        raise CommandError(f"replay: {path} does not exist")
    if vmlinux is None:
        raise CommandError(f"replay: {path}: give -s VMLINUX (not a lab snapshot directory)")
    return str(p), vmlinux


def _replay(args) -> Result:
    from ..mm.context import KernelContext
    from ..model.replay import replay
    from ..target import drgn as tdrgn

    vml = getattr(args, "symbols", None)
    ca, va = _dump(args.replay_from, vml)
    cb, vb = _dump(args.replay_to, vml)
    events, lost = None, 0
    if args.events_file:
        from ..events.text import parse_file

        try:
            tt = parse_file(args.events_file)
        except OSError as e:
            raise CommandError(f"replay: cannot read {args.events_file}: "
                               f"{e.strerror or e}") from None
        if not tt.events:
            raise CommandError(f"replay: {args.events_file}: no trace event in its "
                               f"{tt.lines} lines ({tt.garbled} garbled): not trace text?")
        events, lost = tt.events, sum(tt.lost.values())
    a = KernelContext(tdrgn.DrgnTarget(tdrgn.open_core(ca, va)))
    b = KernelContext(tdrgn.DrgnTarget(tdrgn.open_core(cb, vb)))
    from ..kernel.boot import not_one_boot

    why = not_one_boot(a.t, b.t)
    if why:  # a window between two boots means nothing (nor does one read backwards)
        raise CommandError(f"replay: {args.replay_from} and {args.replay_to} are not an "
                           f"earlier and a later dump of one boot: {why}")
    if getattr(args, "leaks", False):
        return _leaks(a, b, events, lost)
    r = replay(a, b, events, lost)
    data = r.to_json()

    def table() -> str:
        rows = [[g.allocator, g.matched, g.missing, g.extra,
                 ", ".join(f"{k} {n}" for k, n in
                           collections.Counter(d.kind for d in g.divergences).items())]
                for g in r.agreements]
        out = [f"{r.events} events in the window, {r.applied} applied, {r.lost} lost",
               tabulate(rows, headers=["allocator", "matched", "missing", "extra",
                                       "divergences"])]
        shown = None if getattr(args, "all_divergences", False) else 20
        for g in r.agreements:
            for d in g.divergences[:shown]:
                where = _where(g.allocator, d)
                out.append(f"{g.allocator}: {d.kind} {where}"
                           + (f" ({d.event})" if d.event else "") + f": {d.cause}")
            rest = g.divergences[shown:] if shown is not None else []
            if rest:  # what is not listed, by kind and cause, so no cause is hidden
                out.append(f"{g.allocator}: ... {len(rest)} more (--all, --format json):")
                for (kind, cause), n in collections.Counter(
                        (d.kind, d.cause) for d in rest).most_common():
                    out.append(f"{g.allocator}:     {n} {kind}: {cause}")
        return "\n".join(out) + "\n"

    agree = all(not g.missing and not g.extra and not g.divergences for g in r.agreements)
    return Result(data, table, exit_status=0 if agree else 1)


def _where(allocator: str, d) -> str:
    """A divergence's place in the table: an address (slab, vmalloc with the area's
    size), a run of pages (cma) or a block (buddy, pcp)."""
    if allocator == "slab":
        return f"{d.pfn:#x}"
    if allocator == "vmalloc":
        return f"{d.pfn:#x} ({getattr(d, 'size', 0)} bytes)"
    if allocator == "cma":
        return f"pfn {d.pfn:#x} ({getattr(d, 'count', 0)} pages)"
    return f"pfn {d.pfn:#x} order {d.order}"


def _leaks(a, b, events, lost: int) -> Result:
    """``replay --leaks``: :func:`memscope.model.leaks.leaks` of the window."""
    from ..model.leaks import leaks
    from ..model.replay import window_events

    if events is None:
        events, parts = window_events(a, b)
        lost = sum(p.lost for p in parts)
    lk = leaks(b, events)
    data = {"events": len(events), "lost": lost, **lk.to_json()}

    def table() -> str:
        out = [f"{len(events)} events in the window, {lost} lost; allocated in the window "
               "and still held by the later dump:"]
        rows = [[g.symbol, g.count, g.bytes, ", ".join(g.caches)] for g in lk.objects]
        out.append(tabulate(rows, headers=["call site", "objects", "bytes", "caches"])
                   if rows else "no slab object")
        rows = [[g.symbol, g.count, g.bytes] for g in lk.pages]
        out.append(tabulate(rows, headers=["pages (mm_page_alloc has no call site)",
                                           "blocks", "bytes"]) if rows else "no page")
        out.append(f"not checked against the later dump: {lk.large_kmallocs} large "
                   f"kmallocs, {lk.kfence} KFENCE objects; {lk.freed_untraced} objects "
                   "freed without a tracepoint (free in the later dump)")
        return "\n".join(out) + "\n"

    return Result(data, table)


def run(args) -> tuple[str, int]:
    """The CLI's ``memscope replay``: the rendered text in ``args.format`` and the exit
    status.  (Not a registered command: it reads two dumps, where every command of
    :data:`memscope.commands.COMMANDS` reads one target in every front end.)

    :raises MemscopeError: bad input (one line, exit status 2)."""
    from ..errors import MemscopeError
    from ..target.base import TargetError

    try:
        r = _replay(args)
        return r.render(args.format), r.exit_status
    except CommandError as e:
        raise MemscopeError(str(e)) from None
    except TargetError as e:
        raise MemscopeError(f"replay: {e}") from None
