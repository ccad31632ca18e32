"""frag's allocation decision (memscope.mm.frag.zone_watermark_fast with the flags of
gfp_flags) on synthetic zone states just above and just below each mark, against answers
written by hand from the kernel source of each version (Debian's linux-source-5.10
5.10.223, -6.1 6.1.176, -6.12 6.12.117, -7.2 7.2.13; mm/page_alloc.c
__zone_watermark_unusable_free, __zone_watermark_ok, zone_watermark_fast,
gfp_to_alloc_flags, prepare_alloc_pages / 5.10 current_alloc_flags, include/linux/mmzone.h
wmark_pages).  The expected booleans are literals; the arithmetic behind each is in its
comment.  No memscope code computes an expectation.

What the four versions do, for the three --gfp classes:

- fast path (first get_page_from_freelist): ALLOC_WMARK_LOW, plus ALLOC_CMA when the gfp's
  migratetype is MOVABLE and the kernel has CONFIG_CMA (6.1+ gfp_to_alloc_flags_cma, 5.10
  current_alloc_flags); no reserve flags, so the highatomic reserve is unusable.
- min (slow path's first try): gfp_to_alloc_flags.  GFP_KERNEL and GFP_HIGHUSER_MOVABLE:
  ALLOC_WMARK_MIN (+ALLOC_CMA for movable).  GFP_ATOMIC: 6.1+ ALLOC_MIN_RESERVE |
  ALLOC_NON_BLOCK (| ALLOC_HIGHATOMIC for order > 0), 5.10 ALLOC_HIGH | ALLOC_HARDER: the
  mark loses a half then a quarter (1000 -> 500 -> 375), the highatomic reserve counts as
  free, MIGRATE_HIGHATOMIC blocks count for order > 0.
- mark = _watermark[] + watermark_boost; order-0 GFP_ATOMIC checks against the min mark
  are retried without the boost (5.10, 6.1: __GFP_ATOMIC; 6.12, 7.2: ALLOC_MIN_RESERVE).
- unusable = 2^order - 1 + (no reserve flag: highatomic: 5.10/6.1 nr_reserved_highatomic,
  6.12/7.2 nr_free_highatomic) + (CONFIG_CMA and no ALLOC_CMA: NR_FREE_CMA_PAGES).
- pass iff free - unusable > mark' + lowmem_reserve[highest_zoneidx] and, for order > 0,
  some order o >= order with nr_free[o] != 0 has a non-empty list among UNMOVABLE,
  MOVABLE, RECLAIMABLE (< MIGRATE_PCPTYPES), CMA with ALLOC_CMA, HIGHATOMIC with
  ALLOC_HIGHATOMIC (5.10: ALLOC_HARDER).
- highest_zoneidx (gfp_zone): GFP_KERNEL, GFP_ATOMIC ZONE_NORMAL (2); GFP_HIGHUSER_MOVABLE
  ZONE_MOVABLE (3).

Every state below has _watermark min 1000, low 1250, high 1500.
"""

from __future__ import annotations

import dataclasses

import pytest

from memscope.mm import frag as mfrag
from memscope.mm.zone import Zone

NR_ORDERS = 11  # free_area[] length in all four (MAX_ORDER 11 / NR_PAGE_ORDERS 11)

# enum zone_type of Debian's x86_64 and arm64 configs (ZONE_DMA, ZONE_DMA32, ZONE_DEVICE
# configured, no HIGHMEM).
ZONE_TYPE = {"ZONE_DMA": 0, "ZONE_DMA32": 1, "ZONE_NORMAL": 2, "ZONE_MOVABLE": 3,
             "ZONE_DEVICE": 4, "__MAX_NR_ZONES": 5}
# enum migratetype with and without CONFIG_CMA (CONFIG_MEMORY_ISOLATION in both).
MIGRATE_NO_CMA = {"MIGRATE_UNMOVABLE": 0, "MIGRATE_MOVABLE": 1, "MIGRATE_RECLAIMABLE": 2,
                  "MIGRATE_PCPTYPES": 3, "MIGRATE_HIGHATOMIC": 3, "MIGRATE_ISOLATE": 4,
                  "MIGRATE_TYPES": 5}
