"""``cma`` (memscope.mm.cma) on real lab kernels with CMA, against truths independent of
memscope's reconstruction:

- the guest's own /proc/meminfo (CmaTotal, CmaFree) and /proc/pagetypeinfo (the CMA rows,
  which the lab checked against the dump's free lists with drgn), and on 7.2 its
  /sys/kernel/mm/cma/<area>/ counters (pages allocated and released by cma_alloc());
- the areas, bitmaps, free lists, per-CPU lists and struct pages read here with drgn's own
  objects and helpers (``prog["cma_areas"]``, list_for_each_entry, per_cpu_ptr,
  compound_head, PageLRU...), and cma_alloc()'s search and alloc_contig_range()'s rules
  written again here, by brute force, on that reading.

Cases: 6.12 arm64 (one range per area, 64 MiB by default), and, once built, 7.2 x86_64
with cma=128M and 7.2 arm64 (multi-range ``struct cma``, CONFIG_CMA_SYSFS).  Kernels
without CMA (6.12 x86_64) or without an area (7.2 x86_64 without cma=) answer one line.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from drgn import cast
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import PageHead, PageLRU, compound_head, page_to_pfn, pfn_to_page
from drgn.helpers.linux.mmzone import for_each_online_pgdat
from drgn.helpers.linux.percpu import per_cpu, per_cpu_ptr
from drgn.helpers.linux.vmstat import global_zone_page_state

from memscope.lab import cases
from memscope.mm import cma as mcma
from memscope.mm.context import KernelContext

from kernel_dumps import open_dump

#: The lab cases with CMA areas (those not built yet are built on first use).
CMA_CASES = [c for c in ("6.12-arm64", "7.2-cma", "7.2-arm64", "7.2-cma16")
             if c in cases.CASES]
#: Cases whose kernel has CONFIG_CMA_SYSFS (/sys/kernel/mm/cma/<area>/ in the truth).
SYSFS_CASES = [c for c in CMA_CASES if c.startswith("7.2")]


@pytest.fixture(scope="module", params=CMA_CASES)
def case(request, lab_case):
    snap = lab_case(request.param)
    prog, target = open_dump(snap)
    return snap, prog, KernelContext(target)


def _meminfo_kb(snap, name: str) -> int:
    return int(re.search(rf"^{name}:\s+(\d+) kB$", snap.truth_text("meminfo"), re.M).group(1))


# --- the dump read with drgn ----------------------------------------------------------------
def drgn_areas(prog) -> list[dict]:
    """Every area read with drgn's objects: name, count, order_per_bit, and each range's
    base_pfn, count and bitmap (a numpy bool array; None before activation)."""
    out = []
    cma_t = prog.type("struct cma")
    multi = any(m.name == "nranges" for m in cma_t.members)
    for i in range(prog["cma_area_count"].value_()):
        c = prog["cma_areas"][i]
        opb = c.order_per_bit.value_()
        if multi:
            flags = c.flags.value_()
            active = bool(flags >> prog["CMA_ACTIVATED"].value_() & 1)
            rngs = [(r.base_pfn.value_(), r.count.value_(), r.bitmap.value_() if active else 0)
                    for r in (c.ranges[j] for j in range(c.nranges.value_()))]
        else:
            rngs = [(c.base_pfn.value_(), c.count.value_(), c.bitmap.value_())]
        ranges = []
        for base, count, bm in rngs:
            nbits = count >> opb
            bits = None
            if bm:
                raw = prog.read(bm, (nbits + 63) // 64 * 8)
                val = int.from_bytes(raw, "little")
                bits = np.array([val >> k & 1 for k in range(nbits)], bool)
            ranges.append({"base_pfn": base, "count": count, "bits": bits})
        out.append({"name": c.name.string_().decode(), "count": c.count.value_(),
                    "order_per_bit": opb, "ranges": ranges})
    return out


def drgn_free_pfns(prog) -> tuple[dict[int, str], set[int]]:
    """The free lists walked with drgn: {pfn: migratetype name} of every page of every
    free block, and the set of pfns on the per-CPU lists (every page of each block)."""
    names = [prog["migratetype_names"][i].string_().decode()
             for i in range(prog["MIGRATE_TYPES"].value_())]
    page_t = prog.type("struct page")
    link = "buddy_list" if any(m.name == "buddy_list" for m in page_t.members) else "lru"
    plink = "pcp_list" if any(m.name == "pcp_list" for m in page_t.members) else "lru"
    buddy: dict[int, str] = {}
    pcp: set[int] = set()
    for pgdat in for_each_online_pgdat(prog):
        for z in range(pgdat.nr_zones.value_()):
            zone = pgdat.node_zones[z]
            if not zone.present_pages.value_():
                continue
            for order in range(len(zone.free_area)):
                fa = zone.free_area[order]
                for mt in range(len(fa.free_list)):
                    for page in list_for_each_entry("struct page",
                                                    fa.free_list[mt].address_of_(), link):
                        pfn = page_to_pfn(page).value_()
                        for p in range(pfn, pfn + (1 << order)):
                            buddy[p] = names[mt]
            pcps = zone.per_cpu_pageset
            for cpu in for_each_possible_cpu(prog):
                pc = per_cpu_ptr(pcps, cpu)
                nl = len(pc.lists)
                for li in range(nl):
                    order = li // 3 if li < 12 else \
                        (prog["PAGE_SIZE"].value_() // 8).bit_length() - 1
                    for page in list_for_each_entry("struct page", pc.lists[li].address_of_(),
                                                    plink):
                        pfn = page_to_pfn(page).value_()
                        pcp.update(range(pfn, pfn + (1 << order)))
    return buddy, pcp


def drgn_batched(prog) -> dict[int, int]:
    """pfn -> references held by the per-CPU folio batches (mm/swap.c cpu_fbatches, every
    struct folio_batch member; mm/mlock.c mlock_fbatch), read with drgn's objects."""
    out: dict[int, int] = {}
    for var in ("cpu_fbatches", "mlock_fbatch"):
        try:
            v = prog[var]
        except KeyError:
            continue
        members = [m.name for m in v.type_.members
                   if m.type.type_name() == "struct folio_batch"]
        for cpu in for_each_possible_cpu(prog):
            pc = per_cpu(v, cpu)
            for m in members:
                fb = getattr(pc, m)
                for i in range(fb.nr.value_()):
                    pfn = page_to_pfn(cast("struct page *", fb.folios[i])).value_()
                    out[pfn] = out.get(pfn, 0) + 1
    return out


