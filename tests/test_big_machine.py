"""Big machines (issue 14, item 3): a 16 GiB guest (lab case "6.12-16g": idle, dumped
kdump-compressed only, 4.4 million pfns, 34 pieces of the memmap) read by the commands that
stream the memmap in pieces, against the guest's own /proc files captured before the
freeze and what drgn's helpers read; and the pieces' edges, one section per piece, against
the same truth on the small cases.

How much memory the commands take, and how their time grows with the machine, is measured
in benchmarks/bench_big.py (not here: no timed test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memscope.mm import page as mpage
from test_pages import pcp_counts
from memscope.mm.context import KernelContext
from memscope.target.drgn import DrgnTarget, open_core

CASE = "6.12-16g"


def memscope(snap, *args: str):
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), *args], capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout, r.stderr


def buddyinfo_rows(snap) -> list[list[int]]:
    return [[int(x) for x in line.split()[4:]]
            for line in snap.truth_text("buddyinfo").splitlines()]


@pytest.fixture(scope="module")
def big(lab_case):
    snap = lab_case(CASE)
    assert snap.meta["mem_mb"] == 16384
    return snap


@pytest.mark.parametrize("command", ["buddyinfo", "pagetypeinfo"])
def test_the_16g_guest_s_proc_files_byte_for_byte(big, command):
    status, out, err = memscope(big, command, "-f", "proc")
    assert (status, err) == (0, "")
    assert out == big.truth_text(command)


def test_pages_on_the_16g_guest_counts_the_guest_s_free_blocks_and_pcp_pages(big):
    """``pages`` streams the memmap in 34 pieces: its free blocks per order are the guest's
    /proc/buddyinfo, its pcp pages what every CPU's pcp->count says, and the frozen dump
    has no inconsistent page."""
    status, out, err = memscope(big, "pages", "-f", "json")
    assert (status, err) == (0, "")
    rows = json.loads(out)
    truth = buddyinfo_rows(big)
    assert [r["buddy_blocks"] for r in rows] == truth
    assert [r["counts"]["buddy"] for r in rows] == [sum(n << o for o, n in enumerate(t))
                                                   for t in truth]
    assert [r["counts"]["pcp"] for r in rows] == pcp_counts(open_core(big.vmcore,
                                                                      big.vmlinux))
    assert sum(r["inconsistent"] for r in rows) == 0
    # Every pfn of every zone's span is counted once (the 16 GiB and the hole below 4 GiB).
    assert [sum(r["counts"].values()) for r in rows] == [r["end_pfn"] - r["start_pfn"]
                                                        for r in rows]
    assert rows[-1]["end_pfn"] == 0x440000


def test_check_on_the_16g_guest_finds_nothing(big):
    status, out, err = memscope(big, "check", "-f", "json")
    assert (status, err) == (0, "")
    assert json.loads(out)["ok"] is True


@pytest.mark.parametrize("case", ["6.12", "6.12-arm64", "6.12-numa"])
def test_pieces_of_one_section_agree_with_the_guest(lab_case, case):
    """The smallest pieces (one mem_section each: 32768 pfns on x86_64, 16 to 32 pieces
    here) put every buddy block, pcp page and compound page on the right side of the
    pieces' edges: the guest's buddyinfo and the CPUs' pcp counts."""
    snap = lab_case(case)
    prog = open_core(snap.vmcore, snap.vmlinux)
    ctx = KernelContext(DrgnTarget(prog))
    assert len(list(mpage.pieces(ctx, chunk_pages=1))) > 3
    sc = mpage.scan(KernelContext(DrgnTarget(prog)), chunk_pages=1)
    assert [r.buddy_blocks for r in sc.rows] == buddyinfo_rows(snap)
    assert [r.counts["pcp"] for r in sc.rows] == pcp_counts(prog)
    assert sum(r.inconsistent for r in sc.rows) == 0
    assert [sum(r.counts.values()) for r in sc.rows] == [r.end_pfn - r.start_pfn
                                                        for r in sc.rows]