MIGRATE_CMA = {"MIGRATE_UNMOVABLE": 0, "MIGRATE_MOVABLE": 1, "MIGRATE_RECLAIMABLE": 2,
               "MIGRATE_PCPTYPES": 3, "MIGRATE_HIGHATOMIC": 3, "MIGRATE_CMA": 4,
               "MIGRATE_ISOLATE": 5, "MIGRATE_TYPES": 6}


class _Enums:
    """The part of a Target that frag's decision reads: enumerators."""

    def __init__(self, enums: dict[str, dict[str, int]]):
        self._enums = enums

    def enum(self, name: str) -> dict[str, int]:
        return self._enums[name]


@dataclasses.dataclass
class Kernel:
    """The part of a KernelContext that frag's decision reads, as each Debian kernel has it."""

    name: str
    cma: bool  # CONFIG_CMA: MIGRATE_CMA exists
    free_highatomic: bool  # struct zone has nr_free_highatomic (6.12, 7.2)
    nr_orders: int = NR_ORDERS

    @property
    def migratetypes(self) -> dict[str, int]:
        return MIGRATE_CMA if self.cma else MIGRATE_NO_CMA

    @property
    def t(self) -> _Enums:
        return _Enums({"enum zone_type": ZONE_TYPE, "enum migratetype": self.migratetypes})


KERNELS = {k.name: k for k in (
    Kernel("5.10", cma=False, free_highatomic=False),
    Kernel("6.1", cma=False, free_highatomic=False),
    Kernel("6.12", cma=False, free_highatomic=True),
    Kernel("6.12-arm64", cma=True, free_highatomic=True),
    # Debian's 7.2 builds CONFIG_CMA on x86_64 and arm64.
    Kernel("7.2", cma=True, free_highatomic=True),
)}
ALL = tuple(KERNELS)
OLD_HA = ("5.10", "6.1")  # subtract nr_reserved_highatomic
NEW_HA = ("6.12", "6.12-arm64", "7.2")  # subtract nr_free_highatomic
WITH_CMA = ("6.12-arm64", "7.2")


@dataclasses.dataclass(frozen=True)
class State:
    """A zone as __zone_watermark_ok sees it."""

    free: int  # NR_FREE_PAGES
    boost: int = 0
    lowmem_reserve: tuple[int, ...] = (0, 0, 0, 0, 0)
    reserved_highatomic: int = 0
    free_highatomic: int = 0
    free_cma: int = 0
    # {order: [migratetypes whose free_list is non-empty]}; nr_free[order] = their count
    blocks: tuple[tuple[int, tuple[str, ...]], ...] = ()
    nr_free_zero: tuple[int, ...] = ()  # orders whose nr_free is 0 whatever their lists

    def zone_state(self, k: Kernel) -> mfrag.ZoneState:
        mt = k.migratetypes
        nonempty = [[False] * mt["MIGRATE_TYPES"] for _ in range(k.nr_orders)]
        nr_free = [0] * k.nr_orders
        for order, types in self.blocks:
            for name in types:
                nonempty[order][mt[f"MIGRATE_{name}"]] = True
            nr_free[order] = 0 if order in self.nr_free_zero else len(types)
        zone = Zone(0, 1, "DMA32", 0, 0, 0, 0, 0)
        return mfrag.ZoneState(
            zone, nr_free, nonempty, {"min": 1000, "low": 1250, "high": 1500}, self.boost,
            list(self.lowmem_reserve), self.reserved_highatomic,
            self.free_highatomic if k.free_highatomic else None, self.free, self.free_cma,
            self.free)


@dataclasses.dataclass(frozen=True)
class Row:
    kernels: tuple[str, ...]
    state: State
    gfp: str
    order: int
    fast: bool
    min: bool
    why: str


LR = (0, 0, 500, 700, 700)  # a DMA32 zone: lowmem_reserve[NORMAL] 500, [MOVABLE] 700
HA = dict(reserved_highatomic=1024, free_highatomic=100)
BIG = 5000  # far above every mark: only the free lists decide

