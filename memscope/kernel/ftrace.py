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
from typing import Iterable, Sequence

import numpy as np

from ..target.base import FaultError, Target, TargetError
from .addr import is_kernel_address
from .cpumask import nr_cpu_ids
from .fields import member, read_member
from .list import list_for_each
from .problem import Problem, ProblemSink

__all__ = ("CpuTrace", "EventField", "EventFormat", "StrColumn", "TraceBuffer", "TraceEvent",
           "TraceEvents",
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

    def decode_columns(self, events: "TraceEvents") -> dict:
        """The values of this event's own fields in EVENTS (all of this format's id), as
        columns: field name -> a numpy array of ints (int fields: one structured dtype
        over every int field, from the kernel's offsets, sizes and signedness), a
        :class:`StrColumn` (``__data_loc``, ``__rel_loc`` and char-array fields), or a
        list (anything else: one value per event, as :meth:`decode` gives it).

        :raises ValueError: an entry is shorter than the int fields need (use
            :meth:`decode` on each)."""
        ints, names, others, end = self._decoder
        n = len(events)
        out: dict = {}
        if n and int(events.length.min()) < end:
            raise ValueError(f"{self.name}: an entry shorter than its {end} bytes of fields")
        if names:
            dt = np.dtype({"names": list(names), "formats": [self._dtype(f) for f in self.fields
                                                             if f.name in names],
                           "offsets": [f.offset for f in self.fields if f.name in names],
                           "itemsize": end})
            rec = _rows(events.buf, events.start, end).view(dt).reshape(n)
            for k in names:
                out[k] = rec[k]
        for f in others:
            kind = f.kind
            if kind in ("data_loc", "rel_loc", "chars"):
                out[f.name] = _str_column(f, events)
            else:
                out[f.name] = [_field_value(f, e.entry) for e in events]
        return out

    def _dtype(self, f: EventField) -> str:
        return ("<i" if f.signed else "<u") + str(f.size)

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


class StrColumn:
    """A string field of many events: ``values[codes[i]]`` is event i's (a str, or None
    where the field is outside the entry)."""

    __slots__ = ("codes", "values")

    def __init__(self, codes: np.ndarray, values: list):
        self.codes = codes
        self.values = values

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        return self.values[self.codes[i]]

    def tolist(self) -> list:
        v = self.values
        return [v[c] for c in self.codes.tolist()]


#: Longest string decoded in bulk; longer ones are decoded one at a time.
_MAX_BULK_STR = 512
_HASH_MUL = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0xD6E8FEB86659FD93], dtype=np.uint64)


