"""A reference model of the buddy allocator's free blocks and per-CPU lists, driven by the
kmem page tracepoints: a readable, executable specification of mm/page_alloc.c (6.12's,
``linux-source-6.12`` 6.12.117; the rules that differ on other kernels are parameters of
:class:`Rules`).

State (:class:`BuddyModel`):

- ``free``: every free block in the buddy lists, pfn -> (order, migratetype); the block is
  ``2^order`` pages from pfn, aligned (``free_area[order].free_list[mt]``);
- ``pcp``: every block on a per-CPU list, pfn -> (cpu, order);
- ``pageblock``: the migratetype of each pageblock (``get_pfnblock_migratetype()``),
  pageblock index -> migratetype;
- ``zones``: (first pfn, end pfn, name) of each zone: buddies merge only within a zone
  (``page_is_buddy()`` compares ``page_zone_id()``).

Events (:meth:`BuddyModel.apply`), each mirroring the code that emits it:

- ``mm_page_alloc_zone_locked pfn order migratetype``: emitted by
  ``__rmqueue_smallest()`` after ``page_del_and_expand()``: the free block that starts at
  pfn (of order >= order: ``get_page_from_free_area()`` takes a list's first block, whose
  head is the page handed out) leaves the free lists, and ``expand()`` puts back its upper
  halves, one of each order from ``current_order - 1`` down to ``order``
  (:meth:`BuddyModel.expand`).  The page then goes to this CPU's pcp list
  (``rmqueue_bulk()``) or straight to the caller (``rmqueue_buddy()``); the model puts it
  on the pcp list and the ``mm_page_alloc`` that follows takes it off, which ends the
  same either way.
- ``mm_page_alloc_extfrag``: 6.12's ``__rmqueue_steal()`` takes a block of the fallback
  migratetype with ``page_del_and_expand()`` and emits only this event (no
  ``zone_locked``); ``__rmqueue_claim()`` claims the pageblock
  (``try_to_steal_block()``: ``move_freepages_block()`` moves its free blocks to the
  new migratetype and sets the pageblock's) and allocates through
  ``__rmqueue_smallest()``, which emitted ``zone_locked`` for the same pfn just before.
  With ``change_ownership`` the pageblock and its free blocks take ``alloc_migratetype``.
- ``mm_page_alloc pfn``: the page leaves this CPU's pcp list if it is there (a pcp
  allocation, ``rmqueue_pcplist()``); the buddy lists do not change.
- ``mm_page_free pfn order`` (``free_pages_prepare()``, every free): a pcp order
  (``pcp_allowed_order()``: ``order <= PAGE_ALLOC_COSTLY_ORDER`` or the THP order) in a
  pageblock that is not MIGRATE_ISOLATE goes to this CPU's pcp list
  (``free_unref_page()`` -> ``free_unref_page_commit()``); anything else is freed to the
  buddy lists at once (``free_one_page()`` -> ``split_large_buddy()`` ->
  ``__free_one_page()`` with the pageblock's migratetype).
- ``mm_page_free_batched``: emitted by ``free_unref_folios()`` after the
  ``mm_page_free`` of ``free_pages_prepare()`` for the same folio: nothing more.
- ``mm_page_pcpu_drain pfn order migratetype``: ``free_pcppages_bulk()`` moves the block
  from a pcp list to the buddy lists: ``__free_one_page()`` (:meth:`BuddyModel.free_one`)
  merges it with its free buddy (``pfn ^ (1 << order)``, same order, same zone) while
  ``order < MAX_PAGE_ORDER``; at or above ``pageblock_order`` only if both migratetypes
  are mergeable (``migratetype_is_mergeable()``: below MIGRATE_PCPTYPES) or equal.

What no tracepoint tells (compaction's ``isolate_freepages`` and the migration it feeds,
page isolation, page reporting, a failed ``pcp_spin_trylock()`` sending a free straight to
the buddy lists, memory hotplug) makes the prediction diverge; :meth:`BuddyModel.apply`
returns a :class:`Divergence` when an event finds the model in a state the kernel could not
have been in (an allocation from a block the model does not have free), and
:func:`compare` explains each block that differs at the end.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Iterable

__all__ = ("BuddyModel", "Divergence", "Rules", "compare", "touched_pfns")


@dataclasses.dataclass(frozen=True)
class Rules:
    """What differs between kernels, as numbers the dump gives.

    :param max_order: the largest order (``MAX_PAGE_ORDER``; ``MAX_ORDER - 1`` before
        v6.4): ``len(zone.free_area) - 1``.
    :param pageblock_order: ``pageblock_order``.
    :param pcp_orders: the orders ``pcp_allowed_order()`` accepts (0..3 and the THP order
        on 6.x; order 0 alone on 5.10, whose ``free_unref_page()`` took order-0 pages
        only).
    :param pcptypes: ``MIGRATE_PCPTYPES`` (3).
    :param isolate: ``MIGRATE_ISOLATE``'s value, or None.
    :param steal_emits_zone_locked: False on 6.12+ (``__rmqueue_steal()`` emits only
        ``extfrag``); True where the fallback path re-runs ``__rmqueue_smallest()``.
    """

    max_order: int
    pageblock_order: int
    pcp_orders: frozenset[int]
    pcptypes: int = 3
    isolate: int | None = None
    steal_emits_zone_locked: bool = False


@dataclasses.dataclass(frozen=True)
class Divergence:
    """An event the model could not apply as the kernel did, or a block that differs
    from the later state, with its most likely cause.

    :param kind: ``alloc_not_free`` (an allocation from a block the model has not free),
        ``free_twice`` (a free of pages the model has free already), ``missing`` (a
        block free in the later state, not in the model), ``extra`` (the reverse).
    :param pfn: the block's first pfn.
    :param order: its order.
    :param event: the event's name, or "" for a block found by the comparison.
    :param cause: the explanation.
    """

    kind: str
    pfn: int
    order: int
    event: str
    cause: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class BuddyModel:
    """The buddy allocator's free blocks, pcp lists and pageblock migratetypes (see the
    module for the rules each event follows).

    :param rules: the kernel's :class:`Rules`.
    :param zones: (start pfn, end pfn, name) of each zone, in pfn order.
    :param free: pfn -> (order, migratetype) of each free block.
    :param pcp: pfn -> (cpu, order) of each block on a pcp list.
    :param pageblock: pageblock index (pfn >> pageblock_order) -> migratetype.
    """

    def __init__(self, rules: Rules, zones: list[tuple[int, int, str]],
                 free: dict[int, tuple[int, int]], pcp: dict[int, tuple[int, int]],
                 pageblock: dict[int, int]):
        self.rules = rules
        self.zones = sorted(zones)
        self._starts = [z[0] for z in self.zones]
        self.free = dict(free)
        self.pcp = dict(pcp)
        self.pageblock = dict(pageblock)
        self.divergences: list[Divergence] = []
        self.applied = 0
        self._last_locked: dict[int, int] = {}  # cpu -> pfn of its last zone_locked

    # --- helpers ----------------------------------------------------------------------
    def zone_of(self, pfn: int) -> int | None:
        """The index in ``zones`` of the zone that spans PFN, or None."""
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i >= 0 and pfn < self.zones[i][1]:
            return i
        return None

    def block_mt(self, pfn: int) -> int:
        """``get_pfnblock_migratetype()``: the migratetype of PFN's pageblock (0 when
        unknown)."""
        return self.pageblock.get(pfn >> self.rules.pageblock_order, 0)

    def free_block_containing(self, pfn: int) -> int | None:
        """The first pfn of the free block that contains PFN, or None."""
        for order in range(self.rules.max_order + 1):
            head = pfn & ~((1 << order) - 1)
            got = self.free.get(head)
            if got is not None and got[0] >= order and head + (1 << got[0]) > pfn:
                return head
        return None

    # --- the kernel's functions -------------------------------------------------------
    def expand(self, pfn: int, low: int, high: int, mt: int) -> None:
        """``expand(zone, page, low, high, migratetype)``: the block of order HIGH at PFN
        is split down to order LOW; each upper half (``page[size]``, orders HIGH-1 down
        to LOW) goes back to the free lists with MT, the lowest part is the caller's."""
        size = 1 << high
        while high > low:
            high -= 1
            size >>= 1
            self.free[pfn + size] = (high, mt)

    def del_and_expand(self, pfn: int, low: int, event: str, cpu: int) -> bool:
        """``page_del_and_expand()``: take the free block at PFN off its list and split
        it to order LOW.  A Divergence when the model has no free block of order >= LOW
        starting at PFN."""
        got = self.free.get(pfn)
        if got is None or got[0] < low:
            self._diverge("alloc_not_free", pfn, low, event,
                          "the model has no free block at this pfn: it was taken or "
                          "merged by a path without a tracepoint (compaction, isolation, "
                          "a free straight to the buddy lists) or an event was lost")
            return False
        high, mt = got
        del self.free[pfn]
        self.expand(pfn, low, high, mt)
        return True

    def free_one(self, pfn: int, order: int, mt: int, event: str) -> None:
        """``__free_one_page(page, pfn, zone, order, migratetype)``: merge the block with
        its free buddy (``__find_buddy_pfn()``: ``pfn ^ (1 << order)``, in the same zone,
        free with the same order) while ``order < MAX_PAGE_ORDER``; from
        ``pageblock_order`` up only when both migratetypes are mergeable or equal (the
        buddy's then takes MT: ``change_pageblock_range()``)."""
        r = self.rules
        if self.free_block_containing(pfn) is not None:
            self._diverge("free_twice", pfn, order, event,
                          "the model has these pages free already: an allocation of them "
                          "had no tracepoint, or an event was lost")
            return
        zone = self.zone_of(pfn)
        while order < r.max_order:
            buddy = pfn ^ (1 << order)
            got = self.free.get(buddy)
            if got is None or got[0] != order or self.zone_of(buddy) != zone:
                break
            buddy_mt = got[1]
            if order >= r.pageblock_order:
                buddy_mt = self.block_mt(buddy)
                if mt != buddy_mt and not (mt < r.pcptypes and buddy_mt < r.pcptypes):
                    break
            del self.free[buddy]
            if buddy_mt != mt and order >= r.pageblock_order:
                for pb in range(buddy >> r.pageblock_order,
                                (buddy + (1 << order)) >> r.pageblock_order):
                    self.pageblock[pb] = mt
            pfn &= buddy
            order += 1
        self.free[pfn] = (order, mt)

    def free_one_page(self, pfn: int, order: int, event: str) -> None:
        """``free_one_page()`` -> ``split_large_buddy()``: a block above
        ``pageblock_order`` is freed one pageblock at a time, each with its pageblock's
        migratetype."""
        step = min(order, self.rules.pageblock_order)
        for p in range(pfn, pfn + (1 << order), 1 << step):
            self.free_one(p, step, self.block_mt(p), event)

    def move_freepages_block(self, pfn: int, mt: int) -> None:
        """``move_freepages_block()`` and ``set_pageblock_migratetype()``: the pageblock
        of PFN and every free block in it take MT."""
        po = self.rules.pageblock_order
        pb = pfn >> po
        self.pageblock[pb] = mt
        start, end = pb << po, (pb + 1) << po
        for p in [p for p in self.free if start <= p < end]:
            self.free[p] = (self.free[p][0], mt)

    def _diverge(self, kind: str, pfn: int, order: int, event: str, cause: str) -> None:
        self.divergences.append(Divergence(kind, pfn, order, event, cause))

    # --- events -----------------------------------------------------------------------
    def apply(self, name: str, cpu: int, f: dict) -> None:
        """Apply one event (its name, CPU and fields, as :class:`memscope.events.Event`
        has them); other events are ignored."""
        if name == "mm_page_alloc_zone_locked":
            self.on_zone_locked(cpu, f["pfn"], f["order"])
        elif name == "mm_page_alloc_extfrag":
            self.on_extfrag(cpu, f["pfn"], f["alloc_order"], f.get("change_ownership"),
                            f["alloc_migratetype"] if f.get("change_ownership") else None)
        elif name == "mm_page_alloc":
            self.on_alloc(cpu, f["pfn"])
        elif name == "mm_page_free":
            self.on_free(cpu, f["pfn"], f["order"])
        elif name == "mm_page_pcpu_drain":
            self.on_pcpu_drain(f["pfn"], f["order"], f["migratetype"])
        else:
            return
        self.applied += 1

    # one method per event, the fields as arguments
    def on_zone_locked(self, cpu: int, pfn: int, order: int) -> None:
        """``mm_page_alloc_zone_locked``: ``rmqueue_bulk()`` (or ``rmqueue_buddy()``)
        took the block off the buddy lists; it goes to CPU's pcp list."""
        name = "mm_page_alloc_zone_locked"
        if self.del_and_expand(pfn, order, name, cpu):
            self.pcp[pfn] = (cpu, order)
        self._last_locked[cpu] = pfn

    def on_extfrag(self, cpu: int, pfn: int, alloc_order: int, change_ownership,
                   alloc_migratetype) -> None:
        """``mm_page_alloc_extfrag``: a fallback steal (see the module)."""
        claimed = self._last_locked.get(cpu) == pfn
        if not claimed and not self.rules.steal_emits_zone_locked:
            # __rmqueue_steal(): page_del_and_expand() with the fallback type
            if self.del_and_expand(pfn, alloc_order, "mm_page_alloc_extfrag", cpu):
                self.pcp[pfn] = (cpu, alloc_order)
        if change_ownership:
            self.move_freepages_block(pfn, alloc_migratetype)

    def on_alloc(self, cpu: int, pfn: int) -> None:
        """``mm_page_alloc``: the block leaves the pcp list it was on, if any."""
        self.pcp.pop(pfn, None)
        self._last_locked.pop(cpu, None)

    def on_free(self, cpu: int, pfn: int, order: int) -> None:
        """``mm_page_free``: to CPU's pcp list (``free_frozen_pages()``), or
        ``free_one_page()``."""
        r = self.rules
        if order in r.pcp_orders and self.block_mt(pfn) != r.isolate:
            self.pcp[pfn] = (cpu, order)
        else:
            self.free_one_page(pfn, order, "mm_page_free")

    def on_pcpu_drain(self, pfn: int, order: int, migratetype: int) -> None:
        """``mm_page_pcpu_drain``: ``free_pcppages_bulk()``."""
        # drain_all_pages() may drain another CPU's list from the caller's CPU
        # (drain_pages_zone(cpu, zone)): the block leaves whichever list holds it
        self.pcp.pop(pfn, None)
        self.free_one(pfn, order, migratetype, "mm_page_pcpu_drain")

    #: The events the model applies, with the fields each takes from its columns.
    _COLUMNS = {"mm_page_alloc_zone_locked": ("pfn", "order"),
                "mm_page_alloc_extfrag": ("pfn", "alloc_order", "change_ownership",
                                          "alloc_migratetype"),
                "mm_page_alloc": ("pfn",),
                "mm_page_free": ("pfn", "order"),
                "mm_page_pcpu_drain": ("pfn", "order", "migratetype")}

    def apply_all(self, events: Iterable) -> None:
        """Apply EVENTS (:class:`memscope.events.Event` s) in order.  From a
        :class:`memscope.events.RingEvents`, the model's events are taken from its
        columns (the others are never looked at), with the same outcome."""
        cols = _model_columns(events, self._COLUMNS, frozenset({"change_ownership"}))
        if cols is None:
            for e in events:
                self.apply(e.name, e.cpu, e.fields)
            return
        zone_locked, extfrag, alloc, free, drain = (self.on_zone_locked, self.on_extfrag,
                                                    self.on_alloc, self.on_free,
                                                    self.on_pcpu_drain)
        n = 0
        for k, cpu, a, b, c, d in zip(*cols):
            if k == 2:
                alloc(cpu, a)
            elif k == 3:
                free(cpu, a, b)
            elif k == 0:
                zone_locked(cpu, a, b)
            elif k == 4:
                drain(a, b, c)
            else:
                extfrag(cpu, a, b, c, d if c else None)
            n += 1
        self.applied += n


