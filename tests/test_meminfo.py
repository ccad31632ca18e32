"""`meminfo --format proc` against the guest's /proc/meminfo, line by line, on every real
lab kernel and every snapshot of 6.12-snapshots; and every line memscope computes against
the same line computed independently by drgn's own helpers on the same dump (the kernel's
formulas written here with drgn objects, not memscope.mm).

Each line of /proc/meminfo is a test of its own (``[case-Line]``): the line must be
printed exactly when the guest printed it, byte for byte.  The guest reads meminfo just
before buddyinfo, and the lab refreezes until its counter lines equal the dump's global
counters (memscope/lab/verify.py, ACCEPTANCE 7): no line is allowed to differ.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import totalram_pages, vm_commit_limit, vm_memory_committed
from drgn.helpers.linux.mmzone import for_each_online_pgdat, low_wmark_pages
from drgn.helpers.linux.vmstat import global_node_page_state, global_zone_page_state

from memscope import commands
from memscope.errors import MemscopeError
from memscope.lab import cases
from memscope.mm import meminfo as mmeminfo
from memscope.mm.context import KernelContext
from memscope.target.base import Target, TargetError

from kernel_dumps import Delegating, open_dump

#: Every line any lab kernel's meminfo_proc_show() can print, in the kernels' order.
NAMES = ["MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached", "Active",
         "Inactive", "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)",
         "Unevictable", "Mlocked", "SwapTotal", "SwapFree", "Zswap", "Zswapped", "Dirty",
         "Writeback", "AnonPages", "Mapped", "Shmem", "KReclaimable", "Slab", "SReclaimable",
         "SUnreclaim", "KernelStack", "ShadowCallStack", "PageTables", "SecPageTables",
         "NFS_Unstable", "Bounce", "WritebackTmp", "CommitLimit", "Committed_AS",
         "VmallocTotal", "VmallocUsed", "VmallocChunk", "Percpu", "EarlyMemtestBad",
         "HardwareCorrupted", "AnonHugePages", "ShmemHugePages", "ShmemPmdMapped",
         "FileHugePages", "FilePmdMapped", "CmaTotal", "CmaFree", "Unaccepted", "Balloon",
         "GPUActive", "GPUReclaim", "HugePages_Total", "HugePages_Free", "HugePages_Rsvd",
         "HugePages_Surp", "Hugepagesize", "Hugetlb", "DirectMap4k", "DirectMap2M",
         "DirectMap1G"]

#: The snapshots: (case, snapshot name) with the id the tests print.
SNAPS = {c: (c, "") for c in cases.REAL_KERNEL_CASES} | {
    "6.12-snapshots-before": ("6.12-snapshots", "before"),
    "6.12-snapshots-after": ("6.12-snapshots", "after"),
    "6.12-snapshots": ("6.12-snapshots", "")}

def _snap(lab_case, sid: str) -> cases.Snapshot:
    return lab_case(*SNAPS[sid])


def _lines(text: str) -> dict[str, str]:
    return {line.split(":")[0]: line for line in text.splitlines()}


_OUT: dict[str, dict] = {}


def outputs(lab_case, sid: str) -> dict:
    """The CLI's proc and json output for snapshot SID (once), its time, and drgn's
    independent values."""
    if sid not in _OUT:
        snap = _snap(lab_case, sid)
        args = [sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                str(snap.vmlinux), "meminfo"]
        t0 = time.perf_counter()
        proc = subprocess.run([*args, "-f", "proc"], capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - t0
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        js = subprocess.run([*args, "-f", "json"], capture_output=True, text=True, timeout=300)
        assert js.returncode == 0, js.stderr
        prog, _ = open_dump(snap)
        _OUT[sid] = {"snap": snap, "proc": proc.stdout, "json": json.loads(js.stdout),
                     "seconds": seconds, "drgn": drgn_meminfo(prog)}
    return _OUT[sid]


# --- the answer key: the kernel's formulas with drgn's helpers -----------------------------

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


# --- the tests -----------------------------------------------------------------------------

def _pairs():
    for sid in SNAPS:
        for name in NAMES:
            yield pytest.param(sid, name, id=f"{sid}-{name}")


@pytest.mark.parametrize("sid,name", list(_pairs()))
def test_meminfo_line_equals_the_guests(lab_case, sid, name):
    """The line NAME is printed exactly when the guest printed it, byte for byte."""
    out = outputs(lab_case, sid)
    ours = _lines(out["proc"]).get(name)
    truth = _lines(out["snap"].truth_text("meminfo")).get(name)
    assert (ours is None) == (truth is None), (ours, truth)
    if ours is None:
        return
    assert ours == truth


@pytest.mark.parametrize("sid", list(SNAPS))
def test_meminfo_prints_the_guests_lines_in_its_order(lab_case, sid):
    out = outputs(lab_case, sid)
    assert list(_lines(out["proc"])) == list(_lines(out["snap"].truth_text("meminfo")))
    assert out["proc"].endswith("\n")


@pytest.mark.parametrize("sid", list(SNAPS))
def test_every_line_equals_drgns_reading_of_the_dump(lab_case, sid):
    """Every line drgn's helpers can compute (all but the constants, VmallocTotal, the
    THP and zswap lines): memscope's value equals it."""
    out = outputs(lab_case, sid)
    ours = {line["name"]: line["value"] for line in out["json"]["lines"]}
    drgn = out["drgn"]
    assert set(drgn) <= set(ours)
    assert len(drgn) >= 38  # 38 on arm64 (no DirectMap), more on x86_64
    assert {n: (ours[n], v) for n, v in drgn.items() if ours[n] != v} == {}


