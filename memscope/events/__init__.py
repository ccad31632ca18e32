"""Trace events as the models read them, from the dump's ring buffer
(:mod:`memscope.kernel.ftrace`) or from trace text (:mod:`memscope.events.text`).

:class:`Event` is the one record both produce: the event's name, where and when it
happened, and its fields by the kernel's field names.  Numeric fields are ints whatever
the source (the dump's binary values; the text's decimal, ``0x`` hex, or ``%p`` hex);
fields the text prints symbolically (``call_site`` as ``%pS``, ``gfp_flags`` as names)
are ints from the dump and strings from text.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.ftrace import ColumnSequence

__all__ = ("Event", "RingEvents", "from_ring")


@dataclasses.dataclass(slots=True)
class Event:
    """One trace event.

    :param name: the event's name (``mm_page_alloc``), without its system.
    :param cpu: the CPU that recorded it.
    :param ts: its time in nanoseconds of the trace clock (text gives microseconds:
        multiplied by 1000).
    :param pid: ``common_pid``.
    :param fields: the event's own fields by name (see the module for their types).
    :param system: the event's system (``kmem``), "" when the text does not say.
    """

    name: str
    cpu: int
    ts: int
    pid: int
    fields: dict
    system: str = ""


class RingEvents(ColumnSequence):
    """The events of a ring buffer in time order, decoded in bulk: a sequence of
    :class:`Event` (built when asked for, each the same as :meth:`EventFormat.decode
    <memscope.kernel.ftrace.EventFormat.decode>` makes it) over columns.

    :attr events: the :class:`memscope.kernel.ftrace.TraceEvents`, in time order.
    :attr formats: id -> :class:`memscope.kernel.ftrace.EventFormat`.

    :meth:`rows` and :meth:`columns` give the models an event type's positions and its
    fields as arrays (:meth:`EventFormat.decode_columns
    <memscope.kernel.ftrace.EventFormat.decode_columns>`).
    """

    def __init__(self, events, formats: dict):
        self.events = events
        self.formats = formats
        self._rows: dict[int, np.ndarray] | None = None
        self._cols: dict[int, dict | None] = {}
        self._list: list[Event] | None = None

    def __len__(self) -> int:
        return len(self.events)

    def ids(self) -> list[int]:
        """The event ids present, in increasing order."""
        return sorted(self._by_id())

    def _by_id(self) -> dict[int, np.ndarray]:
        if self._rows is None:
            ids = self.events.id
            # ids are 16 bits (common_type): a stable radix sort
            order = np.argsort(ids.astype(np.uint16), kind="stable") if \
                not len(ids) or (int(ids.min()) >= 0 and int(ids.max()) < 1 << 16) else \
                np.argsort(ids, kind="stable")
            uniq, first = np.unique(ids[order], return_index=True)
            bounds = list(first.tolist()) + [len(order)]
            self._rows = {int(u): order[bounds[k]:bounds[k + 1]]
                          for k, u in enumerate(uniq.tolist())}
        return self._rows

    def rows(self, event_id: int) -> np.ndarray:
        """The positions (in time order) of the events of EVENT_ID, increasing."""
        return self._by_id().get(event_id, np.zeros(0, np.int64))

    def columns(self, event_id: int) -> dict | None:
        """The fields of EVENT_ID's events (in :meth:`rows` order) as columns, or None
        when they cannot be decoded in bulk (no format, or an entry too short: then
        :class:`Event` s have them)."""
        if event_id not in self._cols:
            f = self.formats.get(event_id)
            cols = None
            if f is not None:
                try:
                    cols = f.decode_columns(self.events.take(self.rows(event_id)))
                except ValueError:
                    cols = None
            self._cols[event_id] = cols
        return self._cols[event_id]

    def ids_named(self, *names: str) -> dict[int, str]:
        """Id -> name of the events present whose name is one of NAMES."""
        return {i: self.formats[i].name for i in self._by_id()
                if i in self.formats and self.formats[i].name in names}

    def decode_all(self) -> None:
        """Decode every event type's fields into columns (what :meth:`columns` gives)."""
        for i in self._by_id():
            self.columns(i)

    def _build(self) -> list[Event]:
        ev = self.events
        out: list = [None] * len(ev)
        cpus, tss, pids = ev.cpu.tolist(), ev.ts.tolist(), ev.pid.tolist()
        for i, rows in self._by_id().items():
            f = self.formats.get(i)
            rl = rows.tolist()
            if f is None:
                for r in rl:
                    out[r] = Event(f"#{i}", cpus[r], tss[r], pids[r], {}, "")
                continue
            cols = self.columns(i)
            name, system = f.name, f.system
            if cols is None:
                sub = ev.take(rows)
                for r, e in zip(rl, sub):
                    out[r] = Event(name, cpus[r], tss[r], pids[r], f.decode(e.entry), system)
                continue
            keys = list(cols)
            vals = [c.tolist() if not isinstance(c, list) else c for c in cols.values()]
            for r, *v in zip(rl, *vals):
                out[r] = Event(name, cpus[r], tss[r], pids[r], dict(zip(keys, v)), system)
        return out

    def _all(self) -> list[Event]:
        if self._list is None:
            self._list = self._build()
        return self._list

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())



def from_ring(trace) -> RingEvents:
    """The events of a :class:`memscope.kernel.ftrace.TraceBuffer` as :class:`Event` s,
    in time order (the order of the ``trace`` file); an event whose id the kernel does not
    describe is named ``"#ID"`` with no fields.  The sequence is decoded in bulk and its
    Events are built when first used (:class:`RingEvents`)."""
    return RingEvents(trace.merged(), trace.formats)
