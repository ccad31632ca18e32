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

__all__ = ("Event", "from_ring")


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


def from_ring(trace) -> list[Event]:
    """The events of a :class:`memscope.kernel.ftrace.TraceBuffer` as :class:`Event` s,
    in time order (the order of the ``trace`` file); an event whose id the kernel does not
    describe is named ``"#ID"`` with no fields."""
    out = []
    fmts = trace.formats
    for e in trace.merged():
        f = fmts.get(e.id)
        if f is None:
            out.append(Event(f"#{e.id}", e.cpu, e.ts, e.pid, {}, ""))
        else:
            out.append(Event(f.name, e.cpu, e.ts, e.pid, f.decode(e.entry), f.system))
    return out
