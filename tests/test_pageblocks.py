"""pageblocks: the pageblock bits of every lab kernel against /proc/pagetypeinfo."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from memscope.mm import page as mpage
from memscope.mm import pageblock as mpb

from test_pages import buddyinfo, mm_for

ROOT = Path(__file__).resolve().parents[1]


def truth_blockcounts(snap) -> dict[tuple[int, str], list[int]]:
    """Every "Node N, zone Z  counts..." line under "Number of blocks type" (NUMA guests
    print one section per node)."""
    out = {}
    in_counts = False
    for line in snap.truth_text("pagetypeinfo").splitlines():
        if line.startswith("Number of blocks type"):
            in_counts = True
            continue
        m = re.match(r"Node (\d+), zone\s+(\S+)\s+([\d\s]+)$", line)
        if in_counts and m:
            out[(int(m[1]), m[2])] = [int(x) for x in m[3].split()]
        elif not line.strip():
            in_counts = False
    return out


def truth_free_per_type(snap) -> dict[tuple[int, str, str], list[int]]:
    out = {}
    for line in snap.truth_text("pagetypeinfo").splitlines():
        m = re.match(r"Node\s+(\d+), zone\s+(\S+), type\s+(\S+)\s+([\d\s]+)$", line)
        if m:
            out[(int(m[1]), m[2], m[3])] = [int(x) for x in m[4].split()]
    return out


def test_block_counts_equal_pagetypeinfo(real_kernel):
    mm = mm_for(real_kernel)
    names = mpb.migratetype_names(mm)
    mine = {(r.node, r.zone): [r.counts[n] for n in names] for r in mpb.zone_pageblocks(mm)}
    assert mine == truth_blockcounts(real_kernel)


def test_pageblock_order_equals_pagetypeinfo(real_kernel):
    m = re.search(r"Page block order: (\d+)", real_kernel.truth_text("pagetypeinfo"))
    assert mpb.pageblock_order(mm_for(real_kernel)) == int(m[1])


def test_free_list_walk_finds_every_free_block_on_its_migratetype_list(real_kernel):
    # The bounded free-list walk (used for mixed blocks) finds, per order, exactly the
    # blocks of free_area[order].nr_free (the lab guarantees the dump equals buddyinfo).
    # Per migratetype it is compared with /proc/pagetypeinfo, which the guest prints just
    # before buddyinfo: a block that moved in between shows as a difference of a few blocks
    # (one order-1 block on 5.10), so that comparison allows 4.
    mm = mm_for(real_kernel)
    names = mpb.migratetype_names(mm)
    truth = truth_free_per_type(real_kernel)
    pm = mpage.memmap(mm)
    for z, nr_free in zip(mm.all_zones(), buddyinfo(real_kernel)):
        lists, findings = mpb.free_lists(mm, z)
        assert findings == []
        assert [sum(len(lists[(o, mt)]) for mt in range(len(names)) if (o, mt) in lists)
                for o in range(mm.nr_orders)] == nr_free
        moved = 0
        for mt, name in enumerate(names):
            if (z.node, z.name, name) in truth:
                moved += sum(abs(len(lists[(o, mt)]) - t) for o, t in
                             enumerate(truth[(z.node, z.name, name)]))
        assert moved <= 4
        # and every block on a list is a buddy block of that order
        for (o, mt), pfns in lists.items():
            assert (pm.order[pfns] == o).all() and (pm.cls[pfns] == mpage.C["buddy"]).all()


def test_mixed_blocks_and_bits_are_bounded_by_what_exists(real_kernel):
    mm = mm_for(real_kernel)
    pm = mpage.memmap(mm)
    for r in mpb.zone_pageblocks(mm):
        nblocks = sum(r.counts.values())
        assert 0 <= r.skip <= nblocks and 0 <= r.isolate <= nblocks
        assert sum(r.mixed.values()) <= nblocks
        zi = [i for i, z in enumerate(pm.zones) if (z.node, z.name) == (r.node, r.zone)][0]
        assert r.mixed_free_pages <= int(np.count_nonzero((pm.zone_id == zi)
                                                          & (pm.cls == mpage.C["buddy"])))


def test_pageblock_migratetypes_is_one_value_per_counted_block(real_kernel):
    mm = mm_for(real_kernel)
    for z in mm.all_zones():
        mt = mpb.pageblock_migratetypes(mm, z)
        assert len(mt) == (z.spanned_pages + (1 << mpb.pageblock_order(mm)) - 1) >> \
            mpb.pageblock_order(mm)
        assert mt.dtype == np.int16 and mt.max() < mm.migratetypes["MIGRATE_TYPES"]


def test_pageblocks_proc_format_is_pagetypeinfo_block_section(lab_case, tmp_path):
    snap = lab_case("6.12")
    p = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), "pageblocks", "-f", "proc", "--png",
                        str(tmp_path / "b.png")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    truth = snap.truth_text("pagetypeinfo")
    assert p.stdout == truth[truth.index("Number of blocks type"):]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