def drgn_blockers(prog, lo: int, hi: int, buddy: dict, pcp: set,
                  batched: dict) -> dict[int, bool]:
    """{pfn: blocks} for pfns [LO, HI): alloc_contig_range()'s rules re-done on drgn's
    objects.  Free: on a free list or a pcp list, or refcount 0.  Movable: its folio is on
    the LRU (PageLRU) or in a per-CPU LRU batch, is not pinned (order 0: refcount >=
    GUP_PIN_COUNTING_BIAS, 1024; large: folio->_pincount) and, order 0, holds no
    reference beyond include/linux/mm.h folio_expected_ref_count() (mappings, page cache,
    PG_private, swap cache) and its batches'; non-LRU movable (mapping & 3 ==
    PAGE_MAPPING_MOVABLE) or a hugetlb folio.  Anything else allocated blocks."""
    out = {}
    pgty_hugetlb = None
    try:
        pgty_hugetlb = prog["PGTY_hugetlb"].value_()
    except KeyError:
        pass
    bit = {n: prog[n].value_() for n in ("PG_private", "PG_swapcache", "PG_swapbacked")}
    for pfn in range(lo, hi):
        if pfn in buddy or pfn in pcp:
            out[pfn] = False
            continue
        page = pfn_to_page(prog, pfn)
        head = compound_head(page)
        ref = page._refcount.counter.value_()
        if ref == 0 and not PageLRU(head):
            out[pfn] = False
            continue
        if pgty_hugetlb is not None and head.page_type.value_() >> 24 == pgty_hugetlb:
            out[pfn] = False
            continue
        mapping = head.mapping.value_()
        if mapping & 3 == 2:
            out[pfn] = False
            continue
        if PageLRU(head) or pfn in batched:
            if PageHead(head):  # a large folio counts its pins in _pincount
                out[pfn] = cast("struct folio *", head)._pincount.counter.value_() > 0
                continue
            if ref >= 1024:
                out[pfn] = True
                continue
            try:  # 7.2: memdesc_flags_t { unsigned long f; }
                flags = head.flags.f.value_()
            except (AttributeError, LookupError, TypeError):
                flags = head.flags.value_()
            anon = mapping & 1
            expected = page._mapcount.counter.value_() + 1
            if flags >> bit["PG_swapbacked"] & 1 and flags >> bit["PG_swapcache"] & 1:
                expected += 1
            if not anon and mapping:
                expected += 1 + (flags >> bit["PG_private"] & 1)
            out[pfn] = ref > expected + batched.get(pfn, 0)
            continue
        out[pfn] = True
    return out


