"""pages: every struct page classified, on every lab kernel.

Exact where the kernel's own structures must agree: the buddy pages found in the memmap
equal free_area[].nr_free (buddyinfo) block for block, and the zone's NR_FREE_PAGES counter
plus its per-CPU deltas.  Within a stated tolerance where /proc/meminfo counts differently:

- per-CPU vmstat drift: meminfo reads the global counters without the per-CPU deltas
  (vm_stat_diff), each of which stays below stat_threshold; the bound DRIFT is
  sum(stat_threshold) over CPUs and zones, read from the dump.
- AnonPages counts *mapped* anon pages (NR_ANON_MAPPED); a large anon folio partially
  unmapped (deferred split) is counted whole by `pages`, so anon may exceed AnonPages by at
  most the pages of anon large folios.
- Slab is NR_SLAB_*_B, which also counts kmalloc() allocations too large for a slab
  (kmalloc_large): typed PGTY_large_kmalloc from 7.2 (so exact within drift there), before
  7.2 plain compound pages counted as "kernel"; Slab may exceed slab pages by at most the
  pages of untyped kernel compound pages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import drgn
import numpy as np
import pytest
from drgn.helpers.linux.fs import path_lookup
from drgn.helpers.linux.mm import follow_pfn, page_to_pfn
from drgn.helpers.linux.percpu import per_cpu_ptr
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.pid import find_task
from drgn.helpers.linux.xarray import xa_load

from memscope.mm import page as mpage
from memscope.mm.zone import MM
from memscope.target.drgn import DrgnTarget, open_core

ROOT = Path(__file__).resolve().parents[1]
_MM: dict[str, MM] = {}


def mm_for(snap) -> MM:
    key = str(snap.vmcore)
    if key not in _MM:
        _MM[key] = MM(DrgnTarget(open_core(snap.vmcore, snap.vmlinux)))
    return _MM[key]


def meminfo_pages(snap) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1]) // 4
            for line in snap.truth_text("meminfo").splitlines()}


def buddyinfo(snap) -> list[list[int]]:
    return [[int(x) for x in line.split()[4:]] for line in snap.truth_text("buddyinfo").splitlines()]


def _zones(prog):
    from drgn.helpers.linux.mmzone import for_each_online_pgdat
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if zone.present_pages:
                yield zone


def vmstat_drift_bound(prog) -> int:
    """sum over zones and possible CPUs of the per-CPU stat_threshold (5.10: zone->pageset,
    5.14+: zone->per_cpu_zonestats)."""
    total = 0
    for zone in _zones(prog):
        for cpu in for_each_possible_cpu(prog):
            if hasattr(zone, "per_cpu_zonestats"):
                total += per_cpu_ptr(zone.per_cpu_zonestats, cpu).stat_threshold.value_()
            else:
                total += per_cpu_ptr(zone.pageset, cpu).stat_threshold.value_()
    return total


def pcp_batch_bound(prog) -> int:
    """sum over zones and possible CPUs of pcp->batch: how many pages one refill or drain
    moves between the buddy lists and a per-CPU list."""
    total = 0
    for zone in _zones(prog):
        for cpu in for_each_possible_cpu(prog):
            if hasattr(zone, "per_cpu_pageset"):
                total += per_cpu_ptr(zone.per_cpu_pageset, cpu).batch.value_()
            else:
                total += per_cpu_ptr(zone.pageset, cpu).pcp.batch.value_()
    return total


def exact_free_counter(prog, zone) -> int:
    """zone_page_state_snapshot(zone, NR_FREE_PAGES): the atomic plus every CPU's delta."""
    item = prog["NR_FREE_PAGES"].value_()
    v = zone.vm_stat[item].counter.value_()
    for cpu in for_each_possible_cpu(prog):
        if hasattr(zone, "per_cpu_zonestats"):
            v += per_cpu_ptr(zone.per_cpu_zonestats, cpu).vm_stat_diff[item].value_()
        else:
            v += per_cpu_ptr(zone.pageset, cpu).vm_stat_diff[item].value_()
    return v


