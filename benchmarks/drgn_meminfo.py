"""The answer key of /proc/meminfo on a dump: the kernel's formulas written with drgn's own
helpers and Objects (never memscope.mm), for the lines drgn can compute on its own.

Shared by tests/test_meminfo.py (every line memscope computes equals drgn's) and
benchmarks/bench_meminfo.py (the baseline memscope's ``meminfo`` is timed against).
"""

from __future__ import annotations

from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import totalram_pages, vm_commit_limit, vm_memory_committed
from drgn.helpers.linux.mmzone import for_each_online_pgdat, low_wmark_pages
from drgn.helpers.linux.vmstat import global_node_page_state, global_zone_page_state


def _has(prog, name: str) -> bool:
    try:
        prog[name]
        return True
    except KeyError:
        return False


def _gn(prog, item: str) -> int:
    return global_node_page_state(prog, prog[item])


def _gz(prog, item: str) -> int:
    return global_zone_page_state(prog, prog[item])


def _is_node_item(prog, item: str) -> bool:
    return prog[item].type_.type_name() == prog.type("enum node_stat_item").type_name()


def drgn_meminfo(prog) -> dict[str, int]:
    """The lines drgn can compute on its own, name -> the number /proc/meminfo prints."""
    k = prog["PAGE_SIZE"].value_() // 1024
    out: dict[str, int] = {}
    out["MemTotal"] = totalram_pages(prog) * k
    out["MemFree"] = _gz(prog, "NR_FREE_PAGES") * k
    # nr_blockdev_pages()
    sb = prog["blockdev_superblock"]
    buffers = sum(inode.i_mapping.nrpages.value_() for inode in
                  list_for_each_entry("struct inode", sb.s_inodes.address_of_(), "i_sb_list"))
    out["Buffers"] = buffers * k
    swapcache = _gn(prog, "NR_SWAPCACHE") if _has(prog, "NR_SWAPCACHE") else 0
    assert _has(prog, "NR_SWAPCACHE") or prog["nr_swapfiles"].value_() == 0
    out["SwapCached"] = swapcache * k
    out["Cached"] = max(_gn(prog, "NR_FILE_PAGES") - swapcache - buffers, 0) * k
    lru = {n: _gn(prog, f"NR_{n}") for n in ("ACTIVE_ANON", "INACTIVE_ANON", "ACTIVE_FILE",
                                             "INACTIVE_FILE", "UNEVICTABLE")}
    out["Active"] = (lru["ACTIVE_ANON"] + lru["ACTIVE_FILE"]) * k
    out["Inactive"] = (lru["INACTIVE_ANON"] + lru["INACTIVE_FILE"]) * k
    out["Active(anon)"], out["Inactive(anon)"] = lru["ACTIVE_ANON"] * k, lru["INACTIVE_ANON"] * k
    out["Active(file)"], out["Inactive(file)"] = lru["ACTIVE_FILE"] * k, lru["INACTIVE_FILE"] * k
    out["Unevictable"] = lru["UNEVICTABLE"] * k
    out["Mlocked"] = _gz(prog, "NR_MLOCK") * k
    out["SwapTotal"] = prog["total_swap_pages"].value_() * k
    out["SwapFree"] = prog["nr_swap_pages"].counter.value_() * k
    for name, item in (("Dirty", "NR_FILE_DIRTY"), ("Writeback", "NR_WRITEBACK"),
                       ("AnonPages", "NR_ANON_MAPPED"), ("Mapped", "NR_FILE_MAPPED"),
                       ("Shmem", "NR_SHMEM")):
        out[name] = _gn(prog, item) * k
    sr, su = _gn(prog, "NR_SLAB_RECLAIMABLE_B"), _gn(prog, "NR_SLAB_UNRECLAIMABLE_B")
    out["KReclaimable"] = (sr + _gn(prog, "NR_KERNEL_MISC_RECLAIMABLE")) * k
    out["Slab"], out["SReclaimable"], out["SUnreclaim"] = (sr + su) * k, sr * k, su * k
    out["KernelStack"] = _gn(prog, "NR_KERNEL_STACK_KB")
    out["PageTables"] = (_gn(prog, "NR_PAGETABLE") if _is_node_item(prog, "NR_PAGETABLE")
                         else _gz(prog, "NR_PAGETABLE")) * k
    out["CommitLimit"] = vm_commit_limit(prog) * k
    out["Committed_AS"] = vm_memory_committed(prog) * k
    # percpu_counter_sum sums the online CPUs only in drgn 0.3.0: on these frozen guests
    # no CPU is dying, which the memscope side also sums.
    if _has(prog, "__cpu_dying_mask"):
        bits = prog["__cpu_dying_mask"].bits
        assert not any(bits[i].value_() for i in range(len(bits)))
    out["VmallocUsed"] = (_gn(prog, "NR_VMALLOC") if _has(prog, "NR_VMALLOC")
                          else prog["nr_vmalloc_pages"].counter.value_()) * k
    out["Percpu"] = prog["pcpu_nr_populated"].value_() * prog["pcpu_nr_units"].value_() * k
    # si_mem_available()
    wmark_low = sum(low_wmark_pages(z) for pgdat in for_each_online_pgdat(prog)
                    for z in pgdat.node_zones)
    available = _gz(prog, "NR_FREE_PAGES") - prog["totalreserve_pages"].value_()
    pagecache = lru["ACTIVE_FILE"] + lru["INACTIVE_FILE"]
    pagecache -= min(pagecache // 2, wmark_low)
    reclaimable = sr + _gn(prog, "NR_KERNEL_MISC_RECLAIMABLE")
    reclaimable -= min(reclaimable // 2, wmark_low)
    out["MemAvailable"] = max(available + pagecache + reclaimable, 0) * k
    if prog.type("enum migratetype").enumerators and any(
            e.name == "MIGRATE_CMA" for e in prog.type("enum migratetype").enumerators):
        out["CmaTotal"] = prog["totalcma_pages"].value_() * k
        out["CmaFree"] = _gz(prog, "NR_FREE_CMA_PAGES") * k
    # hugetlb_report_meminfo()
    n = prog["hugetlb_max_hstate"].value_()
    hs = [prog["hstates"][i] for i in range(n)]
    h = prog["hstates"][prog["default_hstate_idx"]]
    out["HugePages_Total"] = h.nr_huge_pages.value_()
    out["HugePages_Free"] = h.free_huge_pages.value_()
    out["HugePages_Rsvd"] = h.resv_huge_pages.value_()
    out["HugePages_Surp"] = h.surplus_huge_pages.value_()
    out["Hugepagesize"] = (prog["PAGE_SIZE"].value_() << h.order.value_()) // 1024
    out["Hugetlb"] = sum((prog["PAGE_SIZE"].value_() << x.order.value_()) // 1024
                         * x.nr_huge_pages.value_() for x in hs)
    if _has(prog, "direct_pages_count"):
        dpc = prog["direct_pages_count"]
        out["DirectMap4k"] = dpc[prog["PG_LEVEL_4K"]].value_() * 4
        out["DirectMap2M"] = dpc[prog["PG_LEVEL_2M"]].value_() * 2048
        if prog["direct_gbpages"].value_():
            out["DirectMap1G"] = dpc[prog["PG_LEVEL_1G"]].value_() << 20
    return out
