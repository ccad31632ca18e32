"""A reference model of the vmalloc allocator's busy and lazily freed areas, driven by the
vmalloc tracepoints: a readable, executable specification of mm/vmalloc.c (7.2's,
``linux-source-7.2``; 6.12's emits the same events).  The Debian 5.10 and 6.1 kernels have
no vmalloc tracepoints (``include/trace/events/vmalloc.h`` is absent from their
sources): there is nothing to replay (:func:`has_vmalloc_events`).

State (:class:`VmallocModel`): every busy area (``vmap_node.busy``, or
``vmap_area_list`` before v6.9) and every lazily freed one (``vmap_node.lazy``,
``purge_vmap_area_list``), start -> end (bytes, the guard page included), as
:func:`memscope.mm.vmalloc.vmap_areas` reads them; busy and lazy areas never overlap
(a lazy area's addresses stay reserved until it is purged).

Events (:meth:`VmallocModel.apply`), each mirroring the code that emits it:

- ``alloc_vmap_area addr size ... failed`` (``alloc_vmap_area()``, after
  ``node_alloc()`` or ``__alloc_vmap_area()`` found the range, before
  ``insert_vmap_area()`` puts it in the busy tree; the text prints ``addr`` as
  ``va_start: %lu``): unless ``failed``, ``[addr, addr + size)`` is busy.  Every kind of
  area comes through here: vmalloc, vmap, ioremap, vm_map_ram and vmap blocks.
- ``free_vmap_area_noflush va_start`` (``free_vmap_area_noflush()``, after
  ``insert_vmap_area()`` on the lazy list; the area left the busy tree before, in
  ``remove_vm_area()`` or ``free_vmap_block()``): the busy area at ``va_start`` is
  lazily freed.
- ``purge_vmap_area_lazy start end npurged`` (``__purge_vmap_area_lazy()``, after the
  purge): every node's lazy list was taken whole (``list_replace_init()``) and its areas
  returned to the free tree or a node's pool; ``[start, end)`` spans them all (the lists
  are sorted by address) and ``npurged`` counts them.  The model frees every lazy area
  inside ``[start, end)`` and checks the count.

Paths without these events make the prediction diverge: ``pcpu_get_vm_areas()`` (a new
percpu chunk) inserts busy areas with no ``alloc_vmap_area``; ``free_vmap_area()``
(``alloc_vmap_area()``'s and ``new_vmap_block()``'s error paths) frees one with no event;
an allocation, free or purge in progress at the freeze (each event comes after or before
its list update, as said above).  :meth:`VmallocModel.apply` records an event the model
cannot apply as the kernel did, and :func:`compare_vmalloc` explains each area that differs
at the end, with its caller from the dumps' ``vm_struct`` (the events carry none).
"""

from __future__ import annotations

import bisect
import dataclasses

from ..mm import vmalloc as _vmalloc
from ..mm.context import KernelContext
from .buddy import Agreement, Divergence

__all__ = ("VmallocDivergence", "VmallocModel", "VmallocState", "compare_vmalloc",
           "has_vmalloc_events", "replay_vmalloc", "vmalloc_state")

EVENTS = frozenset({"alloc_vmap_area", "free_vmap_area_noflush", "purge_vmap_area_lazy"})


@dataclasses.dataclass(frozen=True)
class VmallocDivergence(Divergence):
    """A :class:`Divergence` about an area: ``pfn`` is its start address, ``size`` its
    bytes (``order`` is 0)."""

    size: int = 0


@dataclasses.dataclass
class VmallocState:
    """The vmalloc areas of a dump as the model takes them.

    :param busy: start -> end of every busy area.
    :param lazy: start -> end of every lazily freed area.
    :param callers: start -> what the area is (its vm_struct's caller as ``%pS``, or
        its kind: ``vm_map_ram``, ``vmap_block``, ...), for the explanations.
    """

    busy: dict[int, int]
    lazy: dict[int, int]
    callers: dict[int, str]


def has_vmalloc_events(ctx: KernelContext) -> bool:
    """Whether the kernel of CTX has the vmalloc tracepoints (its ``alloc_vmap_area``
    tracepoint, ``__tracepoint_alloc_vmap_area``)."""
    return ctx.t.has_symbol("__tracepoint_alloc_vmap_area")


