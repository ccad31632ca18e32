"""frag: the fragmentation indices as mm/vmstat.c computes them, re-derived here from the
truth's /proc/buddyinfo, the watermarks against /proc/zoneinfo, and the formulas'
invariants (hypothesis)."""

from __future__ import annotations

import re

from drgn.helpers.linux.mmzone import for_each_online_pgdat
from hypothesis import given, strategies as st

from memscope.mm import frag as mfrag

from test_pages import buddyinfo, mm_for


def expected_indices(nr_free: list[int]) -> tuple[list[int], list[int]]:
    """unusable_free_index and __fragmentation_index for every order, written from the
    kernel source independently of memscope.mm.frag."""
    unusable, extfrag = [], []
    for order in range(len(nr_free)):
        free_pages = sum(n << o for o, n in enumerate(nr_free))
        total = sum(nr_free)
        suitable = sum(n << (o - order) for o, n in enumerate(nr_free) if o >= order)
        unusable.append(1000 if free_pages == 0 else
                        (free_pages - (suitable << order)) * 1000 // free_pages)
        if not total:
            extfrag.append(0)
        elif suitable:
            extfrag.append(-1000)
        else:
            extfrag.append(1000 - (1000 + free_pages * 1000 // (1 << order)) // total)
    return unusable, extfrag


def test_indices_equal_the_kernel_formulas_on_buddyinfo(real_kernel):
    mm = mm_for(real_kernel)
    rows = mfrag.zone_frag(mm, "kernel")
    for r, nr_free in zip(rows, buddyinfo(real_kernel)):
        u, e = expected_indices(nr_free)
        assert [o.unusable_index for o in r.orders] == u
        assert [o.extfrag_index for o in r.orders] == e
        assert [o.nr_free for o in r.orders] == nr_free
        assert r.largest_free_order == max(o for o, n in enumerate(nr_free) if n)


def test_proc_format_prints_thousandths_like_debugfs(real_kernel):
    mm = mm_for(real_kernel)
    rows = mfrag.zone_frag(mm)
    text = mfrag.format_unusable_index(rows)
    for line, r in zip(text.splitlines(), rows):
        vals = line.split()[4:]
        assert vals == ["%d.%03d" % (o.unusable_index // 1000, o.unusable_index % 1000)
                        for o in r.orders]


def zoneinfo_watermarks(snap) -> list[dict]:
    """min/low/high (wmark_pages: with the boost) and protection per zone with pages."""
    out, cur = [], None
    for line in snap.truth_text("zoneinfo").splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)", line)
        if m:
            cur = {"node": int(m[1]), "zone": m[2]}
            out.append(cur)
            continue
        f = line.split()
        if cur is not None and len(f) == 2 and f[0] in ("min", "low", "high", "managed",
                                                        "present"):
            cur[f[0]] = int(f[1])
        if cur is not None and line.strip().startswith("protection:"):
            cur["protection"] = [int(x) for x in re.findall(r"\d+", line)]
    return [z for z in out if z.get("present")]


def test_watermarks_and_reserves_equal_zoneinfo(real_kernel):
    mm = mm_for(real_kernel)
    rows = mfrag.zone_frag(mm)
    zi = zoneinfo_watermarks(real_kernel)
    assert [(r.node, r.zone) for r in rows] == [(z["node"], z["zone"]) for z in zi]
    for r, z in zip(rows, zi):
        b = r.watermarks["boost"]
        assert (r.watermarks["min"] + b, r.watermarks["low"] + b, r.watermarks["high"] + b) \
            == (z["min"], z["low"], z["high"])
        assert r.lowmem_reserve == z["protection"]


def cma_configured(snap) -> bool:
    """CONFIG_CMA, from the guest's own /proc/meminfo (fs/proc/meminfo.c prints CmaTotal
    and CmaFree only #ifdef CONFIG_CMA)."""
    return any(line.startswith("CmaTotal:") for line in snap.truth_text("meminfo").splitlines())


def zone_order0_truth(prog, snap) -> list[dict]:
    """Per populated zone, read with drgn from the dump: the inputs of the kernel's order-0
    watermark check (zone_page_state() clamps a negative counter at 0) and the kernel's
    answers for each --gfp class, written from mm/page_alloc.c of the snapshot's version:

    fast (ALLOC_WMARK_LOW; ALLOC_CMA for movable under CONFIG_CMA):
        free - highatomic - (cma unless movable) > low + boost + lowmem_reserve[hz]
    min, GFP_KERNEL / GFP_HIGHUSER_MOVABLE (ALLOC_WMARK_MIN):
        free - highatomic - (cma unless movable) > min + boost + lowmem_reserve[hz]
    min, GFP_ATOMIC (ALLOC_MIN_RESERVE|ALLOC_NON_BLOCK; 5.10: ALLOC_HIGH|ALLOC_HARDER): the
        mark m loses m/2, then a quarter of the rest; highatomic is usable; checked with
        the boost, then (boost != 0) without it.

    highatomic: nr_reserved_highatomic in 5.10 and 6.1, nr_free_highatomic in 6.12 and 7.2.
    hz: ZONE_NORMAL for kernel and atomic, ZONE_MOVABLE for movable (gfp_zone)."""
    old_ha = snap.kernel.split("-")[0] in ("5.10", "6.1")
    has_cma = cma_configured(snap)
    normal, movable = prog["ZONE_NORMAL"].value_(), prog["ZONE_MOVABLE"].value_()
    out = []
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if not zone.present_pages:
                continue
            free = max(zone.vm_stat[prog["NR_FREE_PAGES"]].counter.value_(), 0)
            cma = max(zone.vm_stat[prog["NR_FREE_CMA_PAGES"]].counter.value_(), 0) \
                if has_cma else 0
            ha = (zone.nr_reserved_highatomic if old_ha else zone.nr_free_highatomic).value_()
            wm = [zone._watermark[i].value_() for i in range(3)]  # WMARK_MIN, LOW, HIGH
            boost = zone.watermark_boost.value_()
            lr = [v.value_() for v in zone.lowmem_reserve]

            def atomic_ok(mark: int) -> bool:
                m = mark - mark // 2
                m -= m // 4
                return free - cma > m + lr[normal]

            answers = {
                "kernel": (free - ha - cma > wm[1] + boost + lr[normal],
                           free - ha - cma > wm[0] + boost + lr[normal]),
                "movable": (free - ha > wm[1] + boost + lr[movable],
                            free - ha > wm[0] + boost + lr[movable]),
                "atomic": (free - ha - cma > wm[1] + boost + lr[normal],
                           atomic_ok(wm[0] + boost) or (boost != 0 and atomic_ok(wm[0]))),
            }
            out.append({"node": pgdat.node_id.value_(), "zone": zone.name.string_().decode(),
                        "free": free, "cma": cma, "highatomic": ha, "lr": lr,
                        "hz": {"kernel": normal, "movable": movable, "atomic": normal},
                        "answers": answers})
    return out


def test_order0_decisions_equal_the_kernel_formula_on_the_dump(real_kernel):
    mm = mm_for(real_kernel)
    truth = zone_order0_truth(mm.t.prog, real_kernel)
    for gfp in mfrag.GFP_CLASSES:
        rows = mfrag.zone_frag(mm, gfp)
        assert [(r.node, r.zone) for r in rows] == [(z["node"], z["zone"]) for z in truth]
        for r, z in zip(rows, truth):
            assert (r.orders[0].ok_fast, r.orders[0].ok_min) == z["answers"][gfp], (gfp, z)


def test_order0_check_flips_exactly_at_the_dumps_usable_free_pages(real_kernel):
    """The lab's zones have so much headroom that every decision above is "yes".  Here the
    mark is moved instead: with the zone state memscope read from the dump, its
    zone_watermark_ok() for the fast-path flags of GFP_KERNEL and GFP_HIGHUSER_MOVABLE
    must say yes at the mark usable - lowmem_reserve[hz] - 1 and no at usable -
    lowmem_reserve[hz], usable being the dump's free - highatomic - (CMA unless movable)
    read with drgn (a CMA zone tells a movable request that may use CMA pages from one
    that may not)."""
    mm = mm_for(real_kernel)
    truth = zone_order0_truth(mm.t.prog, real_kernel)
    checked = 0
    assert [(zone.node, zone.name) for zone in mm.all_zones()] \
        == [(z["node"], z["zone"]) for z in truth]
    for z, zone in zip(truth, mm.all_zones()):
        s = mfrag.zone_state(mm, zone)
        for gfp in ("kernel", "movable"):
            hz, fast, _ = mfrag.gfp_flags(mm, gfp, 0)
            assert hz == z["hz"][gfp]
            usable = z["free"] - z["highatomic"] - (0 if gfp == "movable" else z["cma"])
            edge = usable - z["lr"][hz]
            if edge < 1:  # the mark is unsigned: no mark passes
                continue
            assert mfrag.zone_watermark_ok(mm, s, 0, edge - 1, hz, fast), (gfp, z)
            assert not mfrag.zone_watermark_ok(mm, s, 0, edge, hz, fast), (gfp, z)
            checked += 1
    assert checked  # every lab case has a zone with free pages above its reserves


def test_an_order_above_every_free_block_never_succeeds(real_kernel):
    mm = mm_for(real_kernel)
    for gfp in mfrag.GFP_CLASSES:
        for r in mfrag.zone_frag(mm, gfp):
            for o in r.orders:
                if o.order > (r.largest_free_order if r.largest_free_order is not None else -1):
                    assert not o.succeeds


nr_free_lists = st.lists(st.integers(0, 5000), min_size=11, max_size=11)


@given(nr_free_lists)
def test_unusable_index_is_in_0_1000_and_grows_with_the_order(nr_free):
    vals = [mfrag.unusable_free_index(o, mfrag.fill_contig_page_info(nr_free, o))
            for o in range(11)]
    assert all(0 <= v <= 1000 for v in vals)
    assert vals == sorted(vals)
    if sum(nr_free):
        assert vals[0] == 0
    else:
        assert vals == [1000] * 11


@given(nr_free_lists)
def test_fragmentation_index_is_minus_one_exactly_when_a_block_is_big_enough(nr_free):
    for o in range(11):
        info = mfrag.fill_contig_page_info(nr_free, o)
        v = mfrag.fragmentation_index(o, info, 10)
        if not sum(nr_free):
            assert v == 0
        elif any(nr_free[o:]):
            assert v == -1000
        else:
            # Below 0 when the free pages do not add up to one block of the order
            # (lack of memory); never -1000, at most 1000.
            assert -1000 < v <= 1000


@given(nr_free_lists)
def test_fill_contig_page_info_counts_pages_and_blocks(nr_free):
    for o in range(11):
        info = mfrag.fill_contig_page_info(nr_free, o)
        assert info.free_pages == sum(n << k for k, n in enumerate(nr_free))
        assert info.free_blocks_total == sum(nr_free)
        assert info.free_blocks_suitable << o <= info.free_pages


@given(st.integers(-1000, 1000))
def test_index_format_matches_c_printf(v):
    # "%d.%03d" (unusable_index; extfrag_index since v5.16 "%2d.%03d") of index / 1000,
    # index % 1000 with C's truncating / and %: -500 prints "0.-500" (printf(1) agrees).
    q = int(v / 1000)
    r = v - q * 1000
    assert mfrag.fmt_index(v) == "%d.%03d" % (q, r)
    assert mfrag.fmt_index(v, 2) == "%2d.%03d" % (q, r)