_TRUTH: dict[str, dict] = {}


def truth(snap, prog) -> dict:
    """drgn's reading of SNAP, once per case: areas, free pages, blockers per area range."""
    key = str(snap.vmcore)
    if key not in _TRUTH:
        areas = drgn_areas(prog)
        buddy, pcp = drgn_free_pfns(prog)
        batched = drgn_batched(prog)
        for a in areas:
            for r in a["ranges"]:
                r["blocks"] = drgn_blockers(prog, r["base_pfn"], r["base_pfn"] + r["count"],
                                            buddy, pcp, batched)
        _TRUTH[key] = {"areas": areas, "buddy": buddy, "pcp": pcp}
    return _TRUTH[key]


def expected_search(area: dict, count: int, align: int):
    """cma_alloc()'s search written out by brute force on drgn's reading: in range order,
    every aligned position whose COUNT pages' bits are clear, in increasing order (what
    bitmap_find_next_zero_area_off() from start = last + mask + 1 visits); the first whose
    pages hold no blocker wins.  Returns (winner's start pfn or None, [(candidate start
    pfn, its first blocking pfn)] of the busy ones before it, the set of every blocking
    pfn of those)."""
    opb = area["order_per_bit"]
    nbits = -(-count // (1 << opb))
    mask = (1 << (align - opb)) - 1 if align > opb else 0
    busy, pages = [], set()
    for r in area["ranges"]:
        bits = r["bits"]
        if bits is None or nbits > len(bits):
            continue
        base = r["base_pfn"]
        bad = np.array(sorted(p - base for p, b in r["blocks"].items() if b), np.int64)
        offset = (base & ((1 << align) - 1)) >> opb
        for i in range(len(bits) - nbits + 1):
            if (i + offset) & mask or bits[i:i + nbits].any():
                continue
            lo = i << opb
            inside = bad[(bad >= lo) & (bad < lo + count)]
            if not len(inside):
                return base + lo, busy, pages
            busy.append((base + lo, base + int(inside[0])))
            pages.update((base + inside).tolist())
    return None, busy, pages


# --- totals against the guest's own files -----------------------------------------------------
def test_area_pages_add_up_to_cmatotal(case):
    snap, prog, ctx = case
    areas = mcma.cma_areas(ctx)
    assert areas, "the case has CMA areas"
    assert sum(a.count for a in areas) * ctx.t.page_size // 1024 == _meminfo_kb(snap, "CmaTotal")


def _pagetypeinfo_cma_pages(text: str) -> int:
    total = 0
    for line in text.splitlines():
        m = re.match(r"Node\s+\d+, zone\s+\S+, type\s+CMA\s+(.*)$", line)
        if m:
            total += sum(int(n) << o for o, n in enumerate(m.group(1).split()))
    return total


def test_buddy_free_in_the_areas_equals_pagetypeinfos_cma_column(case):
    """/proc/pagetypeinfo's CMA rows (the lab checked every free list's length in the dump
    against them with drgn) count exactly the free pages on MIGRATE_CMA lists, all of
    which lie in areas."""
    snap, prog, ctx = case
    areas = mcma.cma_areas(ctx)
    assert sum(a.buddy_free for a in areas) == _pagetypeinfo_cma_pages(
        snap.truth_text("pagetypeinfo"))


def test_buddy_free_equals_nr_free_cma_pages_and_cmafree(case):
    """NR_FREE_CMA_PAGES summed over the zones with every CPU's unfolded diff (drgn) is
    exactly the pages found on the CMA free lists; /proc/meminfo's CmaFree is the global
    counter without the per-CPU diffs (global_zone_page_state()), which drgn reads on
    the dump: the guest's CmaFree must be it."""
    snap, prog, ctx = case
    areas = mcma.cma_areas(ctx)
    found = sum(a.buddy_free for a in areas)
    item = prog["NR_FREE_CMA_PAGES"].value_()
    exact = 0
    for pgdat in for_each_online_pgdat(prog):
        for z in range(pgdat.nr_zones.value_()):
            zone = pgdat.node_zones[z]
            exact += zone.vm_stat[item].counter.value_()
            for cpu in for_each_possible_cpu(prog):
                exact += per_cpu_ptr(zone.per_cpu_zonestats, cpu).vm_stat_diff[item].value_()
    assert found == exact
    cmafree = int(global_zone_page_state(prog, item))
    assert _meminfo_kb(snap, "CmaFree") == cmafree * ctx.t.page_size // 1024
    print(f"{snap.kernel}: {found} pages on CMA free lists, CmaFree {cmafree} pages "
          f"(per-CPU diffs {found - cmafree})")


# --- the bitmaps against drgn ------------------------------------------------------------------
def test_areas_ranges_and_bitmaps_are_drgns(case):
    snap, prog, ctx = case
    want = truth(snap, prog)["areas"]
    got = mcma.cma_areas(ctx)
    assert [(a.name, a.count, a.order_per_bit) for a in got] == \
        [(a["name"], a["count"], a["order_per_bit"]) for a in want]
    for g, w in zip(got, want):
        assert [(r.base_pfn, r.count) for r in g.ranges] == \
            [(r["base_pfn"], r["count"]) for r in w["ranges"]]
        for gr, wr in zip(g.ranges, w["ranges"]):
            bits = wr["bits"]
            assert (gr.bitmap is None) == (bits is None)
            if bits is None:
                continue
            assert gr.allocated == int(bits.sum()) << w["order_per_bit"]
            assert gr.free == int((~bits).sum()) << w["order_per_bit"]
            # debugfs maxchunk: the longest run of clear bits, written as a loop
            longest = run = 0
            for b in bits.tolist():
                run = 0 if b else run + 1
                longest = max(longest, run)
            assert gr.maxchunk == longest << w["order_per_bit"]


@pytest.mark.parametrize("case", SYSFS_CASES, indirect=True)
def test_bitmap_allocated_equals_sysfs_success_minus_released(case):
    """CONFIG_CMA_SYSFS: /sys/kernel/mm/cma/<area>/alloc_pages_success counts the pages
    cma_alloc() gave out, release_pages_success those cma_release() took back."""
    snap, prog, ctx = case
    for a in mcma.cma_areas(ctx):
        ok = int(snap.truth_text(f"cma/{a.name}/alloc_pages_success"))
        rel = int(snap.truth_text(f"cma/{a.name}/release_pages_success"))
        assert a.allocated == ok - rel, a.name


def test_pcp_and_other_lists_in_the_areas_are_drgns(case):
    snap, prog, ctx = case
    t = truth(snap, prog)
    for a in mcma.cma_areas(ctx):
        pfns = [p for r in a.ranges for p in range(r.base_pfn, r.end_pfn)]
        assert a.pcp == sum(p in t["pcp"] for p in pfns)
        assert a.buddy_free == sum(t["buddy"].get(p) == "CMA" for p in pfns)
        assert a.buddy_free_other == sum(t["buddy"].get(p) not in (None, "CMA") for p in pfns)


# --- the map and --can-alloc -------------------------------------------------------------------
def test_map_names_exactly_the_pages_that_block_migration(case):
    """Every page of the free part of the bitmap that drgn's reading says would make
    alloc_contig_range() fail is named in a blocked run, and no other page is."""
    snap, prog, ctx = case
    t = truth(snap, prog)
    for a, w in zip(mcma.cma_areas(ctx), t["areas"]):
        runs = mcma.chunk_map(ctx, a)
        named = {p for r in runs for p, _ in r.blockers}
        want = set()
        step = 1 << a.order_per_bit
        for wr in w["ranges"]:
            for i, taken in enumerate(wr["bits"].tolist()):
                if not taken:
                    lo = wr["base_pfn"] + i * step
                    want.update(p for p in range(lo, lo + step) if wr["blocks"][p])
        assert named == want
        # runs tile the area and taken runs are exactly the set bits
        assert sum(r.end_pfn - r.start_pfn for r in runs) == a.count
        assert sum(r.end_pfn - r.start_pfn for r in runs if r.state == "taken") == a.allocated


def _counts(area: mcma.CmaArea) -> list[tuple[int, int]]:
    """(count, align) pairs to try: one page, a 64-page run aligned to 16 pages, the
    largest free run, one more than it, and the whole area."""
    return [(1, 0), (64, 4), (max(area.maxchunk, 1), 0), (area.maxchunk + 1, 0),
            (area.count, 0), (area.maxchunk // 2 + 1, 9)]


def test_can_alloc_follows_cma_allocs_search_and_names_the_blockers(case):
    snap, prog, ctx = case
    t = truth(snap, prog)
    for a, w in zip(mcma.cma_areas(ctx), t["areas"]):
        for count, align in _counts(a):
            start, busy, pages = expected_search(w, count, align)
            res = mcma.can_alloc(ctx, a, count, align)
            what = f"{a.name} count {count} align {align}"
            if a.available_count is not None and count > a.available_count:
                assert not res.ok and not res.tried, what
                continue
            assert res.ok == (start is not None), what
            assert res.start_pfn == start, what
            assert res.busy == len(busy) and res.tried == len(busy) + res.ok, what
            assert [(c.start_pfn, c.blockers[0][0]) for c in res.candidates] == \
                busy[:mcma.MAX_CANDIDATES], what
            assert {p for p, _ in res.blocking_pages} == pages, what


def test_can_alloc_says_no_with_the_blocking_page_named_when_drgn_finds_one(case):
    """A page drgn finds unmovable in the free part of the bitmap: a request for the whole
    free run around it cannot take that run, and the answer names the page."""
    snap, prog, ctx = case
    t = truth(snap, prog)
    for a, w in zip(mcma.cma_areas(ctx), t["areas"]):
        for r, wr in zip(a.ranges, w["ranges"]):
            bad = [p for p, b in wr["blocks"].items()
                   if b and not wr["bits"][(p - wr["base_pfn"]) >> a.order_per_bit]]
            if not bad:
                continue
            p = bad[0]
            # the free run of bits around p
            i = j = (p - r.base_pfn) >> a.order_per_bit
            while i > 0 and not wr["bits"][i - 1]:
                i -= 1
            while j < len(wr["bits"]) and not wr["bits"][j]:
                j += 1
            count = (j - i) << a.order_per_bit
            res = mcma.can_alloc(ctx, a, count)
            start = r.base_pfn + (i << a.order_per_bit)
            assert not (res.ok and res.start_pfn == start), \
                f"{a.name}: pfn {p:#x} blocks but the run around it was given"
            assert p in {q for q, _ in res.blocking_pages}
            return
    pytest.skip("drgn finds no unmovable page in the free part of any area of this case "
                "(test_map_names_exactly_the_pages_that_block_migration checks memscope "
                "names none either)")


# --- the command -------------------------------------------------------------------------------
def _cli(snap, *args):
    return subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore),
                           "-s", str(snap.vmlinux), *args], capture_output=True, text=True,
                          timeout=300)