def vmalloc_state(ctx: KernelContext) -> VmallocState:
    """The busy and lazy areas of CTX (:func:`memscope.mm.vmalloc.vmap_areas`).

    :raises TargetError: a list walk found a problem (an area would be missing), or a
        layout is missing."""
    from ..target.base import TargetError

    areas, problems = _vmalloc.vmap_areas(ctx)
    if problems:
        raise TargetError(f"vmalloc areas: {problems[0]}")
    busy, lazy, callers = {}, {}, {}
    for a in areas:
        (lazy if a.lazy else busy)[a.start] = a.end
        callers[a.start] = a.caller_name.split(" ")[0] if a.caller_name else a.kind
    return VmallocState(busy, lazy, callers)


class VmallocModel:
    """The busy and lazily freed vmalloc areas (see the module for each event's rule).

    :param busy: start -> end of each busy area of the earlier state (copied).
    :param lazy: start -> end of each lazily freed area (copied).
    """

    def __init__(self, busy: dict[int, int], lazy: dict[int, int]):
        self.busy = dict(busy)
        self.lazy = dict(lazy)
        self._starts = sorted([*self.busy, *self.lazy])  # every reserved area, by start
        self.divergences: list[VmallocDivergence] = []
        self.applied = 0

    def _end(self, start: int) -> int:
        return self.busy[start] if start in self.busy else self.lazy[start]

    def overlapping(self, start: int, end: int) -> list[int]:
        """Starts of the busy or lazy areas that overlap ``[start, end)``."""
        i = bisect.bisect_left(self._starts, start)
        out = []
        if i and self._end(self._starts[i - 1]) > start:
            out.append(self._starts[i - 1])
        while i < len(self._starts) and self._starts[i] < end:
            out.append(self._starts[i])
            i += 1
        return out

    def _drop(self, start: int) -> None:
        i = bisect.bisect_left(self._starts, start)
        del self._starts[i]

    def apply(self, name: str, f: dict) -> None:
        """Apply one event (its name and fields); events of other kinds are ignored."""
        if name not in EVENTS:
            return
        self.applied += 1
        if name == "alloc_vmap_area":
            addr, size = f.get("addr", f.get("va_start")), f.get("size")
            if f.get("failed"):
                return
            if not isinstance(addr, int) or not isinstance(size, int) or size <= 0:
                self.divergences.append(VmallocDivergence(
                    "garbled", -1, 0, name, f"an alloc_vmap_area without a usable address "
                    f"and size ({f})"))
                return
            for s in self.overlapping(addr, addr + size):
                state = "busy" if s in self.busy else "lazily freed"
                self.divergences.append(VmallocDivergence(
                    "alloc_overlap", addr, 0, name, f"the new area overlaps the {state} "
                    f"area {s:#x}-{self._end(s):#x} of the model: its free or purge had no "
                    "event in the window (free_vmap_area(), a lost event)", size))
                (self.busy if s in self.busy else self.lazy).pop(s)
                self._drop(s)
            self.busy[addr] = addr + size
            bisect.insort(self._starts, addr)
        elif name == "free_vmap_area_noflush":
            start = f.get("va_start")
            if start in self.busy:
                self.lazy[start] = self.busy.pop(start)
            else:
                self.divergences.append(VmallocDivergence(
                    "free_not_busy", start if isinstance(start, int) else -1, 0, name,
                    "lazily freed already in the model" if start in self.lazy else
                    "no busy area starts there in the model: its allocation had no event "
                    "(pcpu_get_vm_areas()) or was lost"))
        else:  # purge_vmap_area_lazy
            lo, hi = f.get("start"), f.get("end")
            n = f.get("npurged", f.get("num_purged"))
            if not isinstance(lo, int) or not isinstance(hi, int):
                return
            gone = [s for s, e in self.lazy.items() if lo <= s and e <= hi]
            for s in gone:
                del self.lazy[s]
                self._drop(s)
            if isinstance(n, int) and n != len(gone):
                self.divergences.append(VmallocDivergence(
                    "purge_count", lo, 0, name,
                    f"the kernel purged {n} lazily freed areas in {lo:#x}-{hi:#x}, the model "
                    f"had {len(gone)} there: a free_vmap_area_noflush recorded on the other "
                    "side of the purge (its event follows its list update), or a lost "
                    "event", max(hi - lo, 0)))

    def apply_all(self, events) -> None:
        """Apply EVENTS (:class:`memscope.events.Event` s) in order."""
        for e in events:
            if e.name in EVENTS:
                self.apply(e.name, e.fields)


