"""``events [--since VMCORE_A]`` and ``events parse FILE``: trace events straight from a
dump's ftrace ring buffer (:mod:`memscope.kernel.ftrace`), or from trace text
(:mod:`memscope.events.text`).

JSON output of ``events``::

    {"cpus": [{"cpu": int, "nr_pages": int, "page_size": int, "entries": int,
               "overrun": int, "commit_overrun": int, "dropped_events": int, "read": int,
               "lost_events": int, "expected": int, "found": int, "skipped": int,
               "pages": int, ...}],
     "window": [{"cpu": int, "written": int, "found": int, "lost": int}] | null,
     "lost": int,          # overwritten + dropped (+ lost in the window with --since)
     "events": [{"cpu": int, "ts": int (ns), "seq": int, "pid": int, "system": str,
                 "event": str, "fields": {name: int | str}}],
     "problems": [Problem.to_json()]}

Without ``--since`` the events are everything the buffer holds, and ``lost`` counts
what the kernel overwrote (``overrun``) or dropped (``dropped_events``) since the buffer
was reset.  With ``--since VMCORE_A`` (an earlier dump of the same boot, read with the
same ``-s``) the events are those written after A's last one and ``lost`` counts those
written in between but no longer in the buffer.  The table prints ``call_site`` as
``%pS`` does; JSON keeps addresses as ints.

JSON output of ``events parse FILE``: ``{"summary": TextTrace.summary(), "events":
[{"cpu", "ts", "pid", "system", "event", "fields"}]}`` (``ts`` in ns, from the text's
microseconds).  Exit status 2 for a file that cannot be read; garbled lines are counted,
never fatal.
"""

from __future__ import annotations

from tabulate import tabulate

from ..events import Event, RingEvents
from ..events.text import parse_file
from ..kernel import ftrace
from ..kernel.kallsyms import format_symbol
from . import CommandError, Result, command