@pytest.mark.parametrize("sid", list(SNAPS))
def test_json_is_the_record_and_proc_its_view(lab_case, sid):
    out = outputs(lab_case, sid)
    js = out["json"]
    assert set(js) == {"page_size", "lines", "problems"} and js["problems"] == []
    lines = [mmeminfo.MeminfoLine(**line) for line in js["lines"]]
    assert "".join(line.format() for line in lines) == out["proc"]
    assert all(set(line) == {"name", "value", "unit", "width", "source"} for line in js["lines"])


def test_the_whole_command_takes_seconds(lab_case):
    """The time of `memscope meminfo -f proc` per case, opening the dump included (printed
    with -s; the budget is generous: it guards against a walk gone wrong)."""
    for sid in SNAPS:
        out = outputs(lab_case, sid)
        print(f"{sid}: {out['seconds']:.2f} s")
        assert out["seconds"] < 60


# --- kernels without some lines, and without what the file needs ---------------------------

class Hiding(Delegating):
    """A real target that hides some symbols and variables, as a kernel built without
    them would."""

    def __init__(self, real: Target, hidden: set[str]):
        super().__init__(real)
        self.hidden = hidden

    def symbol(self, name):
        if name in self.hidden:
            raise TargetError(f"symbol {name} not found")
        return self.real.symbol(name)

    def variable(self, name):
        if name in self.hidden:
            raise TargetError(f"variable {name} not found in the debug info")
        return self.real.variable(name)


HUGETLB = ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp",
           "Hugepagesize", "Hugetlb")


def test_a_kernel_without_hugetlb_prints_no_hugetlb_lines(lab_case):
    """Without CONFIG_HUGETLB_PAGE (no hstates[]) hugetlb_report_meminfo() is empty and
    CommitLimit subtracts nothing: the other lines are the 6.12 guest's."""
    snap = lab_case("6.12")
    _, target = open_dump(snap)
    info = mmeminfo.meminfo(KernelContext(Hiding(target, {"hstates"})))
    names = [line.name for line in info.lines]
    truth = _lines(snap.truth_text("meminfo"))
    assert names == [n for n in truth if n not in HUGETLB]
    # vm_commit_limit() with hugetlb_total_pages() == 0, computed with drgn.
    prog = target.prog
    allowed = totalram_pages(prog) * prog["sysctl_overcommit_ratio"].value_() // 100 \
        + prog["total_swap_pages"].value_()
    assert prog["hstates"][prog["default_hstate_idx"]].nr_huge_pages.value_() > 0
    assert info["CommitLimit"] == allowed * prog["PAGE_SIZE"].value_() // 1024


@pytest.mark.parametrize("hidden", ["vm_node_stat", "vm_zone_stat", "vm_committed_as",
                                    "_totalram_pages"])
def test_a_missing_essential_symbol_is_one_line_naming_it(lab_case, hidden):
    _, target = open_dump(lab_case("6.12"))
    commands._load()
    parser_args = type("A", (), {"command": "meminfo", "format": "proc"})()
    with pytest.raises(MemscopeError) as e:
        commands.execute(Hiding(target, {hidden}), parser_args)
    msg = str(e.value)
    assert msg.startswith("meminfo: ") and hidden in msg and "\n" not in msg, msg