def _rows(buf: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """The WIDTH bytes of BUF from each of START, as a (len(START), WIDTH) uint8 array
    (a row copied at a time; bytes past BUF's end are 0)."""
    if len(buf) < width + 1 or (len(start) and int(start.max()) > len(buf) - width):
        buf = np.concatenate((buf, np.zeros(width + 1, np.uint8)))
    if not len(start):
        return np.zeros((0, width), np.uint8)
    return np.lib.stride_tricks.sliding_window_view(buf, width)[start]


def _str_column(f: EventField, events: "TraceEvents") -> StrColumn:
    """Field F (``__data_loc``, ``__rel_loc`` or a char array) of EVENTS as a
    :class:`StrColumn`, as :func:`_field_value` reads each: the bytes up to the first
    NUL, decoded with errors replaced; None where the field or its string is outside the
    entry.  Equal strings are found by a hash of their bytes, checked byte for byte."""
    n = len(events)
    end = f.offset + f.size
    ln = events.length
    valid = ln >= end
    if f.kind == "chars":
        rel = np.full(n, f.offset, dtype=np.int64)
        size = np.full(n, f.size, dtype=np.int64)
    else:
        v = _rows(events.buf, events.start + f.offset, 4).view("<u4").reshape(n).astype(np.int64)
        rel = (v & 0xFFFF) + (end if f.kind == "rel_loc" else 0)
        size = v >> 16
        valid &= rel + size <= ln
    size = np.where(valid, size, 0)
    width = int(size.max()) if n else 0
    if width > _MAX_BULK_STR:
        vals = [_field_value(f, e.entry) for e in events]
        uniq = list(dict.fromkeys(vals))
        code = {u: i for i, u in enumerate(uniq)}
        return StrColumn(np.array([code[x] for x in vals], dtype=np.int64), uniq)
    width8 = max(8, -(-width // 8) * 8)
    col = np.arange(width8)
    m = _rows(events.buf, events.start + np.where(valid, rel, 0), width8)
    stop = (m == 0) | (col >= size[:, None])
    eff = np.where(stop.any(axis=1), stop.argmax(axis=1), width8)
    m = np.where(col < eff[:, None], m, 0).astype(np.uint8)
    words = np.ascontiguousarray(m).view("<u8")
    h = (eff.astype(np.uint64) << np.uint64(1)) | valid.astype(np.uint64)
    for j in range(words.shape[1]):
        h = h * _HASH_MUL[j % 4] ^ words[:, j]
    _, first, codes = np.unique(h, return_index=True, return_inverse=True)
    codes = codes.reshape(n)
    rep = first[codes]
    same = (words == words[rep]).all(axis=1) & (eff == eff[rep]) & (valid == valid[rep])
    values = [bytes(m[i, :eff[i]]).decode(errors="replace") if valid[i] else None
              for i in first.tolist()]
    if not same.all():  # a hash collision: those events one at a time
        codes = codes.astype(np.int64)
        for i in np.nonzero(~same)[0].tolist():
            values.append(bytes(m[i, :eff[i]]).decode(errors="replace") if valid[i] else None)
            codes[i] = len(values) - 1
    return StrColumn(codes.astype(np.int64), values)


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


class ColumnSequence(Sequence):
    """A sequence held as columns whose items are built when asked for (TraceEvents here,
    :class:`memscope.events.RingEvents`, :class:`memscope.events.text.TextEvents`): equal
    to a list or tuple of the same items, or to another of its own class, item by item."""

    __slots__ = ()

    def __eq__(self, other) -> bool:
        if isinstance(other, (type(self), list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-list semantics, as a list's

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} events>"


class TraceEvents(ColumnSequence):
    """Ring-buffer events held as columns: what :func:`read_trace` decodes in bulk, a
    sequence of :class:`TraceEvent` built one at a time only when asked for.

    :param blob: the bytes every entry is a slice of (the sub-buffers' data, concatenated).
    :param cpu, ts, seq, id, pid: one numpy array each, an item per event (see
        :class:`TraceEvent`; ``ts`` and ``seq`` uint64, the others int64).
    :param start, length: where each entry is in BLOB (bytes; int64).
    """

    __slots__ = ("blob", "cpu", "ts", "seq", "id", "pid", "start", "length", "_buf")

    def __init__(self, blob: bytes, cpu, ts, seq, id, pid, start, length):
        self.blob = blob
        self.cpu = np.asarray(cpu, dtype=np.int64)
        self.ts = np.asarray(ts, dtype=np.uint64)
        self.seq = np.asarray(seq, dtype=np.uint64)
        self.id = np.asarray(id, dtype=np.int64)
        self.pid = np.asarray(pid, dtype=np.int64)
        self.start = np.asarray(start, dtype=np.int64)
        self.length = np.asarray(length, dtype=np.int64)
        self._buf = None

    @classmethod
    def from_list(cls, events: Iterable[TraceEvent]) -> "TraceEvents":
        """The columns of EVENTS (:class:`TraceEvent` s)."""
        events = list(events)
        blob = b"".join(e.entry for e in events)
        length = np.fromiter((len(e.entry) for e in events), np.int64, len(events))
        start = np.cumsum(length) - length
        return cls(blob, [e.cpu for e in events], [e.ts for e in events],
                   [e.seq for e in events], [e.id for e in events],
                   [e.pid for e in events], start, length)

    @property
    def buf(self) -> np.ndarray:
        """BLOB as a uint8 array."""
        if self._buf is None:
            self._buf = np.frombuffer(self.blob, dtype=np.uint8)
        return self._buf

    def take(self, index) -> "TraceEvents":
        """The events at INDEX (an index array, boolean mask or slice), sharing BLOB."""
        out = TraceEvents.__new__(TraceEvents)
        out.blob, out._buf = self.blob, self._buf
        for k in ("cpu", "ts", "seq", "id", "pid", "start", "length"):
            setattr(out, k, getattr(self, k)[index])
        return out

    def __len__(self) -> int:
        return len(self.cpu)

    def _event(self, i: int) -> TraceEvent:
        s = int(self.start[i])
        return TraceEvent(int(self.cpu[i]), int(self.ts[i]), int(self.seq[i]),
                          int(self.id[i]), int(self.pid[i]),
                          self.blob[s:s + int(self.length[i])])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("event index out of range")
        return self._event(i)

    def __iter__(self):
        blob = self.blob
        cols = zip(self.cpu.tolist(), self.ts.tolist(), self.seq.tolist(), self.id.tolist(),
                   self.pid.tolist(), self.start.tolist(), self.length.tolist())
        for cpu, ts, seq, etype, pid, s, n in cols:
            yield TraceEvent(cpu, ts, seq, etype, pid, blob[s:s + n])



@dataclasses.dataclass
class TraceBuffer:
    """The global trace instance's ring buffer: every CPU's counters and events.

    :param cpus: one :class:`CpuTrace` per CPU that has a buffer.
    :param events: every data event, CPU by CPU, oldest first within each CPU: a
        :class:`TraceEvents` (a list of :class:`TraceEvent` given here becomes one).
    :param formats: the :class:`EventFormat` of each id in ``events`` (an id the kernel
        does not describe is absent: its events are still listed).
    :param problems: what the walks found wrong.
    """

    cpus: list[CpuTrace]
    events: TraceEvents
    formats: dict[int, EventFormat]
    problems: list[Problem]

    def __post_init__(self) -> None:
        if not isinstance(self.events, TraceEvents):
            self.events = TraceEvents.from_list(self.events)

    def merged(self) -> TraceEvents:
        """The events of every CPU in time order (stable: equal times keep CPU order),
        as the ``trace`` file merges them."""
        ev = self.events
        if len(ev) and bool((np.diff(ev.cpu) >= 0).all()):
            # stored CPU by CPU in CPU order, each CPU's times (nearly) sorted: a stable
            # sort by time alone keeps CPU order among equal times, and merges the runs
            return ev.take(np.argsort(ev.ts, kind="stable"))
        return ev.take(np.lexsort((ev.cpu, ev.ts)))


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


def _walk_page(data: bytes, start: int, commit: int, ts: int,
               out: list) -> tuple[int, int, str | None]:
    """Append the data events of one sub-buffer's DATA (``buffer_data_page.data``)
    from byte START to COMMIT to OUT, each as (body offset in DATA, length, time stamp,
    ``common_type``, ``common_pid``).  TS is the time stamp before the first event.

    The walk one event at a time, for the pages :func:`_walk_pages` leaves to it (absolute
    time stamps, anything corrupt).

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
        etype, pid = _HDR2.unpack_from(data, body) if length >= 8 else (0, 0)
        n += 1
        out.append((body, length, ts, etype & 0xFFFF, pid))
        pos = body + length
    return n, ts, None


def _walk_pages(blob: np.ndarray, base: np.ndarray, start: np.ndarray, commit: np.ndarray,
                ts0: np.ndarray) -> tuple[np.ndarray, ...]:
    """Walk many sub-buffers at once, one event of every page per step, in numpy: the
    same walk as :func:`_walk_page` for the pages that hold only data events, time
    extends and padding, all well formed.

    :param blob: the pages' data as uint32 words (each page at a multiple of 8 bytes,
        8 zero bytes after the last).
    :param base: each page's first byte in BLOB; START, COMMIT: the walk's bounds in the
        page; TS0: the time stamp before its first event (uint64).
    :return: (page, body, length, ts, id, pid) of each data event, by page then order,
        BODY from the start of BLOB; and a bool per page: False where the page holds an
        absolute time stamp, anything :func:`_walk_page` calls corrupt or a time that
        would pass 64 bits, and must be walked by it instead (its events are left out)."""
    npages = len(base)
    ok = np.ones(npages, dtype=bool)
    # positions from the start of BLOB: every one the walk reads is below its page's
    # commit, at most the blob's length less its 8 trailing zero bytes (two words)
    cur = base + start.astype(np.int64)
    end = base + commit
    active = np.nonzero(cur < end)[0]
    recs = []
    step_no = 0
    while active.size:
        pos = cur[active]
        cm = end[active]
        bad = ((pos & 3) != 0) | (pos + 4 > cm)
        word = pos >> 2
        hdr = blob[word].astype(np.int64)
        arr0 = blob[word + 1].astype(np.int64)
        tl = hdr & 31
        delta = hdr >> 5
        is_pad = tl == RINGBUF_TYPE_PADDING
        null = is_pad & (delta == 0)
        is_ext = tl == RINGBUF_TYPE_TIME_EXTEND
        is_big = tl == 0
        is_data = tl <= RINGBUF_TYPE_DATA_TYPE_LEN_MAX
        is_ts = tl == RINGBUF_TYPE_TIME_STAMP
        need8 = (is_pad & ~null) | is_ext | is_ts | is_big
        bad |= need8 & (pos + 8 > cm)
        bad |= is_ts
        bad |= is_pad & ~null & (arr0 + 4 < 8)
        length = np.where(is_big, arr0 - 4, tl * 4)
        bad |= is_big & (length < 8)
        body = np.where(is_big, pos + 8, pos + 4)
        bad |= is_data & (body + length > cm)
        step = np.where(is_data, body + length, np.where(is_pad, pos + arr0 + 4, pos + 8))
        inc = np.where(is_data, delta, np.where(is_ext, arr0 << TS_SHIFT | delta, 0))
        good = ~bad & ~null
        ok[active[bad]] = False
        recs.append((active[good], is_data[good], inc[good], body[good], length[good],
                     np.full(int(good.sum()), step_no, np.int64)))
        cur[active] = step
        active = active[good & (step < cm)]
        step_no += 1
    if recs:
        page, is_data, inc, body, length, nth = (np.concatenate(x) for x in zip(*recs))
    else:
        page = body = length = inc = nth = np.zeros(0, np.int64)
        is_data = np.zeros(0, bool)
    # a page's k-th record came from step k: by page then step without a sort, each
    # array scattered to its place once
    count = np.bincount(page, minlength=npages)
    dest = (np.cumsum(count) - count)[page] + nth

    def placed(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[dest] = x
        return out
    page, is_data, inc, body, length = (placed(x) for x in (page, is_data, inc, body, length))
    # time stamps: TS0 plus the increments of the page so far (data events' deltas, time
    # extends), in uint64; a page whose sum could pass 64 bits is left to _walk_page
    total = np.bincount(page, weights=inc.astype(np.float64), minlength=npages)
    ok &= ts0.astype(np.float64) + total < 2.0 ** 63
    csum = np.cumsum(inc.astype(np.uint64))
    first = np.cumsum(count) - count  # each page's first record
    before = np.concatenate(([np.uint64(0)], csum))[first]
    ts = ts0[page] + (csum - before[page])
    keep = is_data & ok[page]
    page, body, length, ts = page[keep], body[keep], length[keep], ts[keep]
    big = length >= 8
    limit = len(blob) * 4 - 8
    w = np.minimum(body, limit) >> 2
    etype = np.where(big, blob[w] & 0xFFFF, 0).astype(np.int64)
    pid = np.where(big, blob[np.minimum(w + 1, len(blob) - 1)], 0).astype(np.int64)
    return page, body, length, ts, etype, pid, ok


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
                    sink: ProblemSink, raws: dict[int, bytes] | None = None) -> list[int]:
    """The ring's pages from HEAD to COMMIT_PAGE (both included), following ``list.next``
    (flags masked), at most NR_PAGES: the pages that hold events.  RAWS, if given,
    receives each ``struct buffer_page`` read on the way (one read per page)."""
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
            if raws is None:
                nxt = t.read_u64(pos + list_off)
            else:
                raw = raws[pos] = t.read(pos, lay.bpage_size)
                nxt = int.from_bytes(raw[list_off:list_off + 8], "little")
            pos = (nxt & ~RB_FLAG_MASK) - list_off
        except FaultError:
            sink.add("unreadable", f"buffer page {pos:#x} cannot be read")
            return pages
    sink.add("too_long", f"no commit page {commit_page:#x} within {nr_pages} pages "
                         "(nr_pages) from the head")
    return pages


def _unsigned(m):
    """A reader of member M's unsigned value from a structure's bytes (a plain member
    sliced directly; a bit field through :func:`read_member`)."""
    if m.bit_size or m.size not in (1, 2, 4, 8):
        return lambda raw: read_member(m, raw, signed=False)
    lo, hi = m.offset, m.offset + m.size

    def get(raw: bytes) -> int:
        if len(raw) < hi:
            return read_member(m, raw, signed=False)  # its error
        return int.from_bytes(raw[lo:hi], "little")
    return get


@dataclasses.dataclass
class _Page:
    """One sub-buffer of a CPU, as read: its data to walk (``data`` None: a page not
    walked, ``why`` says why and ``entries`` counts its events as skipped)."""

    addr: int
    data_page: int
    entries: int
    data: bytes | None = None
    size: int = 0
    start: int = 0
    commit: int = 0
    ts: int = 0
    kind: str = ""
    why: str = ""


def _read_cpu(t: Target, lay: _Layouts, cpu: int, addr: int,
              ) -> tuple[CpuTrace, ProblemSink, list[_Page]]:
    """One CPU's counters and the sub-buffers that hold its events, read (the walk is
    :func:`read_trace`'s, all CPUs at once); the sink collects the CPU's problems in a
    list of its own."""
    raw = t.read(addr, lay.cpu_size)

    def get(name: str) -> int:
        return read_member(lay.cpu[name], raw, signed=False)

    sink = ProblemSink([], f"ring_buffer_per_cpu[{cpu}]")
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
    raws: dict[int, bytes] = {}
    if commit_page != reader:
        order += _head_to_commit(t, lay, head, commit_page, info.nr_pages, sink, raws)
    bp = lay.bpage
    get_order, get_page, get_entries, get_read = (
        _unsigned(bp[n]) if n in bp else (lambda raw: 0)
        for n in ("order", "page", "entries", "read"))
    pages: list[_Page] = []
    for k, p in enumerate(order):
        try:
            braw = raws.get(p) or t.read(p, lay.bpage_size)
        except FaultError:
            pages.append(_Page(p, 0, -1, kind="unreadable",
                               why=f"buffer page {p:#x} cannot be read"))
            continue
        page_order = get_order(braw)
        size = t.page_size << page_order if page_order < 8 else 0
        data_page = get_page(braw)
        entries = get_entries(braw) & 0xFFFFF
        pg = _Page(p, data_page, entries, size=size)
        pages.append(pg)
        if not size or not is_kernel_address(data_page):
            pg.kind, pg.why = "corrupt", (f"buffer page {p:#x}: order {page_order}, data "
                                          f"page {data_page:#x}")
            continue
        try:
            data = t.read(data_page, size)
        except FaultError:
            pg.kind, pg.why = "unreadable", f"data page {data_page:#x} of buffer page {p:#x}"
            continue
        commit = int.from_bytes(data[lay.commit_off:lay.commit_off + 8], "little") \
            & ~RB_MISSED_MASK & 0xFFFFFFFF
        capacity = size - lay.data_off
        if commit > capacity:
            pg.kind, pg.why = "corrupt", (f"buffer page {p:#x} (data {data_page:#x}): commit "
                                          f"{commit} is past the page's {capacity} bytes")
            pg.data = b""  # read: its size counts as the CPU's page size
            continue
        pg.data = data[lay.data_off:lay.data_off + commit]
        pg.commit = commit
        pg.start = get_read(braw) if k == 0 else 0
        pg.ts = int.from_bytes(data[0:8], "little")
        if k == 0 and pg.start:  # rb_iter_reset(): a reader page partly consumed
            pg.ts = get("read_stamp")
    return info, sink, pages


def _walk_all(cpus: list[tuple[CpuTrace, ProblemSink, list[_Page]]]) -> TraceEvents:
    """Walk every CPU's pages (:func:`_walk_pages` in bulk, :func:`_walk_page` for the
    pages it leaves), number the events, count them and record the problems, CPU by CPU
    and page by page as a one-at-a-time walk would."""
    walked = [pg for _, _, pages in cpus for pg in pages
              if pg.data is not None and not pg.kind]
    # each page at a multiple of 8 bytes of one blob, 8 zero bytes after the last
    parts, base, pos = [], [], 0
    for pg in walked:
        base.append(pos)
        parts.append(pg.data)
        pad = -len(pg.data) % 8
        if pad:
            parts.append(bytes(pad))
        pos += len(pg.data) + pad
    parts.append(bytes(8))
    blob = b"".join(parts)
    words = np.frombuffer(blob, dtype="<u4")
    base_a = np.array(base, dtype=np.int64)
    page, body, length, ts, etype, pid, ok = _walk_pages(
        words, base_a, np.array([pg.start for pg in walked], dtype=np.int64),
        np.array([pg.commit for pg in walked], dtype=np.int64),
        np.array([pg.ts for pg in walked], dtype=np.uint64))
    counts = np.bincount(page, minlength=len(walked)).tolist()
    index = {id(pg): i for i, pg in enumerate(walked)}
    okl = ok.tolist()
    # pages left to the one-event walk, and every page's first sequence number
    extra: list[tuple] = []  # (page, body, length, ts, id, pid) of the left pages' events
    seq_start = [0] * len(walked)
    cpu_of = [0] * len(walked)
    included = [False] * len(walked)
    for info, sink, pages in cpus:
        seq = info.overrun + info.read
        for pg in pages:
            if sink.full:
                break
            if pg.kind == "unreadable" and pg.entries < 0:
                sink.add("unreadable", pg.why)
                continue
            info.pages += 1
            if pg.data is None:
                sink.add(pg.kind, pg.why)
                info.skipped += pg.entries
                continue
            info.page_size = pg.size
            if pg.kind:
                sink.add(pg.kind, pg.why)
                info.skipped += pg.entries
                continue
            i = index[id(pg)]
            included[i] = True
            cpu_of[i] = info.cpu
            seq_start[i] = seq
            if okl[i]:
                n, bad = counts[i], None
            else:
                got: list = []
                n, _, bad = _walk_page(pg.data, pg.start, pg.commit, pg.ts, got)
                b0 = base[i]
                extra.extend((i, b0 + x[0], x[1], x[2], x[3], x[4]) for x in got)
            seq += n
            info.found += n
            if bad:
                sink.add("corrupt", f"buffer page {pg.addr:#x} (data {pg.data_page:#x}): "
                                    f"{bad}; the rest of the page is skipped")
                left = pg.entries - n
                info.skipped += max(left, 0)
                seq += max(left, 0)
        if info.found + info.skipped != info.expected and not sink.full:
            sink.add("count", f"{info.found} events found, {info.skipped} skipped; the "
                              f"kernel counts {info.expected} (entries {info.entries} - "
                              f"overrun {info.overrun} - read {info.read})")
    if extra:
        ex = np.array(extra, dtype=np.uint64).T.astype(np.int64)
        page = np.concatenate((page, ex[0]))
        body = np.concatenate((body, ex[1]))
        length = np.concatenate((length, ex[2]))
        ts = np.concatenate((ts, np.array([x[3] for x in extra], dtype=np.uint64)))
        etype = np.concatenate((etype, ex[4]))
        pid = np.concatenate((pid, ex[5]))
        o = np.argsort(page, kind="stable")
        page, body, length, ts, etype, pid = (x[o] for x in (page, body, length, ts, etype, pid))
    keep = np.array(included, dtype=bool)[page] if len(page) else np.zeros(0, bool)
    page, body, length, ts, etype, pid = (x[keep] for x in (page, body, length, ts, etype, pid))
    count = np.bincount(page, minlength=len(walked))
    first = (np.cumsum(count) - count)[page]  # the page's first event
    seq = np.array(seq_start, dtype=np.uint64)[page] + \
        (np.arange(len(page)) - first + 1).astype(np.uint64)
    cpu = np.array(cpu_of, dtype=np.int64)[page]
    return TraceEvents(blob, cpu, ts, seq, etype, pid, body, length)


def read_trace(t: Target, *, with_formats: bool = True) -> TraceBuffer:
    """Every event of the global trace instance's ring buffer (see the module).

    The pages are read CPU by CPU and walked all at once (:func:`_walk_pages`); the
    events come as columns (:class:`TraceEvents`).

    :param with_formats: read the :class:`EventFormat` of each id found.
    :return: a :class:`TraceBuffer`; an unallocated buffer gives no CPUs and no events.
    :raises TargetError: no ``global_trace`` or ring buffer types in the debug info, or
        the buffer's top structures cannot be read (the pages' problems are records)."""
    lay = _layouts(t)
    problems: list[Problem] = []
    buf = global_trace_buffer(t)
    cpus: list[tuple[CpuTrace, ProblemSink, list[_Page]]] = []
    if buf:
        n = nr_cpu_ids(t)
        ptrs = t.read_u64(buf + lay.buffers)
        arr = struct.unpack(f"<{n}Q", t.read(ptrs, 8 * n))
        for cpu, addr in enumerate(arr):
            if addr:
                cpus.append(_read_cpu(t, lay, cpu, addr))
    events = _walk_all(cpus)
    for _, sink, _ in cpus:  # CPU by CPU, each in the order its walk found them
        problems.extend(sink.problems)
    formats = event_formats(t, problems, set(np.unique(events.id).tolist())) \
        if with_formats else {}
    return TraceBuffer([c[0] for c in cpus], events, formats, problems)


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


def _same_bytes(x: TraceEvents, ix: np.ndarray, y: TraceEvents, iy: np.ndarray) -> np.ndarray:
    """Whether entry IX[k] of X has the bytes of entry IY[k] of Y (of equal lengths),
    for each k."""
    n = x.length[ix]
    if not len(n):
        return np.ones(0, dtype=bool)
    ends = np.cumsum(n)
    firsts = ends - n
    within = np.arange(int(ends[-1])) - np.repeat(firsts, n)
    differ = x.buf[np.repeat(x.start[ix], n) + within] != y.buf[np.repeat(y.start[iy], n) + within]
    out = np.ones(len(n), dtype=bool)
    nz = n > 0
    out[nz] = ~np.logical_or.reduceat(differ, firsts[nz])
    return out


def window(a: TraceBuffer, b: TraceBuffer) -> tuple[TraceEvents, list[CpuWindow]]:
    """The events of B's buffer written after the last event of A's, CPU by CPU, with
    what was lost of them.

    Each CPU's ``entries`` counts its events since the buffer's last reset, so the
    events written between the dumps are exactly those numbered (``TraceEvent.seq``)
    above A's ``entries``; B's buffer holds those above B's ``overrun + read``.  Where
    both buffers still hold the same numbers, the events must be equal (time and bytes).

    :return: the events (:class:`TraceEvents`, CPU by CPU) and each CPU's
        :class:`CpuWindow`.
    :raises TargetError: B is not a later dump of A's boot: a CPU has fewer entries in B
        than in A (another boot, or the buffer was reset in between), or the events both
        hold differ."""
    a_cpus = {c.cpu: c for c in a.cpus}
    ae, be = a.events, b.events
    keep = np.zeros(len(be), dtype=bool)
    parts = []
    for c in b.cpus:
        before = a_cpus[c.cpu].entries if c.cpu in a_cpus else 0
        if c.entries < before:
            raise TargetError(f"CPU {c.cpu}: the later dump's buffer has {c.entries} entries, "
                              f"the earlier one's {before}: not a later dump of the same "
                              "boot, or the trace buffer was reset in between")
        mine = be.cpu == c.cpu
        new = mine & (be.seq > np.uint64(before))
        # the events both buffers hold: same number, same time and bytes
        old_b = np.nonzero(mine & ~new)[0]
        old_a = np.nonzero(ae.cpu == c.cpu)[0]
        if len(old_b) and len(old_a):
            common, ia, ib = np.intersect1d(ae.seq[old_a], be.seq[old_b],
                                            assume_unique=True, return_indices=True)
            ia, ib = old_a[ia], old_b[ib]
            same = (ae.ts[ia] == be.ts[ib]) & (ae.length[ia] == be.length[ib])
            same[same] = _same_bytes(ae, ia[same], be, ib[same])
            if not same.all():
                k = int(np.argmin(same))
                o, e = ae[int(ia[k])], be[int(ib[k])]
                raise TargetError(f"CPU {c.cpu}: event {e.seq} differs between the "
                                  f"dumps (times {o.ts} and {e.ts}): not dumps of the "
                                  "same boot")
        keep |= new
        found = int(new.sum())
        written = c.entries - before
        parts.append(CpuWindow(c.cpu, written, found, written - found))
    # CPU by CPU in B's CPU order (the events are stored so already)
    order = np.concatenate([np.nonzero(keep & (be.cpu == c.cpu))[0] for c in b.cpus]) \
        if b.cpus else np.zeros(0, np.int64)
    return be.take(order.astype(np.int64)), parts