def test_buddy_pages_equal_buddyinfo_block_for_block(real_kernel):
    mm = mm_for(real_kernel)
    rows = mpage.zone_counts(mm)
    truth = buddyinfo(real_kernel)
    assert [r.buddy_blocks for r in rows] == truth
    for r, t in zip(rows, truth):
        assert r.counts["buddy"] == sum(n << o for o, n in enumerate(t))


def test_buddy_pages_equal_the_zone_free_counter_with_its_per_cpu_deltas(real_kernel):
    # NR_FREE_PAGES counts buddy pages only (pcp pages left it when they were taken), so the
    # exact counter equals what the memmap holds.
    mm = mm_for(real_kernel)
    prog = mm.t.prog
    rows = mpage.zone_counts(mm)
    assert [r.counts["buddy"] for r in rows] == [exact_free_counter(prog, z)
                                                 for z in _zones(prog)]


def test_meminfo_lines_agree_within_vmstat_drift(real_kernel):
    mm = mm_for(real_kernel)
    pm = mpage.memmap(mm)
    mi = meminfo_pages(real_kernel)
    drift = vmstat_drift_bound(mm.t.prog)
    tot = {c: int(np.count_nonzero(pm.cls == i)) for i, c in enumerate(mpage.CLASSES)}
    pl = mpage.page_layout(mm)
    is_head = ((pm.pages["flags"] >> np.uint64(pl.PG_head)) & np.uint64(1)) == 1

    def large(cls: str) -> int:  # pages in compound folios of class CLS
        sel = pm.cls == mpage.C[cls]
        return int(np.count_nonzero(sel & (pm.tail | is_head)))

    # meminfo is read before the other /proc files, buddyinfo and the freeze; reading them
    # allocates and refills per-CPU lists (6.7+ refills batch << alloc_factor pages at a
    # time), so MemFree is compared loosely: within drift + 1% of the memory.  (The exact
    # comparison is the NR_FREE_PAGES test above; 119 pages was the largest gap seen.)
    assert abs(tot["buddy"] - mi["MemFree"]) <= drift + mi["MemTotal"] // 100
    assert abs(tot["pagecache"] - (mi["Cached"] + mi["Buffers"])) <= drift
    assert abs(tot["pagetable"] - mi["PageTables"]) <= drift
    assert -drift <= tot["anon"] - mi["AnonPages"] <= large("anon") + drift
    slab = tot["slab"] + tot["kmalloc_large"]
    assert -drift <= mi["Slab"] - slab <= large("kernel") + drift
    if "kmalloc_large" in str(mm.t.enum("enum pagetype") if pl.pagetype else ""):
        assert abs(mi["Slab"] - slab) <= drift  # 7.2+: large kmalloc is typed


def test_a_frozen_dump_has_no_inconsistent_page(real_kernel):
    pm = mpage.memmap(mm_for(real_kernel))
    assert not pm.inconsistent.any()
    assert pm.pcp_findings == []
    assert pm.unreadable_pages == 0


def test_every_pfn_of_every_zone_has_a_class_and_pcp_pages_are_free(real_kernel):
    mm = mm_for(real_kernel)
    pm = mpage.memmap(mm)
    rows = mpage.zone_counts(mm)
    for r in rows:
        assert sum(r.counts.values()) == r.end_pfn - r.start_pfn
    pcp = pm.cls == mpage.C["pcp"]
    assert (pm.pages["refcount"][pcp] == 0).all()
    assert pcp.any()


def _heap_task(snap):
    for d in snap.dir.joinpath("truth").iterdir():
        if d.is_dir() and (d / "label").read_text().strip() == "heap":
            return int(d.name), (d / "maps").read_text()
    pytest.skip("no tracked heap process")


