"""Trace text as the kernel and trace-cmd print it: the ``trace`` and ``trace_pipe`` files
of tracefs (kernel/trace/trace_output.c, ``trace_print_context()`` then the event's
``TP_printk``) and ``trace-cmd report``.

An event line is::

    TASK-PID [(TGID)] [CPU] [FLAGS] SECONDS.MICROS: EVENT: FIELDS

where TASK may contain spaces and dashes (the last ``-digits`` before the CPU is the
pid), ``(TGID)`` is printed with the ``record-tgid`` option, FLAGS is the latency field
(``d..3.``: 4 characters in 5.10, 5 since 5.14's migrate-disable column) and
``trace-cmd report`` prints the same without FLAGS unless ``-l``.  FIELDS is
``key=value`` pairs for the memory events (kmem, cma, vmalloc; the formats of each lab
kernel are in ``../shared/notes/kernel-differences.md``; vmalloc's ``va_start: %lu``
uses a colon); a value is

- an int when it is decimal (``order=3``, 5.10's ``pfn=1234``) or ``0x`` hex (6.1+'s
  ``pfn=0x4d2``);
- an int when the key is a ``%p`` pointer (``ptr``, ``page``: hex without ``0x``).  With
  the ``hash-ptr`` option on (the default since v5.11), these are hashed and mean nothing
  outside the trace: :attr:`TextTrace.hashed_pointers` says so;
- ``True``/``False`` for ``true``/``false`` (``accounted``);
- otherwise the text (``call_site=do_sys_openat2+0x9c/0xe0``, ``gfp_flags=GFP_KERNEL``,
  ``name=names_cache``).

Nothing is fatal: a line that is not a header, an event or a lost-events marker is
counted as ``garbled`` (its number kept, up to :data:`MAX_KEPT`); an event whose name is
not a memory event this module knows is kept and counted as ``unknown``; an event whose
time is earlier than the one before it on the same CPU is kept and counted as
``out_of_order``.  ``CPU:N [LOST M EVENTS]`` (trace_pipe and trace-cmd) adds M to the
CPU's lost events; the ``trace`` file's header line ``entries-in-buffer/entries-written:
X/Y`` is kept (Y - X were overwritten).
"""

from __future__ import annotations

import dataclasses
import gc
import re
from collections import Counter
from collections.abc import Sequence
from itertools import compress
from operator import itemgetter
from pathlib import Path

import numpy as np

from ..kernel.ftrace import ColumnSequence
from . import Event

__all__ = ("KNOWN_EVENTS", "MAX_KEPT", "TextEvents", "TextTrace", "parse_lines", "parse_file")

#: The events of the tracepoint groups the lab enables (kmem's page and slab events, cma,
#: vmalloc) on the lab kernels 5.10-7.2.
KNOWN_EVENTS = frozenset({
    "mm_page_alloc", "mm_page_free", "mm_page_free_batched", "mm_page_alloc_zone_locked",
    "mm_page_pcpu_drain", "mm_page_alloc_extfrag", "kmalloc", "kfree", "kmem_cache_alloc",
    "kmem_cache_free", "kmalloc_node", "kmem_cache_alloc_node", "rss_stat",
    "mm_alloc_contig_migrate_range_info",
    "cma_alloc", "cma_release", "cma_alloc_start", "cma_alloc_finish", "cma_alloc_busy_retry",
    "alloc_vmap_area", "purge_vmap_area_lazy", "free_vmap_area_noflush"})

#: Keys printed with ``%p`` by the memory events: hex without ``0x``.
POINTER_KEYS = frozenset({"ptr", "page"})

#: How many garbled lines' numbers are kept (all are counted).
MAX_KEPT = 20

_EVENT = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[A-Za-z.0-9]{4,5})\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>[A-Za-z0-9_:]+):"
    r"(?P<rest>.*)$")