def touched_pfns(events) -> set[int]:
    """The pfns the events name: each event's ``pfn`` and the ``2^order`` pages from it
    (``order``, else ``alloc_order``; an order outside 0..31 counts as 0).  From a
    :class:`memscope.events.RingEvents` in bulk, else event by event."""
    import numpy as np

    from ..events import RingEvents

    out: set[int] = set()
    slow = events
    if isinstance(events, RingEvents):
        slow = []
        for i in events.ids():
            cols = events.columns(i)
            if cols is None:
                slow.extend(events[int(r)] for r in events.rows(i).tolist())
                continue
            pfn = cols.get("pfn")
            if pfn is None:
                continue
            order = cols.get("order", cols.get("alloc_order"))
            if isinstance(pfn, list) or isinstance(order, list):
                slow.extend(events[int(r)] for r in events.rows(i).tolist())
                continue
            pfn = pfn.astype(np.uint64) if pfn.dtype.kind == "u" else pfn.astype(np.int64)
            order = np.zeros(len(pfn), np.int64) if order is None else order.astype(np.int64)
            order = np.where((order >= 0) & (order < 32), order, 0)
            big = (pfn.astype(np.float64) + np.exp2(order) >= 2.0 ** 62) | \
                (pfn.astype(np.float64) < 0) | (order > 20)
            for p, o in zip(pfn[big].tolist(), order[big].tolist()):
                out.update(range(p, p + (1 << o)))
            p, o = pfn[~big].astype(np.int64), order[~big]
            n = np.left_shift(1, o)
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            out.update((np.repeat(p, n) + within).tolist())
    for e in slow:
        pfn = e.fields.get("pfn")
        if isinstance(pfn, int):
            order = e.fields.get("order", e.fields.get("alloc_order", 0))
            order = order if isinstance(order, int) and 0 <= order < 32 else 0
            out.update(range(pfn, pfn + (1 << order)))
    return out