def test_the_heap_process_pages_are_anon(real_kernel):
    mm = mm_for(real_kernel)
    prog = mm.t.prog
    pm = mpage.memmap(mm)
    pid, maps = _heap_task(real_kernel)
    task_mm = find_task(prog, pid).mm
    checked = 0
    for line in maps.splitlines():
        f = line.split()
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        # The brk heap and the three large anonymous mmaps: memory the workload wrote
        # (untouched anonymous memory, e.g. busybox's bss, may map the shared zero page).
        if f[1] != "rw-p" or not ("[heap]" in line or len(f) == 5 and hi - lo >= 1 << 20):
            continue
        for addr in range(lo, hi, max(4096, (hi - lo) // 16 & ~4095)):
            try:
                pfn = follow_pfn(task_mm, addr).value_()
            except drgn.FaultError:
                continue  # not faulted in
            assert mpage.CLASSES[pm.cls[pfn]] == "anon", (hex(addr), pfn)
            checked += 1
    assert checked > 20


def test_the_workload_tmpfs_files_are_page_cache(real_kernel):
    mm = mm_for(real_kernel)
    prog = mm.t.prog
    pm = mpage.memmap(mm)
    if real_kernel.meta["workload_name"] != "mixed":
        pytest.skip("the pagecache-frag files belong to the mixed workload")
    for name in ("f1", "f3", "f2999"):
        inode = path_lookup(prog, f"/tmp/pagecache/{name}").dentry.d_inode
        entry = xa_load(inode.i_mapping.i_pages.address_of_(), 0)
        pfn = page_to_pfn(drgn.cast("struct page *", entry)).value_()
        assert mpage.CLASSES[pm.cls[pfn]] == "pagecache"


def memscope(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memscope.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_pages_pfn_lists_a_range_as_json(lab_case, tmp_path):
    snap = lab_case("6.12")
    pm = mpage.memmap(mm_for(snap))
    lo = int(np.flatnonzero(pm.cls == mpage.C["slab"])[0])
    p = memscope("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "pages", "--pfn",
                 f"{lo:#x}-{lo + 15:#x}", "-f", "json")
    assert p.returncode == 0, p.stderr
    recs = json.loads(p.stdout)
    assert [r["pfn"] for r in recs] == list(range(lo, lo + 16))
    assert [r["cls"] for r in recs] == [mpage.CLASSES[c] for c in pm.cls[lo:lo + 16]]
    assert recs[0]["cls"] == "slab"


def test_pages_png_is_a_png_of_the_map(lab_case, tmp_path):
    snap = lab_case("6.12")
    out = tmp_path / "map.png"
    p = memscope("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "pages", "--png", str(out))
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert w >= 512 and h >= 256


@pytest.mark.parametrize("pfn", ["zz", "10-5", "0-99999999"])
def test_a_bad_pfn_range_is_one_line(lab_case, pfn):
    snap = lab_case("6.12")
    p = memscope("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "pages", "--pfn", pfn)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("memscope: ")


def test_an_unwritable_png_path_is_one_line(lab_case):
    snap = lab_case("6.12")
    p = memscope("-c", str(snap.vmcore), "-s", str(snap.vmlinux), "pages", "--png",
                 "/nonexistent/dir/map.png")
    assert p.returncode == 2 and p.stderr.startswith("memscope: ")
    assert len(p.stderr.strip().splitlines()) == 1


def test_drgn_api_returns_what_the_cli_prints(real_kernel):
    """memscope.drgn_api's pages, pageblocks and frag on a drgn Program give the records
    the command line prints as JSON."""
    import dataclasses

    import memscope.drgn_api as ms
    from memscope.target.drgn import open_core

    prog = open_core(real_kernel.vmcore, real_kernel.vmlinux)
    for name, records in (("pages", ms.pages(prog)), ("frag", ms.frag(prog))):
        p = memscope("-c", str(real_kernel.vmcore), "-s", str(real_kernel.vmlinux), name,
                     "-f", "json")
        assert p.returncode == 0, p.stderr
        cli = [z for z in json.loads(p.stdout) if "zone" in z]
        assert json.loads(json.dumps([dataclasses.asdict(r) for r in records])) == cli, name
    assert len(ms.pageblocks(prog)) == len(cli)