def test_json_has_one_record_per_area_with_the_documented_keys(case):
    import json

    snap, prog, ctx = case
    r = _cli(snap, "cma", "-f", "json")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert [x["name"] for x in recs] == [a["name"] for a in truth(snap, prog)["areas"]]
    for x in recs:
        assert {"name", "count", "allocated", "buddy_free"} <= set(x)


def test_an_unknown_area_is_one_line_exit_2(case):
    snap, _, _ = case
    r = _cli(snap, "cma", "no-such-area", "--map")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no-such-area" in r.stderr


@pytest.mark.parametrize("name,what", [("6.12", "has no CMA"), ("7.2", "has no CMA area")])
def test_a_kernel_without_cma_or_without_an_area_says_so_in_one_line(lab_case, name, what):
    """6.12 x86_64 has no CONFIG_CMA (drgn: no cma_areas); 7.2 x86_64 has it with no
    area unless cma= is given (drgn: cma_area_count is 0)."""
    snap = lab_case(name)
    prog, _ = open_dump(snap)
    if name == "6.12":
        with pytest.raises(KeyError):
            prog["cma_areas"]
    else:
        assert prog["cma_area_count"].value_() == 0
    for args in (["cma"], ["cma", "reserved", "--map"], ["cma", "x", "--can-alloc", "1"]):
        r = _cli(snap, *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n") == 1 and what in r.stdout, r.stdout


# --- GDB on a frozen guest prints what drgn prints on its dump -----------------------------------
#: Frozen guests (lab run --keep) with the cma workload: tests/guests.py CMA_GUESTS, booted
#: ahead of the test by guests.POOL (the kept_guest fixture).
GDB_GUESTS = ["7.2-cma", "6.12-arm64-cma", "7.2-arm64-cma"]
GDB_RUNS = [["cma"], ["cma", "-f", "json"], ["cma", "reserved", "--map"],
            ["cma", "reserved", "--map", "-f", "json"],
            ["cma", "reserved", "--can-alloc", "64", "--align", "4"],
            ["cma", "reserved", "--can-alloc", "4096", "-f", "json"],
            ["cma", "reserved", "--can-alloc", "1000000"],
            ["cma", "reserved", "--png", "{png}/cma.png"]]
GDB_DRIVER = r"""
import json, gdb
plan = json.load(open(PLAN))
gdb.execute("memscope buddyinfo", to_string=True)  # the first command notes the KASLR offset
out = []
for argv in plan["runs"]:
    try:
        text, err = gdb.execute("memscope " + " ".join(argv), to_string=True), None
    except gdb.error as e:
        text, err = None, str(e)
    out.append({"out": text, "error": err,
                "status": int(gdb.convenience_variable("memscope_status"))})
json.dump(out, open(plan["output"], "w"))
"""


@pytest.mark.lab
@pytest.mark.parametrize("kept_guest", GDB_GUESTS, indirect=True)
def test_gdb_on_the_frozen_guest_prints_what_drgn_prints_on_its_dump(kept_guest, tmp_path):
    import guests

    g = kept_guest
    name = g.name
    gdb = "gdb-multiarch" if g.arch == "aarch64" else "gdb"
    try:
        if not guests.have(gdb):
            pytest.skip(f"{gdb} is not installed")
        want = guests.run_cli(["-c", g.vmcore, "-s", g.vmlinux], GDB_RUNS, tmp_path / "cli",
                              tmp_path / "png-cli")
        work = tmp_path / "gdb"
        work.mkdir()
        (work / "png").mkdir()
        import json

        (work / "plan.json").write_text(json.dumps(
            {"runs": [guests.concrete(a, work / "png") for a in GDB_RUNS],
             "output": str(work / "result.json")}))
        p = guests.gdb_batch(gdb, g.vmlinux, g.gdb_port, GDB_DRIVER, work)
        assert (work / "result.json").exists(), f"gdb failed:\n{p.stdout}\n{p.stderr}"
        got = [{**r, "argv": a, "err": ""} for r, a in
               zip(json.loads((work / "result.json").read_text()), GDB_RUNS)]
        for g_, w_ in zip(got, want):  # the first difference, line by line
            if g_["out"] != w_["out"] and g_["out"] is not None:
                diff = [(a, b) for a, b in zip(g_["out"].splitlines(), w_["out"].splitlines())
                        if a != b][:3]
                pytest.fail(f"{name} gdb: memscope {' '.join(w_['argv'])} differs from drgn "
                            f"on the vmcore (gdb, drgn): {diff}")
        guests.assert_same(got, want, work / "png", tmp_path / "png-cli", f"{name} gdb")
    finally:
        guests.POOL.release(name)


def test_png_draws_the_taken_chunks_and_the_blocking_pages_where_drgn_finds_them(case, tmp_path):
    """--png: at each page's pixel (the geometry in the PNG's text chunks), the
    ``cma_taken`` colour exactly where drgn's bitmap has the page's bit set, and the
    colour of a blocking class (``pinned``, ``referenced``, ...) at the pages drgn's rules
    say block."""
    from PIL import Image

    from memscope.report.png import CLASS_COLOURS

    snap, prog, ctx = case
    w = truth(snap, prog)["areas"][0]
    out = tmp_path / "cma.png"
    r = _cli(snap, "cma", w["name"], "--png", str(out))
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    geo = {k.split(":", 1)[1]: int(v) for k, v in im.text.items() if k.startswith("memscope:")}
    rgb = np.asarray(im.convert("RGB"))
    taken = np.array(CLASS_COLOURS["cma_taken"], np.uint8)
    movable_or_free = {tuple(CLASS_COLOURS[c]) for c in
                       (*mcma.FREE_CLASSES, *mcma.MOVABLE_CLASSES, "other")}
    step = 1 << w["order_per_bit"]
    for wr in w["ranges"]:
        for i, bit in enumerate(wr["bits"].tolist()):
            for pfn in range(wr["base_pfn"] + i * step, wr["base_pfn"] + (i + 1) * step):
                q = pfn - geo["origin_pfn"]
                x = geo["map_x"] + (q % geo["pages_per_row"]) * geo["px_x"]
                y = geo["map_y"] + (q // geo["pages_per_row"]) * geo["px_y"]
                px = rgb[y, x]
                assert bool((px == taken).all()) == bit, hex(pfn)
                if not bit:
                    assert (tuple(px.tolist()) not in movable_or_free) == wr["blocks"][pfn], \
                        hex(pfn)
