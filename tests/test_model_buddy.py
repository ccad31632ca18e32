"""Property tests of the buddy model (memscope.model.buddy) with hypothesis: random
allocation and free sequences, as the kernel's tracepoints would report them, keep the
buddy invariants, and the model's free blocks always equal a straightforward simulation
of the same sequence (a set of free pages, decomposed into maximal aligned blocks).

Why that simulation is the answer key: the buddy allocator never leaves two free buddies
of one order unmerged (``__free_one_page()`` merges at every free, ``expand()`` leaves
only halves whose buddy is allocated), and a set of free pages has exactly one
decomposition into aligned blocks with no such pair: the greedy one, largest aligned
block first.  The simulation knows nothing of expand() or merging."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memscope.model.buddy import BuddyModel, Rules

MAX_ORDER = 5
ZONE_PAGES = 1 << 8  # a zone of 8 max-order blocks


def rules(pageblock_order: int = MAX_ORDER) -> Rules:
    """No pcp order: every free goes straight to the buddy lists (free_one_page())."""
    return Rules(max_order=MAX_ORDER, pageblock_order=pageblock_order,
                 pcp_orders=frozenset())


def fresh(r: Rules) -> BuddyModel:
    free = {pfn: (MAX_ORDER, 1) for pfn in range(0, ZONE_PAGES, 1 << MAX_ORDER)}
    pageblock = {pb: 1 for pb in range(ZONE_PAGES >> r.pageblock_order)}
    return BuddyModel(r, [(0, ZONE_PAGES, "zone")], free, {}, pageblock)


def canonical(free_pages: set[int]) -> dict[int, int]:
    """The free pages as maximal aligned blocks (pfn -> order), largest first."""
    out: dict[int, int] = {}
    left = set(free_pages)
    for order in range(MAX_ORDER, -1, -1):
        size = 1 << order
        for pfn in range(0, ZONE_PAGES, size):
            if all(p in left for p in range(pfn, pfn + size)):
                out[pfn] = order
                left.difference_update(range(pfn, pfn + size))
    return out


def invariants(m: BuddyModel) -> None:
    pages: set[int] = set()
    for pfn, (order, _) in m.free.items():
        assert pfn % (1 << order) == 0, "a free block is not aligned to its order"
        block = set(range(pfn, pfn + (1 << order)))
        assert not pages & block, "two free blocks overlap"
        pages |= block
        if order < MAX_ORDER:
            buddy = m.free.get(pfn ^ (1 << order))
            assert not (buddy and buddy[0] == order), "two free buddies left unmerged"


def allocate(m: BuddyModel, cpu: int, pick: int, want: int, free_pages: set[int],
             allocated: list[tuple[int, int]]) -> None:
    """An allocation as the kernel traces it: __rmqueue_smallest() takes a free block
    (chosen by rank PICK) and hands out its head, split to order WANT at most (zone_locked),
    then the caller gets it (mm_page_alloc)."""
    pfn = sorted(m.free)[pick % len(m.free)]
    order = min(want, m.free[pfn][0])
    m.apply("mm_page_alloc_zone_locked", cpu, {"pfn": pfn, "order": order, "migratetype": 1})
    m.apply("mm_page_alloc", cpu, {"pfn": pfn, "order": order})
    allocated.append((pfn, order))
    free_pages.difference_update(range(pfn, pfn + (1 << order)))


# A step: allocate (choose a free block by its rank and an order not above its own) or
# free (choose an allocated chunk by rank).
steps = st.lists(st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(0, MAX_ORDER)),
                 max_size=120)


@pytest.mark.parametrize("pcp_orders", [frozenset(), frozenset({0, 1})],
                         ids=["no-pcp", "pcp-orders-0-1"])
@settings(max_examples=200, deadline=None)
@given(seq=steps)
def test_random_sequences_keep_the_invariants_and_match_the_simulation(pcp_orders, seq):
    """Without pcp orders every free goes straight to the buddy lists (free_one_page());
    with them a free of such an order waits on the CPU's list (free_unref_page_commit())
    and reaches the buddy lists only at its drain (free_pcppages_bulk())."""
    r = Rules(max_order=MAX_ORDER, pageblock_order=MAX_ORDER, pcp_orders=pcp_orders)
    m = fresh(r)
    free_pages = set(range(ZONE_PAGES))
    on_pcp: dict[int, int] = {}
    allocated: list[tuple[int, int]] = []
    for is_alloc, pick, want in seq:
        if is_alloc and m.free:
            allocate(m, 1, pick, want, free_pages, allocated)
        elif allocated:
            pfn, order = allocated.pop(pick % len(allocated))
            m.apply("mm_page_free", 1, {"pfn": pfn, "order": order})
            if order in r.pcp_orders:
                on_pcp[pfn] = order
            else:
                free_pages.update(range(pfn, pfn + (1 << order)))
        if on_pcp and pick % 3 == 0:  # a drain of the whole list, from another CPU
            for pfn, order in sorted(on_pcp.items()):
                m.apply("mm_page_pcpu_drain", 0, {"pfn": pfn, "order": order,
                                                  "migratetype": 1})
                free_pages.update(range(pfn, pfn + (1 << order)))
            on_pcp.clear()
        invariants(m)
        assert {p: o for p, (o, _) in m.free.items()} == canonical(free_pages)
        assert m.pcp == {p: (1, o) for p, o in on_pcp.items()}
    assert m.divergences == []


def test_no_merge_across_unmergeable_pageblocks():
    """__free_one_page(): from pageblock_order up, a buddy in a pageblock of another
    migratetype merges only when both are mergeable (below MIGRATE_PCPTYPES)."""
    r = Rules(max_order=MAX_ORDER, pageblock_order=3, pcp_orders=frozenset(), isolate=4)
    m = BuddyModel(r, [(0, 16, "zone")], {8: (3, 4)}, {}, {0: 1, 1: 4})
    m.apply("mm_page_free", 0, {"pfn": 0, "order": 3})
    assert m.free == {0: (3, 1), 8: (3, 4)}
    m2 = BuddyModel(r, [(0, 16, "zone")], {8: (3, 0)}, {}, {0: 1, 1: 0})
    m2.apply("mm_page_free", 0, {"pfn": 0, "order": 3})
    assert m2.free == {0: (4, 1)}
    assert m2.pageblock[1] == 1  # change_pageblock_range(): the buddy takes the type


def test_no_merge_across_zones():
    r = rules()
    m = BuddyModel(r, [(0, 16, "DMA"), (16, 64, "DMA32")], {16: (4, 1)}, {}, {0: 1, 1: 1})
    m.apply("mm_page_free", 0, {"pfn": 0, "order": 4})
    assert m.free == {0: (4, 1), 16: (4, 1)}


def test_an_allocation_from_a_block_that_is_not_free_is_a_divergence():
    m = fresh(rules())
    m.apply("mm_page_alloc_zone_locked", 0, {"pfn": 3, "order": 0, "migratetype": 1})
    assert [d.kind for d in m.divergences] == ["alloc_not_free"]
    m.apply("mm_page_free", 0, {"pfn": 0, "order": 0})
    assert [d.kind for d in m.divergences] == ["alloc_not_free", "free_twice"]