ROWS = [
    # --- order 0, nothing reserved -------------------------------------------------------
    Row(ALL, State(1251), "kernel", 0, True, True, "1251 > 1250; 1251 > 1000"),
    Row(ALL, State(1250), "kernel", 0, False, True, "1250 > 1250 no; 1250 > 1000"),
    Row(ALL, State(1001), "kernel", 0, False, True, "1001 > 1250 no; 1001 > 1000"),
    Row(ALL, State(1000), "kernel", 0, False, False, "1000 > 1000 no"),
    Row(ALL, State(1251), "movable", 0, True, True, "1251 > 1250; 1251 > 1000"),
    Row(ALL, State(1250), "movable", 0, False, True, "1250 > 1250 no; 1250 > 1000"),
    Row(ALL, State(1000), "movable", 0, False, False, "1000 > 1000 no"),
    Row(ALL, State(1251), "atomic", 0, True, True, "fast has no reserves: 1251 > 1250"),
    Row(ALL, State(1250), "atomic", 0, False, True, "1250 > 1250 no; min 1000->500->375"),
    Row(ALL, State(376), "atomic", 0, False, True, "376 > 375"),
    Row(ALL, State(375), "atomic", 0, False, False, "375 > 375 no"),
    Row(ALL, State(0), "atomic", 0, False, False, "0 > 375 no"),
    # --- watermark_boost 200: low mark 1450, min mark 1200 ---------------------------------
    Row(ALL, State(1451, boost=200), "kernel", 0, True, True, "1451 > 1450"),
    Row(ALL, State(1450, boost=200), "kernel", 0, False, True, "1450 > 1450 no; > 1200"),
    Row(ALL, State(1200, boost=200), "kernel", 0, False, False,
        "1200 > 1200 no; GFP_KERNEL keeps the boost"),
    Row(ALL, State(1201, boost=200), "movable", 0, False, True, "1201 > 1450 no; > 1200"),
    Row(ALL, State(1200, boost=200), "movable", 0, False, False, "1200 > 1200 no"),
    Row(ALL, State(451, boost=200), "atomic", 0, False, True, "1200->600->450: 451 > 450"),
    Row(ALL, State(450, boost=200), "atomic", 0, False, True,
        "450 > 450 no; retried without the boost: 1000->375, 450 > 375"),
    Row(ALL, State(376, boost=200), "atomic", 0, False, True, "retry: 376 > 375"),
    Row(ALL, State(375, boost=200), "atomic", 0, False, False, "retry: 375 > 375 no"),
    Row(ALL, State(451, boost=200, blocks=((1, ("UNMOVABLE",)),)), "atomic", 1, False, False,
        "451-1 = 450 > 450 no; no retry above order 0"),
    Row(ALL, State(452, boost=200, blocks=((1, ("UNMOVABLE",)),)), "atomic", 1, False, True,
        "452-1 = 451 > 450, an UNMOVABLE order-1 block"),
    # --- lowmem_reserve: kernel/atomic +500 (NORMAL), movable +700 (MOVABLE) -------------
    Row(ALL, State(1751, lowmem_reserve=LR), "kernel", 0, True, True, "1751 > 1250+500"),
    Row(ALL, State(1750, lowmem_reserve=LR), "kernel", 0, False, True,
        "1750 > 1750 no; 1750 > 1000+500"),
    Row(ALL, State(1500, lowmem_reserve=LR), "kernel", 0, False, False, "1500 > 1500 no"),
    Row(ALL, State(1751, lowmem_reserve=LR), "movable", 0, False, True,
        "1751 > 1250+700 no; 1751 > 1000+700"),
    Row(ALL, State(1951, lowmem_reserve=LR), "movable", 0, True, True, "1951 > 1950"),
    Row(ALL, State(1700, lowmem_reserve=LR), "movable", 0, False, False, "1700 > 1700 no"),
    Row(ALL, State(876, lowmem_reserve=LR), "atomic", 0, False, True, "876 > 375+500"),
    Row(ALL, State(875, lowmem_reserve=LR), "atomic", 0, False, False, "875 > 875 no"),
    # --- highatomic: reserved 1024 (5.10, 6.1 subtract it), free 100 (6.12, 7.2) ---------
    Row(OLD_HA, State(2275, **HA), "kernel", 0, True, True, "2275-1024 = 1251 > 1250"),
    Row(OLD_HA, State(2274, **HA), "kernel", 0, False, True,
        "2274-1024 = 1250 > 1250 no; > 1000"),
    Row(NEW_HA, State(2274, **HA), "kernel", 0, True, True, "2274-100 = 2174 > 1250"),
    Row(NEW_HA, State(1351, **HA), "kernel", 0, True, True, "1351-100 = 1251 > 1250"),
    Row(NEW_HA, State(1350, **HA), "kernel", 0, False, True, "1350-100 = 1250 > 1250 no"),
    Row(OLD_HA, State(1350, **HA), "kernel", 0, False, False, "1350-1024 = 326 > 1000 no"),
    Row(OLD_HA, State(2024, **HA), "movable", 0, False, False, "2024-1024 = 1000 > 1000 no"),
    Row(NEW_HA, State(1101, **HA), "movable", 0, False, True, "1101-100 = 1001 > 1000"),
    Row(ALL, State(376, **HA), "atomic", 0, False, True,
        "fast: 376-1024 or 376-100 > 1250 no; min may use the reserve: 376 > 375"),
    Row(OLD_HA, State(2275, **HA), "atomic", 0, True, True, "fast: 2275-1024 = 1251 > 1250"),
    Row(OLD_HA, State(2274, **HA), "atomic", 0, False, True, "fast: 1250 > 1250 no"),
    # --- free CMA pages 500 (CONFIG_CMA): movable may use them on both paths -----------
    Row(WITH_CMA, State(1751, free_cma=500), "kernel", 0, True, True, "1751-500 = 1251"),
    Row(WITH_CMA, State(1750, free_cma=500), "kernel", 0, False, True,
        "1750-500 = 1250 > 1250 no; > 1000"),
    Row(WITH_CMA, State(1750, free_cma=500), "movable", 0, True, True,
        "ALLOC_CMA on the fast path too (prepare_alloc_pages): 1750 > 1250"),
    Row(WITH_CMA, State(1251, free_cma=500), "movable", 0, True, True, "1251 > 1250"),
    Row(WITH_CMA, State(1251, free_cma=500), "kernel", 0, False, False, "751 > 1000 no"),
    Row(WITH_CMA, State(1251, free_cma=500), "atomic", 0, False, True,
        "fast 751 > 1250 no; min 751 > 375 (GFP_ATOMIC is not movable: no CMA)"),
    Row(WITH_CMA, State(876, free_cma=500), "atomic", 0, False, True, "876-500 = 376 > 375"),
    Row(WITH_CMA, State(875, free_cma=500), "atomic", 0, False, False, "375 > 375 no"),
    Row(WITH_CMA, State(1001, free_cma=500), "movable", 0, False, True, "1001 > 1000"),
    # boost 200, lowmem_reserve, free highatomic 100 and CMA 500 at once
    Row(WITH_CMA, State(2251, boost=200, lowmem_reserve=LR, free_cma=500, **HA), "movable", 0,
        True, True, "2251-100 = 2151 > 1450+700; > 1200+700"),
    Row(WITH_CMA, State(2250, boost=200, lowmem_reserve=LR, free_cma=500, **HA), "movable", 0,
        False, True, "2150 > 2150 no; 2150 > 1900"),
    Row(WITH_CMA, State(2250, boost=200, lowmem_reserve=LR, free_cma=500, **HA), "kernel", 0,
        False, False, "2250-100-500 = 1650 > 1450+500 no; > 1200+500 no"),
    # --- order > 0: free list emptiness per migratetype ---------------------------------
    Row(ALL, State(BIG, blocks=((3, ("MOVABLE",)),)), "kernel", 3, True, True,
        "a MOVABLE order-3 block"),
    Row(ALL, State(BIG, blocks=((2, ("UNMOVABLE",)),)), "kernel", 3, False, False,
        "no block of order >= 3"),
    Row(ALL, State(BIG, blocks=((2, ("UNMOVABLE",)),)), "atomic", 3, False, False,
        "no block of order >= 3"),
    Row(ALL, State(BIG, blocks=((3, ("UNMOVABLE",)),)), "atomic", 3, True, True,
        "an UNMOVABLE order-3 block"),
    Row(ALL, State(BIG, blocks=((10, ("UNMOVABLE",)),)), "kernel", 3, True, True,
        "an order-10 block serves order 3"),
    Row(ALL, State(BIG, blocks=((5, ("RECLAIMABLE",)),)), "movable", 3, True, True,
        "RECLAIMABLE < MIGRATE_PCPTYPES"),
    Row(ALL, State(BIG, blocks=((4, ("HIGHATOMIC",)),)), "kernel", 3, False, False,
        "HIGHATOMIC needs ALLOC_HIGHATOMIC"),
    Row(ALL, State(BIG, blocks=((4, ("HIGHATOMIC",)),)), "movable", 3, False, False,
        "HIGHATOMIC needs ALLOC_HIGHATOMIC"),
    Row(ALL, State(BIG, blocks=((4, ("HIGHATOMIC",)),)), "atomic", 3, False, True,
        "slow path: ALLOC_HIGHATOMIC for order > 0 (5.10: ALLOC_HARDER)"),
    Row(ALL, State(BIG, blocks=((3, ("ISOLATE",)),)), "atomic", 3, False, False,
        "MIGRATE_ISOLATE never counts"),
    Row(ALL, State(BIG, blocks=((3, ("MOVABLE",)),), nr_free_zero=(3,)), "kernel", 3,
        False, False, "nr_free[3] == 0: the order is skipped whatever its lists"),
    Row(WITH_CMA, State(BIG, blocks=((5, ("CMA",)),)), "kernel", 3, False, False,
        "CMA needs ALLOC_CMA"),
    Row(WITH_CMA, State(BIG, blocks=((5, ("CMA",)),)), "movable", 3, True, True,
        "ALLOC_CMA on both paths"),
    Row(WITH_CMA, State(BIG, blocks=((5, ("CMA",)),)), "atomic", 3, False, False,
        "CMA needs ALLOC_CMA"),
    Row(ALL, State(1252, blocks=((1, ("UNMOVABLE",)),)), "kernel", 1, True, True,
        "1252-1 = 1251 > 1250"),
    Row(ALL, State(1251, blocks=((1, ("UNMOVABLE",)),)), "kernel", 1, False, True,
        "1251-1 = 1250 > 1250 no; > 1000"),
    Row(ALL, State(BIG, blocks=((10, ("MOVABLE",)),)), "kernel", 10, True, True,
        "the largest order"),
    Row(ALL, State(1251, blocks=((3, ("MOVABLE",)),)), "kernel", 3, False, True,
        "1251-7 = 1244 > 1250 no; > 1000"),
    Row(OLD_HA, State(1400, blocks=((3, ("HIGHATOMIC",)),), **HA), "atomic", 3, False, True,
        "fast 1400-7-1024 = 369 no; min keeps the reserve: 1393 > 375, HIGHATOMIC block"),
]


