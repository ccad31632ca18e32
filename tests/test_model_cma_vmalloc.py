"""Property tests of the CMA and vmalloc models (memscope.model.cma, memscope.model.vmalloc)
with hypothesis: random allocation, release, free and purge sequences, as the kernel's
tracepoints report them, keep the invariants (no two allocations overlap, counts
consistent), and the models always agree with a straightforward simulation of the same
sequence that knows nothing of bitmaps or lists:

- CMA: a set of taken pages.  An allocation takes the first free, aligned run of whole
  bits (``bitmap_find_next_zero_area_off()``'s answer, found page by page), a release
  gives its pages back, a failed allocation or a busy retry changes nothing.
- vmalloc: a dict of areas, each "busy" or "lazy".  An allocation takes the lowest free
  run of pages, a free makes a busy area lazy, a purge drops every lazy area.

Then the models are given what the kernel makes them see when it races with the freeze or
loses events, and each must name the divergence, never absorb it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memscope.model.cma import CmaModel, CmaRangeState, compare_cma
from memscope.model.vmalloc import VmallocModel, VmallocState, compare_vmalloc

# ---------------------------------------------------------------------------- CMA

BASE = 0x10000 + 3  # a base pfn not aligned to the larger align orders
BITS = 64


def cma_range(opb: int, taken: np.ndarray | None = None) -> CmaRangeState:
    bm = np.zeros(BITS, bool) if taken is None else taken.copy()
    return CmaRangeState("reserved", BASE, BITS << opb, opb, bm)


def simulate_alloc(taken: set[int], opb: int, count: int, align: int) -> int | None:
    """The first pfn of a free run for COUNT pages (whole bits) at a bit whose pfn
    cma_range_alloc() accepts for ALIGN (``(bit + offset) & mask == 0``, its
    cma_bitmap_aligned_mask() and _offset()), the pages tested one by one; None when
    there is none."""
    step = 1 << opb
    nbits = -(-count // step)
    mask = (1 << (align - opb)) - 1 if align > opb else 0
    offset = (BASE & ((1 << align) - 1)) >> opb
    for i in range(0, BITS - nbits + 1):
        pfn = BASE + i * step
        if (i + offset) & mask == 0 and \
                not any(p in taken for p in range(pfn, pfn + nbits * step)):
            return pfn
    return None


cma_ops = st.lists(st.one_of(
    st.tuples(st.just("alloc"), st.integers(1, 9), st.integers(0, 4)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("retry"), st.integers(1, 9), st.integers(0, 4))), max_size=40)


@settings(max_examples=200, deadline=None)
@given(opb=st.integers(0, 2), ops=cma_ops)
def test_cma_model_agrees_with_a_set_of_taken_pages(opb, ops):
    m = CmaModel([cma_range(opb)])
    taken: set[int] = set()
    live: list[tuple[int, int]] = []  # (pfn, count) allocated
    step = 1 << opb
    for op, n, align in ops:
        if op == "alloc":
            pfn = simulate_alloc(taken, opb, n, align)
            m.apply("cma_alloc_start", {"name": "reserved", "request_count": n, "align": align})
            if pfn is None:
                m.apply("cma_alloc_finish", {"name": "reserved", "pfn": 0, "page": 0,
                                             "count": n, "align": align, "errorno": -12})
                continue
            m.apply("cma_alloc_finish", {"name": "reserved", "pfn": pfn, "page": 0xffffea00,
                                         "count": n, "align": align, "errorno": 0})
            taken.update(range(pfn, pfn + -(-n // step) * step))
            live.append((pfn, n))
        elif op == "release" and live:
            pfn, count = live.pop(n % len(live))
            m.apply("cma_release", {"name": "reserved", "pfn": pfn, "page": 0xffffea00,
                                    "count": count})
            taken.difference_update(range(pfn, pfn + -(-count // step) * step))
        elif op == "retry":
            # a busy retry of a run that was free: set and cleared again before the event
            pfn = simulate_alloc(taken, opb, n, align)
            m.apply("cma_alloc_start", {"name": "reserved", "request_count": n, "align": align})
            if pfn is not None:
                m.apply("cma_alloc_busy_retry", {"name": "reserved", "pfn": pfn,
                                                 "page": 0xffffea00, "count": n, "align": align})
            m.apply("cma_alloc_finish", {"name": "reserved", "pfn": 0, "page": 0, "count": n,
                                         "align": align, "errorno": -16})
        r = m.ranges[0]
        # invariants: the bitmap is the simulation's pages, bit by bit; the taken bits are
        # the live allocations' bits, which never overlap; nothing diverged
        want = np.array([BASE + (i << opb) in taken for i in range(BITS)])
        assert (r.bitmap == want).all()
        assert int(r.bitmap.sum()) == sum(-(-c // step) for _, c in live)
        assert m.divergences == []
    assert sum(m.in_progress.values()) == 0
    later = cma_range(opb, m.ranges[0].bitmap)
    g = compare_cma(m, [later])
    assert (g.matched, g.missing, g.extra, g.divergences) == (len(live) and g.matched, 0, 0, [])
    assert g.matched == int(later.bitmap.sum())


def test_cma_model_names_each_divergence():
    taken = np.zeros(BITS, bool)
    taken[4:8] = True  # an allocation made before the window (BASE+4 .. BASE+7)
    m = CmaModel([cma_range(0, taken)])
    # a release of pages the model has free: its allocation had no event
    m.apply("cma_release", {"name": "reserved", "pfn": BASE + 20, "page": 1, "count": 2})
    # a finish whose start came before the window, of bits set in the earlier state: fine
    m.apply("cma_alloc_finish", {"name": "reserved", "pfn": BASE + 4, "page": 1, "count": 4,
                                 "align": 0, "errorno": 0})
    # a finish started in the window on taken bits: its release was not seen
    m.apply("cma_alloc_start", {"name": "reserved", "request_count": 2, "align": 0})
    m.apply("cma_alloc_finish", {"name": "reserved", "pfn": BASE + 6, "page": 1, "count": 2,
                                 "align": 0, "errorno": 0})
    # outside every range
    m.apply("cma_release", {"name": "reserved", "pfn": 5, "page": 1, "count": 1})
    assert [d.kind for d in m.divergences] == ["release_free", "alloc_taken", "outside"]
    assert [d.pfn for d in m.divergences] == [BASE + 20, BASE + 6, 5]
    # the later state: an allocation in progress (bits 30-31), 6-7 released without event
    m.apply("cma_alloc_start", {"name": "reserved", "request_count": 2, "align": 0})
    later = np.zeros(BITS, bool)
    later[4:6] = later[30:32] = True
    g = compare_cma(m, [cma_range(0, later)])
    assert (g.matched, g.missing, g.extra) == (2, 2, 2)
    runs = [(d.kind, d.pfn, d.count) for d in g.divergences[3:]]
    assert runs == [("missing", BASE + 30, 2), ("extra", BASE + 6, 2)]
    assert "in progress at the freeze (1 cma_alloc_start" in g.divergences[3].cause
    assert "__cma_release_frozen()" in g.divergences[4].cause


def test_cma_events_of_5_10_and_failed_allocations():
    """5.10's cma_alloc carries no name and no errorno: NULL page is the failure; 6.1's
    cma_alloc_finish of a failure has pfn -1."""
    m = CmaModel([cma_range(1)])
    m.apply("cma_alloc", {"pfn": BASE + 2, "page": 1, "count": 3, "align": 0})
    m.apply("cma_alloc", {"pfn": 0xffffffffffffffff, "page": 0, "count": 3, "align": 0})
    m.apply("cma_alloc_finish", {"name": "x", "pfn": 0xffffffffffffffff, "page": 0,
                                 "count": 1, "align": 0})
    assert m.divergences == []
    assert m.ranges[0].bitmap[1:3].all() and int(m.ranges[0].bitmap.sum()) == 2  # 4 pages
    m.apply("cma_release", {"pfn": BASE + 2, "page": 1, "count": 3})
    assert not m.ranges[0].bitmap.any() and m.applied == 4


# ------------------------------------------------------------------------ vmalloc

PAGE = 4096
VSTART = 0xffffc90000000000
VPAGES = 128

vm_ops = st.lists(st.one_of(
    st.tuples(st.just("alloc"), st.integers(1, 12)),
    st.tuples(st.just("free"), st.integers(0, 50)),
    st.tuples(st.just("purge"), st.just(0))), max_size=50)


def lowest_fit(areas: dict[int, tuple[int, str]], pages: int) -> int | None:
    used = set()
    for s, (e, _) in areas.items():
        used.update(range((s - VSTART) // PAGE, (e - VSTART) // PAGE))
    for first in range(0, VPAGES - pages + 1):
        if not used & set(range(first, first + pages)):
            return VSTART + first * PAGE
    return None


@settings(max_examples=200, deadline=None)
@given(ops=vm_ops)
def test_vmalloc_model_agrees_with_a_dict_of_areas(ops):
    m = VmallocModel({}, {})
    sim: dict[int, tuple[int, str]] = {}  # start -> (end, "busy" | "lazy")
    for op, n in ops:
        if op == "alloc":
            addr = lowest_fit(sim, n + 1)  # with its guard page
            size = (n + 1) * PAGE
            m.apply("alloc_vmap_area", {"addr": addr or 0, "size": size, "align": PAGE,
                                        "vstart": VSTART, "vend": VSTART + VPAGES * PAGE,
                                        "failed": int(addr is None)})
            if addr is not None:
                sim[addr] = (addr + size, "busy")
        elif op == "free":
            busy = sorted(s for s, (_, k) in sim.items() if k == "busy")
            if busy:
                s = busy[n % len(busy)]
                sim[s] = (sim[s][0], "lazy")
                m.apply("free_vmap_area_noflush", {"va_start": s, "nr_lazy": 0,
                                                   "nr_lazy_max": 0})
        else:
            lazy = {s: e for s, (e, k) in sim.items() if k == "lazy"}
            lo = min(lazy, default=2**64 - 1)
            hi = max(lazy.values(), default=0)
            m.apply("purge_vmap_area_lazy", {"start": lo, "end": hi, "npurged": len(lazy)})
            for s in lazy:
                del sim[s]
        assert m.busy == {s: e for s, (e, k) in sim.items() if k == "busy"}
        assert m.lazy == {s: e for s, (e, k) in sim.items() if k == "lazy"}
        spans = sorted([*m.busy.items(), *m.lazy.items()])
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:])), "overlap"
        assert m.divergences == []
    later = VmallocState(dict(m.busy), dict(m.lazy), {})
    g = compare_vmalloc(m, later)
    assert (g.matched, g.missing, g.extra, g.divergences) == (len(sim), 0, 0, [])


def test_vmalloc_model_names_each_divergence():
    a0, a1, a2 = VSTART, VSTART + 4 * PAGE, VSTART + 8 * PAGE
    m = VmallocModel({a0: a0 + 2 * PAGE, a1: a1 + 2 * PAGE}, {a2: a2 + 2 * PAGE})
    m.apply("free_vmap_area_noflush", {"va_start": VSTART + 40 * PAGE})  # never allocated
    m.apply("alloc_vmap_area", {"addr": a0 + PAGE, "size": PAGE, "failed": 0})  # on a0
    # the text's name of the address (va_start: %lu) and of the count (num_purged)
    m.apply("alloc_vmap_area", {"va_start": VSTART + 20 * PAGE, "size": PAGE, "failed": 0})
    m.apply("purge_vmap_area_lazy", {"start": a2, "end": a2 + 2 * PAGE, "num_purged": 3})
    assert [d.kind for d in m.divergences] == ["free_not_busy", "alloc_overlap",
                                               "purge_count"]
    assert VSTART + 20 * PAGE in m.busy and a0 not in m.busy and not m.lazy
    # later: a1 lazily freed with no event yet (a free in progress), a percpu area the
    # model never saw, the area at VSTART + 20 pages gone (an allocation in progress)
    b = VmallocState({a0 + PAGE: a0 + 2 * PAGE, VSTART + 60 * PAGE: VSTART + 70 * PAGE},
                     {a1: a1 + 2 * PAGE},
                     {VSTART + 60 * PAGE: "pcpu_get_vm_areas+0x1a/0x300"})
    g = compare_vmalloc(m, b)
    assert (g.matched, g.missing, g.extra) == (1, 2, 2)
    found = {(d.kind, d.pfn): d.cause for d in g.divergences[3:]}
    assert set(found) == {("missing", VSTART + 60 * PAGE), ("missing", a1),
                          ("extra", VSTART + 20 * PAGE)}
    assert "pcpu_get_vm_areas() takes" in found[("missing", VSTART + 60 * PAGE)]
    assert "a free in progress at the freeze" in found[("missing", a1)]
    assert "allocation in progress" in found[("extra", VSTART + 20 * PAGE)]


def test_garbled_events_are_divergences_never_tracebacks():
    """Fields a garbled text trace may give (strings, missing keys, negative counts)."""
    m = CmaModel([cma_range(0)])
    for f in ({}, {"pfn": "zz", "count": 2, "page": 1}, {"pfn": BASE, "count": -1, "page": 1},
              {"pfn": BASE, "page": 1}):
        m.apply("cma_release", f)
        m.apply("cma_alloc_finish", {**f, "errorno": 0})
    assert {d.kind for d in m.divergences} == {"garbled"} and not m.ranges[0].bitmap.any()
    v = VmallocModel({}, {})
    v.apply("alloc_vmap_area", {"addr": "x", "size": 4096, "failed": 0})
    v.apply("alloc_vmap_area", {"addr": VSTART, "failed": 0})
    v.apply("free_vmap_area_noflush", {"va_start": "x"})
    v.apply("purge_vmap_area_lazy", {"start": None, "end": 3})
    assert [d.kind for d in v.divergences] == ["garbled", "garbled", "free_not_busy"]
    assert v.busy == v.lazy == {}
