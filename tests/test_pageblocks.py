"""pageblocks: the pageblock bits of every lab kernel against /proc/pagetypeinfo, and the
skip, isolate and mixed state of every block against the same bits read with drgn alone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import drgn
import numpy as np
import pytest
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import page_to_pfn
from drgn.helpers.linux.mmzone import for_each_online_pgdat

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
    # blocks of free_area[order].nr_free, and per migratetype exactly the counts of
    # /proc/pagetypeinfo: the lab keeps a snapshot only when every list's length in the
    # dump (counted with drgn) equals them (memscope/lab/verify.py).
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
        assert moved == 0
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


# --- skip, isolate and mixed blocks against drgn -----------------------------------------

_PROGS: dict[str, drgn.Program] = {}


def drgn_prog(snap) -> drgn.Program:
    """A drgn Program of SNAP's dump of its own (not memscope's target)."""
    key = str(snap.vmcore)
    if key not in _PROGS:
        prog = drgn.Program()
        prog.set_core_dump(str(snap.vmcore))
        try:
            prog.load_debug_info([str(snap.vmlinux)])
        except drgn.MissingDebugInfoError:
            pass
        _PROGS[key] = prog
    return _PROGS[key]


def _constant(prog, name: str) -> int | None:
    try:
        return prog.constant(name).value_()
    except LookupError:
        return None


class DrgnPageblocks:
    """get_pfnblock_flags_mask() (mm/page_alloc.c) written out with drgn's objects: with
    SPARSEMEM the bits of the block holding PFN are NR_PAGEBLOCK_BITS bits of
    ``mem_section[nr]->usage->pageblock_flags[]`` (unsigned longs) from bit
    ``((pfn & (PAGES_PER_SECTION - 1)) >> pageblock_order) * NR_PAGEBLOCK_BITS``
    (pfn_to_bitidx()).  Bits from ``enum pageblock_bits``: 5.10-6.12 PB_migrate_skip after
    three migratetype bits, NR_PAGEBLOCK_BITS 4, isolation a migratetype value
    (MIGRATE_ISOLATE); 7.2 PB_compact_skip and a separate PB_migrate_isolate bit,
    NR_PAGEBLOCK_BITS = roundup_pow_of_two(__NR_PAGEBLOCK_BITS) (commit "mm/page_isolation:
    make page isolation a standalone bit", after 6.12).  The pageblock order is the
    guest's own, from /proc/pagetypeinfo."""

    def __init__(self, prog, snap):
        self.prog = prog
        self.order = int(re.search(r"Page block order: (\d+)",
                                   snap.truth_text("pagetypeinfo"))[1])
        nbits = _constant(prog, "NR_PAGEBLOCK_BITS")
        if nbits is None:
            nbits = 1 << (_constant(prog, "__NR_PAGEBLOCK_BITS") - 1).bit_length()
        self.nbits = nbits
        self.skip_bit = _constant(prog, "PB_migrate_skip")
        if self.skip_bit is None:
            self.skip_bit = _constant(prog, "PB_compact_skip")
        self.isolate_bit = _constant(prog, "PB_migrate_isolate")
        self.migrate_isolate = _constant(prog, "MIGRATE_ISOLATE")
        self.pages_per_section = 1 << (prog["SECTION_SIZE_BITS"].value_()
                                       - prog["PAGE_SHIFT"].value_())
        self.per_root = prog["SECTIONS_PER_ROOT"].value_()
        self.long_bits = 8 * prog.type("unsigned long").size
        self._sections: dict[int, drgn.Object] = {}

    def flags(self, pfn: int) -> int:
        nr = pfn // self.pages_per_section
        if nr not in self._sections:
            self._sections[nr] = self.prog["mem_section"][nr // self.per_root][nr % self.per_root]
        section = self._sections[nr]
        bitidx = ((pfn & (self.pages_per_section - 1)) >> self.order) * self.nbits
        word = section.usage.pageblock_flags[bitidx // self.long_bits].value_()
        return (word >> (bitidx % self.long_bits)) & ((1 << self.nbits) - 1)

    def migratetype(self, pfn: int) -> int:
        """get_pfnblock_migratetype(): MIGRATE_ISOLATE when 7.2's isolate bit is set."""
        f = self.flags(pfn)
        if self.isolate_bit is not None and f >> self.isolate_bit & 1:
            return self.migrate_isolate
        return f & 0x7

    def skip(self, pfn: int) -> bool:
        return bool(self.flags(pfn) >> self.skip_bit & 1)

    def isolate(self, pfn: int) -> bool:
        if self.isolate_bit is not None:
            return bool(self.flags(pfn) >> self.isolate_bit & 1)
        return self.migrate_isolate is not None and self.flags(pfn) & 0x7 == self.migrate_isolate


def drgn_zones(prog):
    """(node, zone name, zone object) of every populated zone."""
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if zone.present_pages.value_():
                yield pgdat.node_id.value_(), zone.name.string_().decode(), zone


def drgn_block_bits(snap) -> dict[tuple[int, str], dict[int, tuple[bool, bool]]]:
    """(node, zone) -> {block index: (skip, isolate)} for the blocks /proc/pagetypeinfo
    counts: pfn = zone_start_pfn + k * pageblock_nr_pages below zone_end_pfn."""
    prog = drgn_prog(snap)
    pb = DrgnPageblocks(prog, snap)
    out = {}
    for node, name, zone in drgn_zones(prog):
        start = zone.zone_start_pfn.value_()
        end = start + zone.spanned_pages.value_()
        out[(node, name)] = {pfn >> pb.order: (pb.skip(pfn), pb.isolate(pfn))
                             for pfn in range(start, end, 1 << pb.order)}
    return out


@pytest.fixture(scope="module")
def memscope_blocks(real_kernel):
    mm = mm_for(real_kernel)
    return real_kernel, {(z.node, z.name): mpb.zone_blocks(mm, z) for z in mm.all_zones()}


def test_skip_and_isolate_bits_of_every_block_equal_drgns(memscope_blocks):
    snap, blocks = memscope_blocks
    want = drgn_block_bits(snap)
    assert set(blocks) == set(want)
    for key, b in blocks.items():
        got = {int(blk): (bool(s), bool(i)) for blk, s, i in zip(b.block, b.skip, b.isolate)}
        assert got == want[key], key


def test_the_lab_leaves_skip_bits_in_every_kernel(memscope_blocks):
    """The mixed and numa workloads compact through /proc/sys/vm/compact_memory
    (fixtures/workloads/compact.sh): compaction marks the blocks it scanned without
    isolating anything, and nothing clears the marks afterwards.  Without them the
    comparison above would compare zeros."""
    snap, _ = memscope_blocks
    skips = sum(s for zone in drgn_block_bits(snap).values() for s, _ in zone.values())
    assert skips > 0


def drgn_mixed_blocks(snap) -> dict[tuple[int, str], set[int]]:
    """(node, zone) -> the blocks holding a free block that sits on another migratetype's
    free list (free_area[order].free_list[mt], walked with drgn) than the block's own
    get_pfnblock_migratetype()."""
    prog = drgn_prog(snap)
    pb = DrgnPageblocks(prog, snap)
    out: dict[tuple[int, str], set[int]] = {}
    for node, name, zone in drgn_zones(prog):
        mixed = out.setdefault((node, name), set())
        for area in zone.free_area:
            for mt, head in enumerate(area.free_list):
                for page in list_for_each_entry("struct page", head.address_of_(), "lru"):
                    pfn = page_to_pfn(page).value_()
                    if pb.migratetype(pfn) != mt:
                        mixed.add(pfn >> pb.order)
    return out


def test_mixed_blocks_equal_drgns(memscope_blocks):
    snap, blocks = memscope_blocks
    want = drgn_mixed_blocks(snap)
    for key, b in blocks.items():
        assert {int(blk) for blk, m in zip(b.block, b.mixed) if m} == want[key], key