def _args(p) -> None:
    p.add_argument("parse", nargs="*", metavar="parse FILE",
                   help="read trace text (the trace or trace_pipe file, or trace-cmd "
                   "report) instead of a dump")
    p.add_argument("--since", metavar="VMCORE_A",
                   help="only the events written after this earlier dump of the same boot "
                   "(read with the same -s VMLINUX)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="print at most N events (the counts cover all)")


def parse_request(args) -> str | None:
    """The FILE of ``events parse FILE``, or None for the dump form.

    :raises CommandError: other positional words."""
    words = getattr(args, "parse", None) or []
    if not words:
        return None
    if len(words) != 2 or words[0] != "parse":
        raise CommandError("events: expected 'events parse FILE' or 'events' with a dump "
                           f"(got {' '.join(words)!r})")
    return words[1]


def _event_json(e: Event, seq: int | None = None) -> dict:
    d = {"cpu": e.cpu, "ts": e.ts}
    if seq is not None:
        d["seq"] = seq
    d.update({"pid": e.pid, "system": e.system, "event": e.name, "fields": e.fields})
    return d


def _fmt_time(ts: int) -> str:
    """``trace``'s time column: seconds and microseconds (ns2usecs rounds)."""
    us = (ts + 500) // 1000
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _fields_text(fields: dict, sym=None) -> str:
    parts = []
    for k, v in fields.items():
        if k == "call_site" and isinstance(v, int) and sym is not None:
            v = sym(v)
        elif isinstance(v, int) and not isinstance(v, bool) and k in ("ptr", "page", "addr"):
            v = f"{v:#x}"
        parts.append(f"{k}={v}")
    return " ".join(parts)


def _limit(args) -> int | None:
    n = getattr(args, "limit", None)
    if n is not None and n < 0:
        raise CommandError("events: --limit must be at least 0")
    return n


def run_parse(args) -> Result:
    """``events parse FILE`` (no target needed)."""
    path = parse_request(args)
    limit = _limit(args)
    try:
        tt = parse_file(path)
    except OSError as e:
        raise CommandError(f"events: cannot read {path}: {e.strerror or e}") from None
    if not tt.events and tt.garbled:  # a trace.dat, a dump, random bytes: not trace text
        raise CommandError(f"events: {path}: no trace event in its {tt.lines} lines "
                           f"({tt.garbled} garbled): not trace text?")
    shown = tt.events if limit is None else tt.events[:limit]
    data = {"summary": tt.summary(), "events": [_event_json(e) for e in shown]}

    def table() -> str:
        s = tt.summary()
        head = (f"{s['events']} events in {s['lines']} lines; garbled {s['garbled']}, "
                f"unknown events {s['unknown']}, out of order {s['out_of_order']}, "
                f"lost {sum(tt.lost.values())}")
        if tt.hashed_pointers:
            head += "; pointers are hashed (hash-ptr)"
        rows = [[e.cpu, _fmt_time(e.ts), e.pid, e.name, _fields_text(e.fields)]
                for e in shown]
        lines = [head]
        for n, text in tt.garbled_lines:
            lines.append(f"garbled line {n}: {text}")
        lines.append(tabulate(rows, headers=["cpu", "time", "pid", "event", "fields"], disable_numparse=True))
        return "\n".join(lines) + "\n"

    return Result(data, table)


def _open_other(path: str, args):
    """A target for the earlier dump PATH, read with the same ``-s VMLINUX``."""
    from ..target import drgn as tdrgn

    if not getattr(args, "core", None):
        raise CommandError("events: --since compares two dumps: give the later one with "
                           "-c VMCORE")
    return tdrgn.DrgnTarget(tdrgn.open_core(path, getattr(args, "symbols", None)))


def _offline(args) -> Result | None:
    return run_parse(args) if parse_request(args) is not None else None


@command("events", "trace events from the dump's ftrace ring buffer (or 'events parse "
         "FILE': from trace text)", arguments=_args, offline=_offline)
def events(ctx, args) -> Result:
    if parse_request(args) is not None:
        return run_parse(args)
    limit = _limit(args)
    t = ctx.t
    tb = ftrace.read_trace(t)
    parts = None
    if getattr(args, "since", None):
        from ..kernel.boot import not_one_boot

        other = _open_other(args.since, args)
        why = not_one_boot(other, t)
        if why:
            raise CommandError(f"events: --since {args.since}: not an earlier dump of this "
                               f"boot: {why}")
        earlier = ftrace.read_trace(other)
        raw, parts = ftrace.window(earlier, tb)
        kept = ftrace.TraceBuffer(tb.cpus, raw, tb.formats, tb.problems)
        lost = sum(p.lost for p in parts)
    else:
        kept = tb
        lost = sum(c.overrun + c.dropped_events for c in tb.cpus)
    merged = kept.merged()
    shown = merged if limit is None else merged[:limit]
    evs = list(zip(shown, RingEvents(shown, kept.formats)))  # decoded in bulk
    data = {"cpus": [c.to_json() for c in tb.cpus],
            "window": [p.to_json() for p in parts] if parts is not None else None,
            "lost": lost, "events": [_event_json(ev, raw.seq) for raw, ev in evs],
            "problems": [p.to_json() for p in tb.problems]}

    def table() -> str:
        names: dict[int, str] = {}

        def sym(addr: int) -> str:
            if addr not in names:
                names[addr] = format_symbol(ctx, addr)
            return names[addr]

        rows = [[c.cpu, c.nr_pages, c.entries, c.overrun, c.dropped_events, c.read,
                 c.found, c.skipped] for c in tb.cpus]
        out = [tabulate(rows, headers=["cpu", "pages", "entries", "overrun", "dropped",
                                       "read", "in buffer", "skipped"])]
        if parts is not None:
            out.append(tabulate([[p.cpu, p.written, p.found, p.lost] for p in parts],
                                headers=["cpu", "written since A", "in window", "lost"]))
        out.append(f"{len(merged)} events, {lost} lost"
                   + (f" (showing {len(shown)})" if len(shown) < len(merged) else ""))
        for p in tb.problems:
            out.append(f"problem: {p}")
        out.append(tabulate([[ev.cpu, _fmt_time(ev.ts), ev.pid, ev.name,
                              _fields_text(ev.fields, sym)] for _, ev in evs],
                            headers=["cpu", "time", "pid", "event", "fields"], disable_numparse=True))
        return "\n\n".join(out) + "\n"

    return Result(data, table, exit_status=1 if tb.problems else 0)