def _cases():
    for i, row in enumerate(ROWS):
        for k in row.kernels:
            yield pytest.param(row, KERNELS[k], id=f"{i}-{k}-{row.gfp}-o{row.order}")


def decide(k: Kernel, row: Row) -> tuple[bool, bool]:
    hz, fast, slow = mfrag.gfp_flags(k, row.gfp, row.order)
    s = row.state.zone_state(k)
    return (mfrag.zone_watermark_fast(k, s, row.order, hz, fast),
            mfrag.zone_watermark_fast(k, s, row.order, hz, slow))


@pytest.mark.parametrize("row,kernel", list(_cases()))
def test_fast_and_min_decisions_equal_the_kernel_source(row, kernel):
    assert decide(kernel, row) == (row.fast, row.min), row.why


def test_table_covers_each_gfp_order_and_kernel_both_ways():
    """The table is not one-sided: for every kernel, gfp class and (order 0 / order > 0)
    there are rows where the fast decision is yes and rows where it is no, and the same for
    min; CMA and both highatomic accountings appear."""
    for k in KERNELS:
        for gfp in mfrag.GFP_CLASSES:
            for high in (False, True):
                rows = [r for r in ROWS if k in r.kernels and r.gfp == gfp
                        and (r.order > 0) == high]
                assert {r.min for r in rows} == {True, False}, (k, gfp, high)
                assert {r.fast for r in rows} == {True, False}, (k, gfp, high)
    assert any(r.kernels == OLD_HA for r in ROWS) and any(r.kernels == NEW_HA for r in ROWS)
    assert any(r.state.free_cma for r in ROWS)
