"""frag: the fragmentation indices as mm/vmstat.c computes them, re-derived here from the
truth's /proc/buddyinfo, the watermarks against /proc/zoneinfo, and the formulas'
invariants (hypothesis)."""

from __future__ import annotations

import re

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


def test_order0_decision_is_free_minus_reserves_above_the_mark(real_kernel):
    mm = mm_for(real_kernel)
    zt = mm.t.enum("enum zone_type")
    for gfp, hz in (("kernel", zt["ZONE_NORMAL"]),
                    ("movable", zt.get("ZONE_MOVABLE", zt["ZONE_NORMAL"]))):
        for r in mfrag.zone_frag(mm, gfp):
            ha = r.highatomic["free"] if r.highatomic["free"] is not None \
                else r.highatomic["reserved"]
            cma = r.free_cma if gfp == "kernel" else 0
            free = max(r.free_pages_counter, 0) - ha - cma
            low = r.watermarks["low"] + r.watermarks["boost"]
            assert r.orders[0].ok_fast == (free > low + r.lowmem_reserve[hz])


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
    s = mfrag.fmt_index(v)
    # "%d.%03d" with C's truncating / and %
    q = int(v / 1000)
    r = v - q * 1000
    assert s == ("%d.%03d" % (q, abs(r)) if v >= 0 or q else "-0.%03d" % abs(r)) \
        or s == "%d.%03d" % (q, abs(r))
