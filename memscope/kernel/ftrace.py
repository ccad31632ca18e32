"""The ftrace ring buffer read out of kernel memory (kernel/trace/ring_buffer.c), and its
events decoded with the kernel's own event descriptions (kernel/trace/trace_events.c).

A dump holds every traced event up to the freeze.  :func:`read_trace` reads the global
trace instance (``global_trace.array_buffer.buffer``, kernel/trace/trace.c) through the
Target, CPU by CPU, as the kernel's non-consuming iterator (``rb_iter_reset()``,
``rb_iter_peek()``) does:

- the reader page first (``cpu_buffer->reader_page``, from its ``read`` index), unless the
  commit page is the reader page itself;
- then the ring from the head page (the page that the previous page's ``list.next``
  points to with the ``RB_PAGE_HEAD`` flag in its low bits, as ``rb_set_head_page()``
  finds it) to the commit page (``cpu_buffer->commit_page``, up to its ``commit`` index);
- each page's data (``struct buffer_data_page``: ``time_stamp``, ``commit``, ``data[]``)
  is read in one read of ``PAGE_SIZE << order`` bytes and walked event by event
  (``struct ring_buffer_event``: ``type_len:5, time_delta:27``, ``array[]``): padding
  (a null one ends the page's data, another is a discarded event), time extends
  (``array[0] << 27 | time_delta`` added), absolute time stamps (``rb_fix_abs_ts()``),
  and data events (``type_len * 4`` bytes at ``array[0]``, or ``array[0] - 4`` bytes at
  ``array[1]`` when ``type_len`` is 0).  A data event's time is the page's
  ``time_stamp`` plus the deltas before it, in the trace clock's unit (``local``, the
  default: nanoseconds of ``sched_clock()``).

Walks are bounded: the ring by ``cpu_buffer->nr_pages`` (a cycle, an unreadable page, a
page list that does not come back, or no head page is a :class:`Problem`), a page by its
capacity (a ``commit`` past it, or an event running past it, makes the page ``corrupt``:
its remaining events are skipped and counted, the walk goes on with the next page).

Each CPU's counters come with it (:class:`CpuTrace`): ``entries`` (events committed since
the buffer was last reset), ``overrun`` (overwritten when the writer wrapped),
``commit_overrun``, ``dropped_events`` (not written: buffer full in no-overwrite mode),
``read`` (consumed by readers of ``trace_pipe``), ``lost_events``.  The kernel's count of
what is in the buffer is ``rb_num_of_entries()`` = ``entries - (overrun + read)``;
:attr:`CpuTrace.expected` is that and a walk that finds another number says so.

Events are decoded by :class:`EventFormat` s read from the kernel's list ``ftrace_events``
(``struct trace_event_call``: ``event.type`` is the id in each entry's ``common_type``;
the name is ``tp->name`` when ``flags`` has ``TRACE_EVENT_FL_TRACEPOINT``, else
``name``; the system is ``class->system``; the fields are ``class->fields``, a list of
``struct ftrace_event_field`` {name, type, offset, size, is_signed}, after the common
fields of ``ftrace_common_fields``).  Only the formats of ids present in the buffer are
read.

Layouts that changed and are detected from the debug info:

- ``struct trace_buffer`` was ``struct ring_buffer`` and ``global_trace.array_buffer``
  was ``.trace_buffer`` before v5.6 (commits 13292494379f "tracing: Make struct
  ring_buffer less ambiguous" and 1c5eb4481e01 "tracing: Rename trace_buffer to
  array_buffer"): both spellings are probed;
- ``struct buffer_page.order`` (sub-buffers of ``PAGE_SIZE << order`` bytes, v6.8's
  "ring-buffer: Set new size of the ring buffer sub page"; absent in 6.1.192, present in
  6.12.117 and 7.2.13): without it a sub-buffer is one page;
- ``ftrace_event_field.is_signed`` is an ``int`` in 5.10 and 6.1 and a one-bit bit field
  in 6.12 and 7.2: read through the Member (offset, bit offset, bit size) either way;
- ``rb_fix_abs_ts()`` (absent in 5.10.223, present in 6.1.192): an absolute time stamp
  event keeps 59 bits and takes the upper bits from the running time stamp; the same
  rule is a no-op on 5.10's values, so it is applied on every kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from typing import Iterable

from ..target.base import FaultError, Target, TargetError
from .addr import is_kernel_address
from .cpumask import nr_cpu_ids
from .fields import member, read_member
from .list import list_for_each
from .problem import Problem, ProblemSink

__all__ = ("CpuTrace", "EventField", "EventFormat", "TraceBuffer", "TraceEvent",
           "event_formats", "read_trace")

# include/linux/ring_buffer.h: enum ring_buffer_type
RINGBUF_TYPE_DATA_TYPE_LEN_MAX = 28
RINGBUF_TYPE_PADDING = 29
RINGBUF_TYPE_TIME_EXTEND = 30
RINGBUF_TYPE_TIME_STAMP = 31
TS_SHIFT = 27  # kernel/trace/ring_buffer.c
TS_MSB = 0xF8 << 56
RB_MISSED_MASK = 3 << 30  # RB_MISSED_EVENTS | RB_MISSED_STORED, in buffer_data_page.commit
RB_FLAG_MASK = 3  # RB_PAGE_HEAD | RB_PAGE_UPDATE, in the low bits of buffer_page.list.next
RB_PAGE_HEAD = 1

#: Events of more ids than this in one buffer cannot be a kernel's (ids are 16 bits).
MAX_EVENT_IDS = 1 << 16


@dataclasses.dataclass(frozen=True)
class EventField:
    """One field of an event's entry (``struct ftrace_event_field``).

    :param name: the field's name (``pfn``, ``common_pid``...).
    :param type: its C type as the kernel prints it in ``format`` (``unsigned long``,
        ``__data_loc char[]``, ``char[16]``).
    :param offset: bytes from the start of the entry (``struct trace_entry`` included).
    :param size: bytes.
    :param signed: ``is_signed``.
    """

    name: str
    type: str
    offset: int
    size: int
    signed: bool

    @property
    def kind(self) -> str:
        """How the value is decoded: ``int`` (1, 2, 4 or 8 bytes), ``data_loc`` (a u32
        of offset | length << 16 from the entry's start: ``__data_loc``), ``rel_loc``
        (the same from the field's end: ``__rel_loc``), ``chars`` (a fixed char
        array, NUL-terminated), else ``bytes``."""
        if self.type.startswith("__data_loc"):
            return "data_loc"
        if self.type.startswith("__rel_loc"):
            return "rel_loc"
        if "char[" in self.type.replace(" ", "") and "*" not in self.type:
            return "chars"
        if self.size in (1, 2, 4, 8) and "[" not in self.type:
            return "int"
        return "bytes"


@dataclasses.dataclass(frozen=True)
class EventFormat:
    """An event type as the kernel describes it (``struct trace_event_call``): what
    ``events/SYSTEM/NAME/format`` prints.

    :param id: ``event.type``, the ``common_type`` of its entries.
    :param system: ``class->system`` (``kmem``).
    :param name: the event's name (``mm_page_alloc``).
    :param fields: the common fields then the event's own, by offset.
    """

    id: int
    system: str
    name: str
    fields: tuple[EventField, ...]

    def decode(self, entry: bytes) -> dict:
        """The values of this event's own fields (common fields left out) in ENTRY, the
        entry's bytes: ints as ints (signed as ``is_signed`` says), strings as str,
        other arrays as hex; a field outside ENTRY is None."""
        ints, names, others, end = self._decoder
        if len(entry) >= end:
            out = dict(zip(names, ints.unpack_from(entry, 0)))
        else:
            out = {}
            for f in self.fields:
                if f.kind == "int" and not f.name.startswith("common_"):
                    out[f.name] = _field_value(f, entry)
        for f in others:
            out[f.name] = _field_value(f, entry)
        return out

    @functools.cached_property
    def _decoder(self) -> tuple[struct.Struct, tuple[str, ...], tuple[EventField, ...], int]:
        """One struct for every int field (at their offsets, gaps as pad bytes), their
        names, the other fields, and the bytes the struct needs."""
        fmt, names, others, pos = "<", [], [], 0
        for f in self.fields:
            if f.name.startswith("common_"):
                continue
            if f.kind != "int" or f.offset < pos:
                others.append(f)
                continue
            fmt += f"{f.offset - pos}x" if f.offset > pos else ""
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[f.size]
            fmt += code if f.signed else code.upper()
            names.append(f.name)
            pos = f.offset + f.size
        return struct.Struct(fmt), tuple(names), tuple(others), pos


def _field_value(f: EventField, entry: bytes):
    """Field F of ENTRY (see :meth:`EventFormat.decode`)."""
    n = len(entry)
    end = f.offset + f.size
    if end > n:
        return None
    kind = f.kind
    if kind == "int":
        return int.from_bytes(entry[f.offset:end], "little", signed=f.signed)
    if kind in ("data_loc", "rel_loc"):
        v = int.from_bytes(entry[f.offset:f.offset + 4], "little")
        start = (v & 0xFFFF) + (end if kind == "rel_loc" else 0)
        length = v >> 16
        if start + length > n:
            return None
        return entry[start:start + length].split(b"\0", 1)[0].decode(errors="replace")
    if kind == "chars":
        return entry[f.offset:end].split(b"\0", 1)[0].decode(errors="replace")
    return entry[f.offset:end].hex()


@dataclasses.dataclass(frozen=True, slots=True)
class TraceEvent:
    """One event of the ring buffer.

    :param cpu: the CPU whose buffer holds it.
    :param ts: its time stamp in the trace clock's unit (nanoseconds for ``local``).
    :param seq: its number among the CPU's events since the buffer's last reset, from 1
        (``entries`` counts them; see :func:`read_trace`).
    :param id: ``common_type``.
    :param pid: ``common_pid``.
    :param entry: the entry's bytes (``struct trace_entry`` and the fields; padded to 4).
    """

    cpu: int
    ts: int
    seq: int
    id: int
    pid: int
    entry: bytes


@dataclasses.dataclass
class CpuTrace:
    """One CPU's ring buffer (``struct ring_buffer_per_cpu``): its counters and what the
    walk found.

    :param cpu: the CPU.
    :param address: the ``ring_buffer_per_cpu``.
    :param nr_pages: pages in the ring (the reader page apart).
    :param page_size: bytes of each sub-buffer (``PAGE_SIZE << order``).
    :param entries: events committed since the last reset.
    :param overrun: events overwritten.
    :param commit_overrun: events lost because the commit could not keep up.
    :param dropped_events: events not written (no-overwrite mode, buffer full).
    :param read: events consumed by ``trace_pipe`` readers.
    :param lost_events: events a consuming reader was told it missed.
    :param expected: ``rb_num_of_entries()``: events the kernel says are in the buffer.
    :param found: data events the walk decoded.
    :param skipped: events skipped in corrupt pages (counted when the page's walk could
        tell, else the page's ``entries``).
    :param pages: pages walked (the reader page included).
    """

    cpu: int
    address: int
    nr_pages: int
    page_size: int
    entries: int
    overrun: int
    commit_overrun: int
    dropped_events: int
    read: int
    lost_events: int
    expected: int
    found: int = 0
    skipped: int = 0
    pages: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TraceBuffer:
    """The global trace instance's ring buffer: every CPU's counters and events.

    :param cpus: one :class:`CpuTrace` per CPU that has a buffer.
    :param events: every data event, CPU by CPU, oldest first within each CPU.
    :param formats: the :class:`EventFormat` of each id in ``events`` (an id the kernel
        does not describe is absent: its events are still listed).
    :param problems: what the walks found wrong.
    """

    cpus: list[CpuTrace]
    events: list[TraceEvent]
    formats: dict[int, EventFormat]
    problems: list[Problem]

    def merged(self) -> list[TraceEvent]:
        """The events of every CPU in time order (stable: equal times keep CPU order),
        as the ``trace`` file merges them."""
        return sorted(self.events, key=lambda e: (e.ts, e.cpu))


# --- layouts -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Layouts:
    rb_type: str  # "struct trace_buffer" or, before v5.6, "struct ring_buffer"
    buffers: int  # offsetof(rb_type, buffers)
    cpu: dict[str, object]  # ring_buffer_per_cpu members
    cpu_size: int
    bpage: dict[str, object]  # buffer_page members
    bpage_size: int
    data_off: int  # offsetof(struct buffer_data_page, data)
    commit_off: int


def _layouts(t: Target) -> _Layouts:
    rb_type = "struct trace_buffer"
    lay = t.layout(rb_type)
    if not lay.has("buffers"):  # before v5.6 (13292494379f) the ring buffer's name
        rb_type = "struct ring_buffer"
        lay = t.layout(rb_type)
    cpu = t.layout("struct ring_buffer_per_cpu")
    bp = t.layout("struct buffer_page")
    dp = t.layout("struct buffer_data_page")
    cpu_members = {n: cpu[n] for n in (
        "cpu", "nr_pages", "head_page", "tail_page", "commit_page", "reader_page",
        "entries", "overrun", "commit_overrun", "dropped_events", "read", "lost_events",
        "read_stamp")}
    bp_members = {n: bp[n] for n in ("list", "write", "read", "entries", "page")}
    if bp.has("order"):  # v6.8, f9b94daa542a: sub-buffers of PAGE_SIZE << order
        bp_members["order"] = bp["order"]
    return _Layouts(rb_type, lay.offset("buffers"), cpu_members, cpu.size, bp_members,
                    bp.size, dp.offset("data"), dp.offset("commit"))


def global_trace_buffer(t: Target) -> int:
    """The address of the global instance's ring buffer,
    ``global_trace.array_buffer.buffer`` (``.trace_buffer.buffer`` before v5.6,
    1c5eb4481e01); 0 when tracing never allocated it.

    :raises TargetError: no ``global_trace`` (a kernel without CONFIG_TRACING)."""
    if not t.has_symbol("global_trace"):
        raise TargetError("this kernel has no global_trace (built without CONFIG_TRACING)")
    tr = t.layout("struct trace_array")
    path = "array_buffer.buffer" if tr.has("array_buffer") else "trace_buffer.buffer"
    return t.read_u64(t.symbol("global_trace") + member(t, "struct trace_array", path).offset)


# --- event formats ---------------------------------------------------------------------

def _cstr(t: Target, addr: int, limit: int = 128) -> str:
    if not is_kernel_address(addr):
        return ""
    try:
        return t.read_cstr(addr, limit)
    except FaultError:
        # A short string near the end of a mapping: read it a byte at a time.
        out = bytearray()
        for i in range(limit):
            try:
                b = t.read(addr + i, 1)
            except FaultError:
                break
            if b == b"\0":
                break
            out += b
        return out.decode(errors="replace")


def _fields(t: Target, head: int, problems: list[Problem], where: str) -> list[EventField]:
    fl = t.layout("struct ftrace_event_field")
    link = fl.offset("link")
    out = []
    for pos in list_for_each(t, head, bound=4096, problems=problems, where=where):
        raw = t.read(pos - link, fl.size)
        out.append(EventField(
            _cstr(t, read_member(fl["name"], raw, signed=False)),
            _cstr(t, read_member(fl["type"], raw, signed=False)),
            read_member(fl["offset"], raw), read_member(fl["size"], raw),
            bool(read_member(fl["is_signed"], raw, signed=False))))
    return out


def event_calls(t: Target, problems: list[Problem]) -> dict[int, int]:
    """Each event id (``event.type``) of the kernel's ``ftrace_events`` list with the
    address of its ``struct trace_event_call`` (one read per call: its list links and
    ``event.type`` together)."""
    call_list = t.layout("struct trace_event_call").offset("list")
    etype = member(t, "struct trace_event_call", "event.type")
    span = max(call_list + 16, etype.offset + etype.size)
    got: dict[int, bytes] = {}

    def read(address: int, size: int) -> bytes:
        # list_for_each reads each entry's links: read the call's first SPAN bytes instead
        if size == 16 and address - call_list not in got:
            got[address - call_list] = t.read(address - call_list, span)
        raw = got.get(address - call_list)
        if raw is None or size != 16:
            return t.read(address, size)
        return raw[call_list:call_list + 16]

    out: dict[int, int] = {}
    for pos in list_for_each(t, t.symbol("ftrace_events"), bound=MAX_EVENT_IDS,
                             problems=problems, where="ftrace_events", read=read):
        call = pos - call_list
        raw = got[call]
        out.setdefault(int.from_bytes(raw[etype.offset:etype.offset + etype.size], "little"),
                       call)
    return out


def event_format(t: Target, call: int, common: list[EventField],
                 problems: list[Problem]) -> EventFormat:
    """The :class:`EventFormat` of the ``struct trace_event_call`` at CALL, with COMMON
    (the fields of ``ftrace_common_fields``) before its own.

    :raises TargetError: the call or its class cannot be read."""
    cl = t.layout("struct trace_event_call")
    raw = t.read(call, cl.size)
    flags = read_member(cl["flags"], raw, signed=False)
    klass = read_member(cl["class"], raw, signed=False)
    name_ptr = read_member(cl["name"], raw, signed=False)
    try:
        tp_flag = t.constant("TRACE_EVENT_FL_TRACEPOINT")
    except TargetError:
        tp_flag = 0
    if flags & tp_flag:  # the union's other member: struct tracepoint *tp
        name_ptr = t.read_u64(name_ptr + t.layout("struct tracepoint").offset("name"))
    etype = read_member(member(t, "struct trace_event_call", "event.type"), raw,
                        signed=False)
    kc = t.layout("struct trace_event_class")
    system = _cstr(t, t.read_u64(klass + kc.offset("system")))
    name = _cstr(t, name_ptr)
    own = _fields(t, klass + kc.offset("fields"), problems, f"{system}:{name}.fields")
    return EventFormat(etype, system, name,
                       tuple(sorted(common + own, key=lambda f: f.offset)))


def event_formats(t: Target, problems: list[Problem],
                  ids: Iterable[int] | None = None) -> dict[int, EventFormat]:
    """The :class:`EventFormat` of each id in IDS (all the kernel's events when None)
    that ``ftrace_events`` has; the others are left out (the caller sees them missing).

    :raises TargetError: no ``ftrace_events`` or ``ftrace_common_fields``."""
    calls = event_calls(t, problems)
    wanted = sorted(calls if ids is None else set(ids) & set(calls))
    common = _fields(t, t.symbol("ftrace_common_fields"), problems, "ftrace_common_fields")
    out = {}
    for i in wanted:
        try:
            out[i] = event_format(t, calls[i], common, problems)
        except TargetError as e:
            problems.append(Problem("unreadable", "ftrace_events",
                                    f"event id {i} at {calls[i]:#x}: {e}"))
    return out


# --- the ring ---------------------------------------------------------------------------

_HDR = struct.Struct("<I")
_HDR2 = struct.Struct("<II")


def _walk_page(data: bytes, start: int, commit: int, ts: int, cpu: int,
               out: list, seq: int) -> tuple[int, int, str | None]:
    """Append the data events of one sub-buffer's DATA (``buffer_data_page.data``)
    from byte START to COMMIT to OUT.  TS is the time stamp before the first event.

    :return: (events appended, the time stamp after the last, None or why the page is
        corrupt: an event past COMMIT, or an impossible event header)."""
    unpack = _HDR.unpack_from
    pos = start
    n = 0
    while pos < commit:
        if pos + 4 > commit:
            return n, ts, f"an event header at {pos} crosses the commit index {commit}"
        hdr = unpack(data, pos)[0]
        type_len = hdr & 31
        delta = hdr >> 5
        if type_len == RINGBUF_TYPE_PADDING:
            if delta == 0:  # rb_null_event(): the rest of the page is unused
                break
            if pos + 8 > commit:
                return n, ts, f"a padding event at {pos} crosses the commit index"
            length = unpack(data, pos + 4)[0] + 4  # a discarded event
            if length < 8:
                return n, ts, f"a padding event at {pos} of {length} bytes"
            pos += length
            continue
        if type_len == RINGBUF_TYPE_TIME_EXTEND:
            if pos + 8 > commit:
                return n, ts, f"a time extend at {pos} crosses the commit index"
            ts += unpack(data, pos + 4)[0] << TS_SHIFT | delta
            pos += 8
            continue
        if type_len == RINGBUF_TYPE_TIME_STAMP:
            if pos + 8 > commit:
                return n, ts, f"a time stamp at {pos} crosses the commit index"
            abs_ts = unpack(data, pos + 4)[0] << TS_SHIFT | delta
            if ts & TS_MSB:  # rb_fix_abs_ts()
                abs_ts |= ts & TS_MSB
                if abs_ts < ts:
                    abs_ts += 1 << 59
            ts = abs_ts
            pos += 8
            continue
        if type_len:
            body, length = pos + 4, type_len * 4
        else:
            if pos + 8 > commit:
                return n, ts, f"an event header at {pos} crosses the commit index"
            body, length = pos + 8, unpack(data, pos + 4)[0] - 4
            if length < 8:
                return n, ts, f"an event at {pos} of {length} bytes"
        if body + length > commit:
            return n, ts, (f"an event at {pos} of {length} bytes runs past the commit "
                           f"index {commit}")
        ts += delta
        entry = data[body:body + length]
        etype, pid = _HDR2.unpack_from(entry, 0) if length >= 8 else (0, 0)
        n += 1
        out.append(TraceEvent(cpu, ts, seq + n, etype & 0xFFFF, pid, entry))
        pos = body + length
    return n, ts, None


def _ring(t: Target, lay: _Layouts, start: int, nr_pages: int,
          sink: ProblemSink) -> tuple[list[int], int | None]:
    """The ring's buffer_page addresses from START, following ``list.next`` (flags
    masked), and the head page (the target of the one ``next`` flagged RB_PAGE_HEAD)."""
    list_off = lay.bpage["list"].offset
    pages: list[int] = []
    seen: set[int] = set()
    head = None
    pos = start
    for _ in range(nr_pages + 1):
        if pos in seen:
            break
        if not is_kernel_address(pos):
            sink.add("unreadable", f"buffer page pointer {pos:#x}")
            return pages, head
        try:
            nxt = t.read_u64(pos + list_off)
        except FaultError:
            sink.add("unreadable", f"buffer page {pos:#x} cannot be read")
            return pages, head
        pages.append(pos)
        seen.add(pos)
        if nxt & RB_FLAG_MASK == RB_PAGE_HEAD:
            head = (nxt & ~RB_FLAG_MASK) - list_off
        pos = (nxt & ~RB_FLAG_MASK) - list_off
    if pos != start:
        kind = "cycle" if pos in seen else "too_long"
        sink.add(kind, f"the ring from {start:#x} does not come back to it within "
                       f"{nr_pages} pages (nr_pages)")
    elif len(pages) != nr_pages:
        sink.add("broken_link", f"the ring has {len(pages)} pages, nr_pages says {nr_pages}")
    return pages, head


def _head_confirmed(t: Target, lay: _Layouts, hint: int) -> bool:
    """``rb_set_head_page()``'s first check: the page before HINT (``list.prev``) points
    to HINT with the ``RB_PAGE_HEAD`` flag."""
    link = hint + lay.bpage["list"].offset
    try:
        prev = t.read_u64(link + 8)
        return is_kernel_address(prev) and t.read_u64(prev) == link | RB_PAGE_HEAD
    except FaultError:
        return False


def _head_to_commit(t: Target, lay: _Layouts, head: int, commit_page: int, nr_pages: int,
                    sink: ProblemSink) -> list[int]:
    """The ring's pages from HEAD to COMMIT_PAGE (both included), following ``list.next``
    (flags masked), at most NR_PAGES: the pages that hold events."""
    list_off = lay.bpage["list"].offset
    pages: list[int] = []
    seen: set[int] = set()
    pos = head
    for _ in range(nr_pages):
        if pos in seen:
            sink.add("cycle", f"buffer page {pos:#x} comes back before the commit page "
                              f"{commit_page:#x}")
            return pages
        if not is_kernel_address(pos):
            sink.add("unreadable", f"buffer page pointer {pos:#x}")
            return pages
        pages.append(pos)
        seen.add(pos)
        if pos == commit_page:
            return pages
        try:
            pos = (t.read_u64(pos + list_off) & ~RB_FLAG_MASK) - list_off
        except FaultError:
            sink.add("unreadable", f"buffer page {pos:#x} cannot be read")
            return pages
    sink.add("too_long", f"no commit page {commit_page:#x} within {nr_pages} pages "
                         "(nr_pages) from the head")
    return pages


def _read_cpu(t: Target, lay: _Layouts, cpu: int, addr: int, problems: list[Problem],
              out: list[TraceEvent]) -> CpuTrace:
    raw = t.read(addr, lay.cpu_size)

    def get(name: str) -> int:
        return read_member(lay.cpu[name], raw, signed=False)

    sink = ProblemSink(problems, f"ring_buffer_per_cpu[{cpu}]")
    info = CpuTrace(cpu, addr, get("nr_pages"), t.page_size, get("entries"),
                    get("overrun"), get("commit_overrun"), get("dropped_events"),
                    get("read"), get("lost_events"), 0)
    info.expected = info.entries - (info.overrun + info.read)
    reader, commit_page = get("reader_page"), get("commit_page")
    head = get("head_page")
    if not _head_confirmed(t, lay, head):
        # the hint is stale: find the flagged page as rb_set_head_page() does, around
        # the whole ring
        ring, found = _ring(t, lay, head, info.nr_pages, sink)
        if found is None and ring:
            sink.add("broken_link", "no page of the ring is flagged RB_PAGE_HEAD: "
                                    "taking cpu_buffer->head_page")
        head = found or head
    order: list[int] = [reader]
    if commit_page != reader:
        order += _head_to_commit(t, lay, head, commit_page, info.nr_pages, sink)
    seq = info.overrun + info.read
    bp = lay.bpage
    for k, p in enumerate(order):
        if sink.full:
            break
        try:
            braw = t.read(p, lay.bpage_size)
        except FaultError:
            sink.add("unreadable", f"buffer page {p:#x} cannot be read")
            continue
        page_order = read_member(bp["order"], braw, signed=False) if "order" in bp else 0
        size = t.page_size << page_order if page_order < 8 else 0
        data_page = read_member(bp["page"], braw, signed=False)
        start = read_member(bp["read"], braw, signed=False) if k == 0 else 0
        info.pages += 1
        if not size or not is_kernel_address(data_page):
            sink.add("corrupt", f"buffer page {p:#x}: order {page_order}, data page "
                                f"{data_page:#x}")
            info.skipped += read_member(bp["entries"], braw, signed=False) & 0xFFFFF
            continue
        try:
            data = t.read(data_page, size)
        except FaultError:
            sink.add("unreadable", f"data page {data_page:#x} of buffer page {p:#x}")
            info.skipped += read_member(bp["entries"], braw, signed=False) & 0xFFFFF
            continue
        info.page_size = size
        page_ts = int.from_bytes(data[0:8], "little")
        commit = int.from_bytes(data[lay.commit_off:lay.commit_off + 8], "little") \
            & ~RB_MISSED_MASK & 0xFFFFFFFF
        capacity = size - lay.data_off
        if commit > capacity:
            sink.add("corrupt", f"buffer page {p:#x} (data {data_page:#x}): commit {commit} "
                                f"is past the page's {capacity} bytes")
            info.skipped += read_member(bp["entries"], braw, signed=False) & 0xFFFFF
            continue
        ts = page_ts
        if k == 0 and start:  # rb_iter_reset(): a reader page partly consumed
            ts = get("read_stamp")
        n, _, bad = _walk_page(data[lay.data_off:], start, commit, ts, cpu, out, seq)
        seq += n
        info.found += n
        if bad:
            sink.add("corrupt", f"buffer page {p:#x} (data {data_page:#x}): {bad}; the "
                                "rest of the page is skipped")
            left = (read_member(bp["entries"], braw, signed=False) & 0xFFFFF) - n
            info.skipped += max(left, 0)
            seq += max(left, 0)
    if info.found + info.skipped != info.expected and not sink.full:
        sink.add("count", f"{info.found} events found, {info.skipped} skipped; the kernel "
                          f"counts {info.expected} (entries {info.entries} - overrun "
                          f"{info.overrun} - read {info.read})")
    return info


def read_trace(t: Target, *, with_formats: bool = True) -> TraceBuffer:
    """Every event of the global trace instance's ring buffer (see the module).

    :param with_formats: read the :class:`EventFormat` of each id found.
    :return: a :class:`TraceBuffer`; an unallocated buffer gives no CPUs and no events.
    :raises TargetError: no ``global_trace`` or ring buffer types in the debug info, or
        the buffer's top structures cannot be read (the pages' problems are records)."""
    lay = _layouts(t)
    problems: list[Problem] = []
    buf = global_trace_buffer(t)
    cpus: list[CpuTrace] = []
    events: list[TraceEvent] = []
    if buf:
        n = nr_cpu_ids(t)
        ptrs = t.read_u64(buf + lay.buffers)
        arr = struct.unpack(f"<{n}Q", t.read(ptrs, 8 * n))
        for cpu, addr in enumerate(arr):
            if addr:
                cpus.append(_read_cpu(t, lay, cpu, addr, problems, events))
    formats = event_formats(t, problems, {e.id for e in events}) if with_formats else {}
    return TraceBuffer(cpus, events, formats, problems)


@dataclasses.dataclass
class CpuWindow:
    """One CPU's part of the window between two dumps of the same boot
    (:func:`window`).

    :param cpu: the CPU.
    :param written: events committed between the dumps (B's ``entries`` minus A's).
    :param found: those still in B's buffer.
    :param lost: written but no longer in B's buffer (overwritten, consumed by a
        ``trace_pipe`` reader, or skipped in a corrupt page): ``written - found``.
    """

    cpu: int
    written: int
    found: int
    lost: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def window(a: TraceBuffer, b: TraceBuffer) -> tuple[list[TraceEvent], list[CpuWindow]]:
    """The events of B's buffer written after the last event of A's, CPU by CPU, with
    what was lost of them.

    Each CPU's ``entries`` counts its events since the buffer's last reset, so the
    events written between the dumps are exactly those numbered (``TraceEvent.seq``)
    above A's ``entries``; B's buffer holds those above B's ``overrun + read``.  Where
    both buffers still hold the same numbers, the events must be equal (time and bytes).

    :raises TargetError: B is not a later dump of A's boot: a CPU has fewer entries in B
        than in A (another boot, or the buffer was reset in between), or the events both
        hold differ."""
    a_cpus = {c.cpu: c for c in a.cpus}
    a_by_cpu: dict[int, dict[int, TraceEvent]] = {}
    for e in a.events:
        a_by_cpu.setdefault(e.cpu, {})[e.seq] = e
    out: list[TraceEvent] = []
    parts = []
    for c in b.cpus:
        before = a_cpus[c.cpu].entries if c.cpu in a_cpus else 0
        if c.entries < before:
            raise TargetError(f"CPU {c.cpu}: the later dump's buffer has {c.entries} entries, "
                              f"the earlier one's {before}: not a later dump of the same "
                              "boot, or the trace buffer was reset in between")
        mine = [e for e in b.events if e.cpu == c.cpu]
        old = a_by_cpu.get(c.cpu, {})
        for e in mine:
            if e.seq > before:
                break
            o = old.get(e.seq)
            if o is not None and (o.ts, o.entry) != (e.ts, e.entry):
                raise TargetError(f"CPU {c.cpu}: event {e.seq} differs between the dumps "
                                  f"(times {o.ts} and {e.ts}): not dumps of the same boot")
        new = [e for e in mine if e.seq > before]
        out.extend(new)
        written = c.entries - before
        parts.append(CpuWindow(c.cpu, written, len(new), written - len(new)))
    return out, parts