_LOST = re.compile(r"^\s*CPU:\s*(\d+)\s+\[LOST\s+(\d+)\s+EVENTS\]\s*$")
_ENTRIES = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
_HEX = re.compile(r"0x[0-9a-fA-F]+$")
# trace-cmd report's own lines: "version = 6", "cpus=2", "CPU 0 is empty", "CPU0 data
# recorded at offset=...", "    1234 bytes in size"
_TRACE_CMD = re.compile(r"^\s*(version\s*=|cpus=|CPU\s*\d+\s+(is empty|data recorded)|"
                        r"\d+ bytes in size|##### CPU \d+ buffer started)")


@dataclasses.dataclass
class TextTrace:
    """What a trace text holds.

    :param events: the events, in the text's order (a :class:`TextEvents` from
        :func:`parse_lines`).
    :param lines: lines read.
    :param garbled: lines that are neither header, event nor marker (count).
    :param garbled_lines: the first :data:`MAX_KEPT` of them: (line number from 1, text
        cut at 80 characters).
    :param unknown: events whose name is not in :data:`KNOWN_EVENTS` (count; kept).
    :param unknown_names: their names, with counts.
    :param out_of_order: events earlier than the event before them on the same CPU.
    :param lost: events the text says were lost, per CPU (``[LOST N EVENTS]``).
    :param entries: the ``trace`` header's (in buffer, written), or None.
    :param hashed_pointers: ``%p`` values are hashed (no ``hash-ptr`` off): their values
        cannot be compared with memory.
    """

    events: Sequence[Event]
    lines: int = 0
    garbled: int = 0
    garbled_lines: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    unknown: int = 0
    unknown_names: dict[str, int] = dataclasses.field(default_factory=dict)
    out_of_order: int = 0
    lost: dict[int, int] = dataclasses.field(default_factory=dict)
    entries: tuple[int, int] | None = None
    hashed_pointers: bool = False

    def summary(self) -> dict:
        """The counts as JSON data (no events)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "events"}
        d["garbled_lines"] = list(self.garbled_lines)
        d["unknown_names"] = dict(self.unknown_names)
        d["events"] = len(self.events)
        d["lost"] = {str(k): v for k, v in self.lost.items()}
        return d


def _value(key: str, v: str):
    if key in POINTER_KEYS:
        try:
            return int(v, 16)
        except ValueError:
            return v
    if v and (v[0].isdigit() or v[0] == "-") and "_" not in v:
        try:
            return int(v)  # decimal
        except ValueError:
            pass
    if v[:2] == "0x" and _HEX.match(v):
        return int(v, 16)
    if v == "true":
        return True
    if v == "false":
        return False
    return v


#: Tokens seen (``key=value`` -> (key, typed value), or None for a token left out); a
#: trace repeats most of its tokens (orders, migratetypes, GFP flags, call sites).
_TOKENS: dict[str, tuple | None] = {}
_MAX_TOKENS = 1 << 18
_COLON = object()


def _token(tok: str):
    """What one whitespace-separated token of an event's text is: (key, typed value)
    for ``key=value`` with an identifier key, (_COLON, key, None) for a word ending in
    ``:`` without ``=`` (vmalloc's ``key: value``), None for anything else."""
    key, eq, v = tok.partition("=")
    if not eq:
        return (_COLON, key[:-1], None) if key.endswith(":") else None
    return (key, _value(key, v)) if key.isidentifier() else None


def parse_fields(rest: str) -> dict:
    """The ``key=value`` (and vmalloc's ``key: value``) pairs of an event's text, typed as
    the module says; words that are neither are left out."""
    toks = rest.split()
    cache = _TOKENS
    try:
        # every token seen before and a key=value pair: the pairs in C
        return dict(map(cache.__getitem__, toks))
    except (KeyError, TypeError, ValueError):
        pass
    out = {}
    i, n = 0, len(toks)
    while i < n:
        tok = toks[i]
        i += 1
        kv = cache.get(tok, _COLON)
        if kv is _COLON:
            kv = _token(tok)
            if len(cache) >= _MAX_TOKENS:
                cache.clear()
            cache[tok] = kv
        if kv is None:
            continue
        if kv[0] is _COLON:
            key = kv[1]
            if i < n and "=" not in toks[i]:
                v = toks[i]
                i += 1
                if key.isidentifier():
                    out[key] = _value(key, v)
            continue
        out[kv[0]] = kv[1]
    return out


class TextEvents(ColumnSequence):
    """The events of a trace text, in the text's order: a sequence of :class:`Event`
    over columns (name, system, CPU, time in ns, pid, and each event's text after its
    name), each Event built, and its text split into fields (:func:`parse_fields`), when
    first asked for.  Equal to a list of the same Events."""

    __slots__ = ("names", "systems", "cpus", "ts", "pids", "rests", "_list")

    def __init__(self, names, systems, cpus, ts, pids, rests):
        self.names, self.systems, self.cpus = names, systems, cpus
        self.ts, self.pids, self.rests = ts, pids, rests
        self._list: list[Event] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _all(self) -> list[Event]:
        if self._list is None:
            enabled = gc.isenabled()
            gc.disable()  # a million Events and dicts, no cycles: no collector passes
            try:
                self._list = list(map(Event, self.names, self.cpus, self.ts, self.pids,
                                      map(parse_fields, self.rests), self.systems))
            finally:
                if enabled:
                    gc.enable()
        return self._list

    def __getitem__(self, i):
        if self._list is not None:
            return self._list[i]
        if isinstance(i, slice):
            r = range(len(self))[i]
            return [self[k] for k in r]
        i = range(len(self))[i]  # an IndexError as a list's
        return Event(self.names[i], self.cpus[i], self.ts[i], self.pids[i],
                     parse_fields(self.rests[i]), self.systems[i])

    def __iter__(self):
        return iter(self._all())



# _EVENT for many lines at once (re.M over the lines joined by "\n"): whitespace never
# crosses a line, and a line that is not an event matches the second branch whole, so
# there is one match per line, in order (the groups empty for the others).
_EVENT_M = re.compile(
    r"^(?:[^\S\n]*.*?-(\d+)[^\S\n]+(?:\([^\S\n]*[\d-]+\)[^\S\n]+)?\[(\d+)\][^\S\n]+"
    r"(?:[A-Za-z.0-9]{4,5}[^\S\n]+)?(\d+)\.(\d+):[^\S\n]+([A-Za-z0-9_:]+):"
    r"(.*)|.*)$", re.M)


def _other_line(out: TextTrace, n: int, line: str) -> None:
    """Count line N (from 1), which is not an event: blank, header, lost-events marker,
    trace-cmd's own, or garbled."""
    s = line.strip()
    if not s:
        return
    if s.startswith("#"):
        e = _ENTRIES.search(s)
        if e:
            out.entries = (int(e.group(1)), int(e.group(2)))
        return
    lost = _LOST.match(s)
    if lost:
        cpu = int(lost.group(1))
        out.lost[cpu] = out.lost.get(cpu, 0) + int(lost.group(2))
        return
    if _TRACE_CMD.match(s):
        return
    out.garbled += 1
    if len(out.garbled_lines) < MAX_KEPT:
        out.garbled_lines.append((n, s[:80]))


def _hashed(events) -> bool:
    # A hashed %p value (the hash-ptr option, on by default) is 32 bits of siphash on
    # 64-bit kernels (lib/vsprintf.c ptr_to_hashval()), a kernel address has its top bit
    # set.
    ptrs = [e.fields["ptr"] for e in events[:1000]
            if isinstance(e.fields.get("ptr"), int) and e.fields["ptr"]]
    return bool(ptrs) and all(p < 1 << 32 for p in ptrs)


def _parse_slow(lines: list[str]) -> TextTrace:
    """Line by line (lines that hold a newline of their own)."""
    out = TextTrace([])
    last_ts: dict[int, int] = {}
    match_event = _EVENT.match
    events = out.events
    append = events.append
    names: dict[str, tuple[str, str, bool]] = {}  # "system:name" -> (system, name, known)
    n = 0
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        m = match_event(line)
        if m is None:
            _other_line(out, n, line)
            continue
        pid, cpu, tstext, event, rest = m.group("pid", "cpu", "ts", "event", "rest")
        got = names.get(event)
        if got is None:
            system, _, name = event.rpartition(":")
            got = names[event] = (system, name, name in KNOWN_EVENTS)
        system, name, known = got
        cpu = int(cpu)
        sec, _, usec = tstext.partition(".")
        ts = (int(sec) * 1_000_000 + int(usec.ljust(6, "0")[:6])) * 1000
        if ts < last_ts.get(cpu, -1):
            out.out_of_order += 1
        last_ts[cpu] = ts
        if not known:
            out.unknown += 1
            out.unknown_names[name] = out.unknown_names.get(name, 0) + 1
        append(Event(name, cpu, ts, int(pid), parse_fields(rest), system))
    out.lines = n
    out.hashed_pointers = _hashed(events)
    return out


def parse_lines(lines) -> TextTrace:
    """Parse trace text given as an iterable of lines (str, newlines optional).

    The lines are matched all at once (one regular expression over the text, into
    columns); the events are a :class:`TextEvents`, their fields split when first used."""
    enabled = gc.isenabled()
    gc.disable()  # millions of new tuples, none of them in a cycle: no collector passes
    try:
        return _parse_columns(lines)
    finally:
        if enabled:
            gc.enable()


def _parse_columns(lines) -> TextTrace:
    lines = lines if isinstance(lines, list) else list(lines)
    if not lines:
        return TextTrace([])
    text = "\n".join([ln.rstrip("\r\n") for ln in lines])
    if text.count("\n") != len(lines) - 1:
        return _parse_slow(lines)  # a line with a line break of its own
    out = TextTrace([])
    out.lines = len(lines)
    rows = _EVENT_M.findall(text)
    if len(rows) != len(lines):  # cannot happen: one match per line
        return _parse_slow(lines)
    pid, cpu, sec, usec, event, rest = [list(map(itemgetter(k), rows)) for k in range(6)]
    del rows
    if "" in pid:  # lines that are not events, in order: counted as the slow path does
        for i in [i for i, p in enumerate(pid) if not p]:
            _other_line(out, i + 1, lines[i].rstrip("\r\n"))
        pid, cpu, sec, usec, event, rest = [list(compress(c, pid))
                                            for c in (pid, cpu, sec, usec, event, rest)]
        if not pid:
            out.events = TextEvents((), (), (), (), (), ())
            return out
    pids = list(map(int, pid))
    cpus = list(map(int, cpu))
    if set(map(len, usec)) == {6}:  # microseconds, as the trace clock prints them
        ts = [int(a + b) * 1000 for a, b in zip(sec, usec)]
    else:
        ts = [(int(a) * 1_000_000 + int(b.ljust(6, "0")[:6])) * 1000
              for a, b in zip(sec, usec)]
    # names: "system:name" -> (system, name, known), once per distinct text
    kinds = {}
    for ev, count in Counter(event).items():
        system, _, name = ev.rpartition(":")
        kinds[ev] = (system, name)
        if name not in KNOWN_EVENTS:
            out.unknown += count
            out.unknown_names[name] = out.unknown_names.get(name, 0) + count
    if len(kinds) == 1:
        (system, name), = kinds.values()
        names, systems = [name] * len(pids), [system] * len(pids)
    else:
        split = list(map(kinds.__getitem__, event))
        systems = [s for s, _ in split]
        names = [n for _, n in split]
    # an event earlier than the one before it on its CPU
    if max(ts) < 1 << 63 and max(cpus) < 1 << 63:
        c, t = np.array(cpus, np.int64), np.array(ts, np.int64)
        order = np.argsort(c, kind="stable")
        cs, tsorted = c[order], t[order]
        out.out_of_order = int(np.count_nonzero((cs[1:] == cs[:-1])
                                                & (tsorted[1:] < tsorted[:-1])))
    else:  # beyond 64 bits: one by one
        last: dict[int, int] = {}
        for cp, tv in zip(cpus, ts):
            if tv < last.get(cp, -1):
                out.out_of_order += 1
            last[cp] = tv
    out.events = TextEvents(names, systems, cpus, ts, pids, rest)
    out.hashed_pointers = _hashed(out.events)
    return out


def parse_file(path: str | Path) -> TextTrace:
    """Parse the trace text in the file PATH (any of the module's formats; bytes that
    are not UTF-8 are replaced and their lines count as garbled if they no longer parse).

    :raises OSError: the file cannot be read."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return parse_lines(f)