def _model_columns(events, wanted: dict[str, tuple[str, ...]],
                   optional: frozenset[str] = frozenset()):
    """The events of EVENTS named in WANTED (name -> field names, at most four), in
    order, as six lists: the index of each event's name in WANTED, its cpu, and the four
    fields' values (None for an OPTIONAL field the event does not have, or past the
    name's fields); None when EVENTS is not a :class:`memscope.events.RingEvents`
    decodable in bulk or an event lacks a field that is not optional (the caller then
    applies Events one by one, as before)."""
    import numpy as np

    from ..events import RingEvents

    if not isinstance(events, RingEvents):
        return None
    names = list(wanted)
    pos, kind, vals = [], [], [[], [], [], []]
    for i, name in events.ids_named(*names).items():
        cols = events.columns(i)
        if cols is None:
            return None
        k = names.index(name)
        rows = events.rows(i)
        pos.append(rows)
        kind.append(np.full(len(rows), k, dtype=np.int64))
        for j in range(4):
            f = wanted[name][j] if j < len(wanted[name]) else None
            c = cols.get(f) if f else None
            if c is None and f and f not in optional:
                return None  # a field the model needs is not there: the slow path
            if c is None:
                v = np.full(len(rows), None, dtype=object)
            elif isinstance(c, list):
                v = np.array(c + [None], dtype=object)[:-1]
            elif hasattr(c, "codes"):  # StrColumn
                v = np.array(list(c.values) + [None], dtype=object)[:-1][c.codes]
            else:
                v = c.astype(object)  # Python ints, whatever the width and sign
            vals[j].append(v)
    if not pos:
        return [], [], [], [], [], []
    allpos = np.concatenate(pos)
    order = np.argsort(allpos, kind="stable")
    return (np.concatenate(kind)[order].tolist(),
            events.events.cpu[allpos[order]].tolist(),
            *(np.concatenate(v)[order].tolist() for v in vals))


