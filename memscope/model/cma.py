"""A reference model of the Contiguous Memory Allocator's bitmaps, driven by the cma
tracepoints: a readable, executable specification of mm/cma.c (7.2's,
``linux-source-7.2``; the event names and fields of 5.10, 6.1 and 6.12 are read too).

State (:class:`CmaModel`): every activated CMA area's ranges, each with its bitmap as
:func:`memscope.mm.cma.cma_areas` decodes it (bit N set: the ``2^order_per_bit`` pages
from ``base_pfn + (N << order_per_bit)`` are taken).

Events (:meth:`CmaModel.apply`), each mirroring the code that emits it:

- ``cma_alloc_start`` (6.1+; ``__cma_alloc_frozen()``, 7.2, before it looks at any
  range): nothing changes yet; the model counts the allocation as in progress.
- ``cma_alloc_busy_retry pfn count`` (6.1+): ``cma_range_alloc()`` set the bits of
  ``[pfn, pfn + count)`` (``bitmap_set()``), ``alloc_contig_frozen_range()`` failed with
  -EBUSY and ``cma_clear_bitmap()`` cleared them again before the event: no change (an
  attempt that began before the window and whose bits the earlier state shows set is
  cleared here).
- ``cma_alloc_finish pfn page count errorno`` (6.1+; ``errorno`` since 6.7) and 5.10's
  ``cma_alloc pfn page count``: when ``page`` is not NULL (and ``errorno`` is 0), the
  bits of ``[pfn, pfn + count)`` are taken: ``bitmap_no = (pfn - base_pfn) >>
  order_per_bit``, ``cma_bitmap_pages_to_bits(count) = ALIGN(count, 1 << order_per_bit)
  >> order_per_bit`` bits.  They were set by ``cma_range_alloc()`` before the range was
  migrated, so a ``cma_alloc_finish`` whose ``cma_alloc_start`` came before the window
  finds them set in the earlier state already: that is no divergence.  (5.10 has no
  start event: its ``cma_alloc`` of bits all taken already is taken to be such an
  allocation, in progress at the earlier freeze.)
- ``cma_release pfn count`` (``__cma_release_frozen()``, after ``cma_clear_bitmap()``):
  the same bits are clear again.

The area of an event is the one whose range holds its pfn (5.10's events carry no name).
What no event tells makes the prediction diverge: an allocation or a release in progress
at the freeze (``cma_range_alloc()`` sets the bits before ``cma_alloc_finish``;
``__cma_release_frozen()`` clears them before ``cma_release``), lost events, a bitmap
changed before activation (``cma_reserve_pages_on_error()``).  :meth:`CmaModel.apply`
records an event the model cannot apply as the kernel did (a :class:`CmaDivergence`) and
:func:`compare_cma` explains each run of bits that differs at the end.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..mm import cma as _cma
from ..mm.context import KernelContext
from .buddy import Agreement, Divergence

__all__ = ("CmaDivergence", "CmaModel", "CmaRangeState", "cma_state", "compare_cma",
           "contig_pageblocks", "explain_contig", "replay_cma")

#: The events that take bits (5.10's ``cma_alloc``; ``cma_alloc_finish`` since 6.1, when
#: the allocation was split into start, busy-retry and finish events).
ALLOC_EVENTS = frozenset({"cma_alloc", "cma_alloc_finish"})
EVENTS = ALLOC_EVENTS | {"cma_alloc_start", "cma_alloc_busy_retry", "cma_release"}


@dataclasses.dataclass(frozen=True)
class CmaDivergence(Divergence):
    """A :class:`Divergence` over a run of pages: ``pfn`` its first page, ``count`` its
    pages (``order`` is 0)."""

    count: int = 1


@dataclasses.dataclass
class CmaRangeState:
    """One range of a CMA area as the model holds it.

    :param area: the area's name (``cma->name``; "reserved" for ``cma=``'s).
    :param base_pfn: the range's first page frame number.
    :param count: its pages.
    :param order_per_bit: one bit stands for ``2^order_per_bit`` pages.
    :param bitmap: a bool numpy array of ``count >> order_per_bit`` entries, True = taken.
    """

    area: str
    base_pfn: int
    count: int
    order_per_bit: int
    bitmap: np.ndarray

    @property
    def end_pfn(self) -> int:
        return self.base_pfn + self.count


def cma_state(ctx: KernelContext) -> list[CmaRangeState]:
    """Every activated range of every CMA area of CTX with a copy of its bitmap
    (:func:`memscope.mm.cma.cma_areas`; none without CONFIG_CMA or without an area)."""
    out = []
    for a in _cma.cma_areas(ctx) or []:
        for r in a.ranges:
            if r.bitmap is not None:
                out.append(CmaRangeState(a.name, r.base_pfn, r.count, a.order_per_bit,
                                         r.bitmap.copy()))
    return out


class CmaModel:
    """The CMA bitmaps (see the module for the rules each event follows).

    :param ranges: the ranges and bitmaps of the earlier state (copied).
    """

    def __init__(self, ranges: list[CmaRangeState]):
        self.ranges = [dataclasses.replace(r, bitmap=r.bitmap.copy()) for r in ranges]
        #: allocations started in the window (``cma_alloc_start``) and not finished, by
        #: area name ("" when the events carry none)
        self.in_progress: dict[str, int] = {}
        self.divergences: list[CmaDivergence] = []
        self.applied = 0

    def _find(self, pfn: int) -> CmaRangeState | None:
        for r in self.ranges:
            if r.base_pfn <= pfn < r.end_pfn:
                return r
        return None

    def _bits(self, r: CmaRangeState, pfn: int, count: int) -> slice:
        """``cma_clear_bitmap()``'s ``bitmap_no`` and ``cma_bitmap_pages_to_bits()``."""
        first = (pfn - r.base_pfn) >> r.order_per_bit
        step = 1 << r.order_per_bit
        n = ((count + step - 1) & ~(step - 1)) >> r.order_per_bit
        return slice(first, min(first + n, len(r.bitmap)))

    def _range_of(self, name: str, f: dict) -> tuple[CmaRangeState, slice] | None:
        pfn, count = f.get("pfn"), f.get("count")
        if not isinstance(pfn, int) or not isinstance(count, int) or count <= 0:
            self.divergences.append(CmaDivergence(
                "garbled", pfn if isinstance(pfn, int) else -1, 0, name,
                f"a {name} event without a usable pfn and count ({f})", 0))
            return None
        r = self._find(pfn)
        if r is None:
            self.divergences.append(CmaDivergence(
                "outside", pfn, 0, name, f"{name} of {count} pages at pfn {pfn:#x}, which "
                "is in no activated CMA range of the earlier state", count))
            return None
        if pfn + count > r.end_pfn:
            self.divergences.append(CmaDivergence(
                "outside", pfn, 0, name, f"{name} of {count} pages at pfn {pfn:#x} runs "
                f"past the end of area {r.area!r} (pfn {r.end_pfn:#x})", count))
        return r, self._bits(r, pfn, count)

    def apply(self, name: str, f: dict) -> None:
        """Apply one event (its name and fields); events of no CMA kind are ignored."""
        if name not in EVENTS:
            return
        self.applied += 1
        area = f.get("name") if isinstance(f.get("name"), str) else ""
        if name == "cma_alloc_start":
            self.in_progress[area] = self.in_progress.get(area, 0) + 1
            return
        if name == "cma_alloc_busy_retry":
            if self.in_progress.get(area, 0) == 0:  # began before the window
                got = self._range_of(name, f)
                if got is not None and got[0].bitmap[got[1]].all():
                    got[0].bitmap[got[1]] = False
            return
        if name in ALLOC_EVENTS:
            began_before = self.in_progress.get(area, 0) == 0
            if not began_before:
                self.in_progress[area] -= 1
            page, err = f.get("page", 1), f.get("errorno", 0)
            if not page or err:  # failed: cma_range_alloc() cleared what it set
                return
            got = self._range_of(name, f)
            if got is None:
                return
            r, bits = got
            taken = r.bitmap[bits]
            if taken.any() and not (began_before and taken.all()):
                self.divergences.append(CmaDivergence(
                    "alloc_taken", f["pfn"], 0, name,
                    f"{int(taken.sum()) << r.order_per_bit} of the {f['count']} pages are "
                    f"taken in the model already (area {r.area!r}): their release had no "
                    "event in the window (lost, or a release in progress at the earlier "
                    "freeze)", f["count"]))
            r.bitmap[bits] = True
            return
        # cma_release
        got = self._range_of(name, f)
        if got is None:
            return
        r, bits = got
        free = ~r.bitmap[bits]
        if free.any():
            self.divergences.append(CmaDivergence(
                "release_free", f["pfn"], 0, name,
                f"{int(free.sum()) << r.order_per_bit} of the {f['count']} pages are free "
                f"in the model already (area {r.area!r}): their allocation had no event "
                "in the window (lost)", f["count"]))
        r.bitmap[bits] = False

    def apply_all(self, events) -> None:
        """Apply EVENTS (:class:`memscope.events.Event` s) in order."""
        for e in events:
            if e.name in EVENTS:
                self.apply(e.name, e.fields)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) of every run of True in MASK."""
    d = np.diff(np.concatenate(([0], mask.view(np.int8), [0])).astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def compare_cma(model: CmaModel, later: list[CmaRangeState]) -> Agreement:
    """The model's bitmaps against a later state's, bit by bit (``matched``: bits taken
    in both; ``missing``: taken in the later state only; ``extra``: taken in the model
    only), each run of differing bits a divergence with its most likely cause.

    :raises ValueError: the later state's ranges are not the model's (another boot, or
        an area activated in between: not a window of one boot)."""
    key = {(r.area, r.base_pfn, r.count, len(r.bitmap)) for r in later}
    if key != {(r.area, r.base_pfn, r.count, len(r.bitmap)) for r in model.ranges}:
        raise ValueError("the later dump's CMA areas are not the earlier dump's")
    real = {(r.area, r.base_pfn): r.bitmap for r in later}
    divs: list[Divergence] = list(model.divergences)
    matched = missing = extra = 0
    pending = sum(model.in_progress.values())
    for r in model.ranges:
        b = real[(r.area, r.base_pfn)]
        matched += int(np.count_nonzero(r.bitmap & b))
        step = 1 << r.order_per_bit
        for first, end in _runs(b & ~r.bitmap):
            missing += end - first
            cause = (f"taken in the later state's area {r.area!r}, free in the model: ")
            cause += (f"an allocation in progress at the freeze ({pending} cma_alloc_start "
                      "with no cma_alloc_finish yet: cma_range_alloc() sets the bits "
                      "before it migrates the range, and cma_alloc_finish comes after)"
                      if pending else
                      "no event took these pages: a lost event, or a cma_alloc_start "
                      "not yet emitted")
            divs.append(CmaDivergence("missing", r.base_pfn + first * step, 0, "", cause,
                                      (end - first) * step))
        for first, end in _runs(r.bitmap & ~b):
            extra += end - first
            divs.append(CmaDivergence(
                "extra", r.base_pfn + first * step, 0, "",
                f"free in the later state's area {r.area!r}, taken in the model: a "
                "release in progress at the freeze (__cma_release_frozen() clears the "
                "bits before it emits cma_release), a busy retry in progress "
                "(cma_range_alloc() clears them before cma_alloc_busy_retry), or a lost "
                "event", (end - first) * step))
    return Agreement("cma", matched, missing, extra, divs)


def replay_cma(a: KernelContext, b: KernelContext, events: list) -> tuple[Agreement, int] | None:
    """The CMA model from A's bitmaps through EVENTS, compared with B's; None when A has
    no activated CMA area (no CONFIG_CMA, or x86_64 without ``cma=``).

    :raises TargetError: a layout is missing or an area is unreadable."""
    ranges = cma_state(a)
    if not ranges:
        return None
    model = CmaModel(ranges)
    model.apply_all(events)
    try:
        return compare_cma(model, cma_state(b)), model.applied
    except ValueError as e:
        from ..target.base import TargetError

        raise TargetError(str(e)) from None


def contig_pageblocks(events, pageblock_order: int) -> list[tuple[int, int, str]]:
    """(first pfn, end pfn, event) of the pageblocks that each CMA allocation attempt of
    EVENTS isolated: a successful ``cma_alloc_finish`` (5.10: ``cma_alloc``) or a
    ``cma_alloc_busy_retry``, its ``[pfn, pfn + count)`` widened to whole pageblocks."""
    out = []
    for e in events:
        if e.name not in ALLOC_EVENTS and e.name != "cma_alloc_busy_retry":
            continue
        pfn, count = e.fields.get("pfn"), e.fields.get("count")
        if not e.fields.get("page", 1) or e.fields.get("errorno", 0) \
                or not isinstance(pfn, int) or not isinstance(count, int) or count <= 0:
            continue
        lo = pfn >> pageblock_order << pageblock_order
        hi = -(-(pfn + count) >> pageblock_order) << pageblock_order
        out.append((lo, hi, e.name))
    return out


def explain_contig(agreements: list[Agreement], events, pageblock_order: int) -> None:
    """Give the buddy and pcp divergences inside a pageblock that a CMA allocation of the
    window isolated (:func:`contig_pageblocks`) their cause: ``cma_range_alloc()`` ->
    ``alloc_contig_frozen_range()`` (mm/page_alloc.c) moves the pageblocks' free pages to
    MIGRATE_ISOLATE (``start_isolate_page_range()``), takes the range's free pages off
    the buddy lists with no ``mm_page_alloc`` (``isolate_freepages_range()``), frees what
    it took beyond the range, and moves the rest back (``undo_isolate_page_range()``,
    merging as it goes): none of this has an event, and frees into an isolated pageblock
    go straight to the buddy lists, not to a pcp list."""
    blocks = contig_pageblocks(events, pageblock_order)
    if not blocks:
        return
    for g in agreements:
        if g.allocator not in ("buddy", "pcp"):
            continue
        for i, d in enumerate(g.divergences):
            end = d.pfn + (1 << d.order)
            for lo, hi, name in blocks:
                if d.pfn < hi and lo < end:
                    g.divergences[i] = dataclasses.replace(d, cause=(
                        f"in pageblocks {lo:#x}-{hi:#x}, which a CMA allocation of the "
                        f"window ({name}) isolated: alloc_contig_frozen_range() takes free "
                        "pages off the buddy lists with no mm_page_alloc "
                        "(isolate_freepages_range()) and moves and merges free blocks "
                        "while it isolates and restores the pageblocks, with no event"))
                    break