def _what(start: int, end: int, callers: dict[int, str]) -> str:
    return f"area {start:#x}-{end:#x} ({callers.get(start) or 'no caller in either dump'})"


def compare_vmalloc(model: VmallocModel, later: VmallocState,
                    callers: dict[int, str] | None = None) -> Agreement:
    """The model's busy and lazy areas against a later state's: an area matches when its
    start, end and state (busy or lazy) are the same; ``missing``: areas of the later
    state the model does not have so; ``extra``: the reverse.  CALLERS (start -> caller,
    the earlier state's) name the areas the later state no longer has."""
    names = {**(callers or {}), **later.callers}
    divs: list[Divergence] = list(model.divergences)
    pb, pl = set(model.busy.items()), set(model.lazy.items())
    rb, rl = set(later.busy.items()), set(later.lazy.items())
    for s, e in sorted(rb - pb):
        what = _what(s, e, names)
        if names.get(s, "").startswith("pcpu_get_vm_areas"):
            cause = (f"busy {what} in the later state: a percpu chunk's area, which "
                     "pcpu_get_vm_areas() takes from the free tree and inserts with no "
                     "alloc_vmap_area event")
        elif (s, e) in pl:
            cause = (f"busy {what} in the later state, lazily freed in the model: its "
                     "allocation event was lost")
        else:
            cause = (f"busy {what} in the later state with no alloc_vmap_area in the "
                     "window: a lost event, or an area allocated by a path with no event")
        divs.append(VmallocDivergence("missing", s, 0, "", cause, e - s))
    for s, e in sorted(rl - pl):
        what = _what(s, e, names)
        cause = (f"lazily freed {what} in the later state, busy in the model: a free in "
                 "progress at the freeze (free_vmap_area_noflush() puts the area on the "
                 "lazy list before it emits its event)" if (s, e) in pb else
                 f"lazily freed {what} in the later state, not in the model: a lost event")
        divs.append(VmallocDivergence("missing", s, 0, "", cause, e - s))
    for s, e in sorted(pb - rb):
        what = _what(s, e, names)
        if (s, e) in rl:
            continue  # explained once, as the later state's lazily freed area above
        cause = (f"busy {what} in the model, neither busy nor lazily freed in the later "
                 "state: an allocation in progress at the freeze (alloc_vmap_area emits "
                 "its event before insert_vmap_area()), a free in progress (remove_vm_area() "
                 "unlinks the area before free_vmap_area_noflush()), a free by "
                 "free_vmap_area() (error paths, no event), or a lost event")
        divs.append(VmallocDivergence("extra", s, 0, "", cause, e - s))
    for s, e in sorted(pl - rl):
        what = _what(s, e, names)
        cause = (f"lazily freed {what} in the model, purged in the later state: a purge "
                 "in progress at the freeze (__purge_vmap_area_lazy() takes the lazy lists "
                 "before it emits purge_vmap_area_lazy), or a lost event")
        divs.append(VmallocDivergence("extra", s, 0, "", cause, e - s))
    return Agreement("vmalloc", len(pb & rb) + len(pl & rl), len(rb - pb) + len(rl - pl),
                     len(pb - rb) + len(pl - rl), divs)


def replay_vmalloc(a: KernelContext, b: KernelContext,
                   events: list) -> tuple[Agreement, int] | None:
    """The vmalloc model from A's areas through EVENTS, compared with B's; None when the
    kernel has no vmalloc tracepoints (:func:`has_vmalloc_events`).

    :raises TargetError: a layout is missing or a list walk found a problem."""
    if not has_vmalloc_events(a):
        return None
    sa = vmalloc_state(a)
    model = VmallocModel(sa.busy, sa.lazy)
    model.apply_all(events)
    return compare_vmalloc(model, vmalloc_state(b), sa.callers), model.applied
