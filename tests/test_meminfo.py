"""`meminfo --format proc` against the guest's /proc/meminfo, line by line, on every real
lab kernel and every snapshot of 6.12-snapshots; and every line memscope computes against
the same line computed independently by drgn's own helpers on the same dump (the kernel's
formulas written with drgn objects in benchmarks/drgn_meminfo.py, not memscope.mm; the
benchmark times memscope against the same function).

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
from drgn.helpers.linux.mm import totalram_pages

from memscope import commands
from memscope.errors import MemscopeError
from memscope.lab import cases
from memscope.mm import meminfo as mmeminfo
from memscope.mm.context import KernelContext
from memscope.target.base import Target, TargetError

from benchmarks.drgn_meminfo import drgn_meminfo  # the answer key, shared with bench_meminfo
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