@dataclasses.dataclass
class Agreement:
    """How a prediction compares with a later state (one allocator).

    :param allocator: ``buddy`` (free blocks) or ``pcp`` (per-CPU list blocks).
    :param matched: blocks in both.
    :param missing: blocks in the later state and not predicted.
    :param extra: blocks predicted and not in the later state.
    :param divergences: the model's divergences while applying, then each differing
        block with its cause.
    """

    allocator: str
    matched: int
    missing: int
    extra: int
    divergences: list[Divergence]

    def to_json(self) -> dict:
        return {"allocator": self.allocator, "matched": self.matched,
                "missing": self.missing, "extra": self.extra,
                "divergences": [d.to_json() for d in self.divergences]}


def compare(model: BuddyModel, free: dict[int, tuple[int, int]],
            pcp: dict[int, tuple[int, int]], touched: set[int]) -> list[Agreement]:
    """The model's free blocks and pcp blocks against a later state's (FREE and PCP as
    :class:`BuddyModel` takes them).  A block is the same when its pfn and order are
    (its migratetype is compared too: a different one is a divergence of kind
    ``migratetype``).  TOUCHED holds the pfns that events of the window named: a
    differing block none of whose pages an event named changed by a path without a
    tracepoint."""
    out = []
    pred = {p: o for p, (o, _) in model.free.items()}
    real = {p: o for p, (o, _) in free.items()}
    divs = list(model.divergences)
    both = pred.items() & real.items()
    for p, o in sorted(real.items() - pred.items()):
        divs.append(Divergence("missing", p, o, "", _cause(p, o, touched, model, True)))
    for p, o in sorted(pred.items() - real.items()):
        divs.append(Divergence("extra", p, o, "", _cause(p, o, touched, model, False)))
    for p, o in sorted(both):
        if model.free[p][1] != free[p][1]:
            divs.append(Divergence("migratetype", p, o, "",
                                   f"predicted migratetype {model.free[p][1]}, found "
                                   f"{free[p][1]}: a pageblock changed type without a "
                                   "tracepoint (compaction, isolation, or a claim the "
                                   "events do not show)"))
    out.append(Agreement("buddy", len(both), len(real.items() - pred.items()),
                         len(pred.items() - real.items()), divs))
    pb = model.pcp.items() & pcp.items()
    pdivs = []
    for p, (cpu, o) in sorted(pcp.items() - model.pcp.items()):
        pdivs.append(Divergence("missing", p, o, "", f"on CPU {cpu}'s pcp list, not "
                                "predicted: " + _cause(p, o, touched, model, True)))
    for p, (cpu, o) in sorted(model.pcp.items() - pcp.items()):
        pdivs.append(Divergence("extra", p, o, "", f"predicted on CPU {cpu}'s pcp list: "
                                + _cause(p, o, touched, model, False)))
    out.append(Agreement("pcp", len(pb), len(pcp.items() - model.pcp.items()),
                         len(model.pcp.items() - pcp.items()), pdivs))
    return out


def _cause(pfn: int, order: int, touched: set[int], model: BuddyModel,
           missing: bool) -> str:
    named = any(p in touched for p in range(pfn, pfn + (1 << order)))
    if not named:
        return ("no event of the window names these pages: they changed by a path "
                "without a tracepoint (compaction's isolate_freepages, page isolation, "
                "page reporting) or in events lost before the window")
    if missing:
        return ("events named these pages; the kernel then put them back by a path the "
                "events do not show (a failed pcp trylock freeing straight to the buddy "
                "lists, a merge the model did not make)")
    return ("events named these pages; the kernel then took them by a path the events do "
            "not show (compaction, isolation), or merged them differently")
