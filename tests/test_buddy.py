"""buddyinfo, pagetypeinfo and freelists on every real lab kernel (drgn backend), through the
real CLI and through memscope.drgn_api."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from memscope.lab import cases


def memscope(snap: cases.Snapshot, *args: str, check: bool = True):
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "-c", str(snap.vmcore), "-s",
                        str(snap.vmlinux), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
    return r


@pytest.fixture(scope="module")
def outputs(real_kernel):
    """Every format of the three commands on one kernel, computed once."""
    s = real_kernel
    return {
        "snap": s,
        "buddyinfo": memscope(s, "buddyinfo", "-f", "proc").stdout,
        "pagetypeinfo": memscope(s, "pagetypeinfo", "-f", "proc").stdout,
        "pagetypeinfo.json": json.loads(memscope(s, "pagetypeinfo", "-f", "json").stdout),
        "freelists.json": json.loads(memscope(s, "freelists", "-f", "json").stdout),
    }


def test_buddyinfo_proc_is_byte_identical_to_the_guest(outputs):
    assert outputs["buddyinfo"] == outputs["snap"].truth_text("buddyinfo")


def _buddy_rows(text: str) -> dict[tuple[str, str], list[int]]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)((?:\s+\d+)+)", line)
        out[m.group(1), m.group(2)] = [int(x) for x in m.group(3).split()]
    return out


def test_pagetypeinfo_proc_is_byte_identical_to_the_guest(outputs):
    """Byte for byte: the lab keeps a snapshot only when every free list's length in the
    dump equals the guest's pagetypeinfo (memscope/lab/verify.py)."""
    assert outputs["pagetypeinfo"] == outputs["snap"].truth_text("pagetypeinfo")


def test_pagetypeinfo_json_has_the_documented_keys(outputs):
    info = outputs["pagetypeinfo.json"]
    assert set(info) == {"pageblock_order", "pages_per_block", "migratetypes", "zones", "nodes"}
    assert info["pages_per_block"] == 1 << info["pageblock_order"]
    for z in info["zones"]:
        assert set(z) == {"node", "zone", "free", "overflow", "blocks"}
        assert list(z["free"]) == info["migratetypes"] == list(z["blocks"])


def test_freelists_find_every_block_that_nr_free_counts(outputs):
    zones = outputs["freelists.json"]
    buddy = _buddy_rows(outputs["snap"].truth_text("buddyinfo"))
    assert len(zones) == len(buddy)
    for z in zones:
        assert set(z) == {"node", "zone", "nr_free", "blocks", "pcp", "pcp_count",
                          "free_pages_counter", "problems"}
        assert z["problems"] == []
        per_order = [0] * len(z["nr_free"])
        for b in z["blocks"]:
            per_order[b["order"]] += 1
            assert b["pfn"] % (1 << b["order"]) == 0
        assert per_order == z["nr_free"] == buddy[str(z["node"]), z["zone"]]
        # Free blocks never overlap.
        spans = sorted((b["pfn"], b["pfn"] + (1 << b["order"])) for b in z["blocks"])
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        # The pcp lists hold exactly pcp->count pages per CPU, none of them buddy blocks.
        for cpu, count in z["pcp_count"].items():
            assert sum(len(p["pfns"]) << p["order"] for p in z["pcp"]
                       if str(p["cpu"]) == cpu) == count
        assert not {p for lst in z["pcp"] for p in lst["pfns"]} & {b["pfn"] for b in z["blocks"]}
        # NR_FREE_PAGES (global + per-CPU diffs) equals the pages on the lists (no
        # isolated pageblocks in the lab guests).
        assert z["free_pages_counter"] == sum(1 << b["order"] for b in z["blocks"])


def test_freelists_on_each_kernel_see_pcp_pages(outputs):
    # Every lab guest ran a workload on 2 CPUs: some pages sit on per-CPU lists.
    assert sum(sum(z["pcp_count"].values()) for z in outputs["freelists.json"]) > 0


def test_drgn_api_returns_the_cli_numbers(outputs):
    import drgn

    from memscope import drgn_api
    from memscope.mm import buddy

    snap = outputs["snap"]
    prog = drgn.Program()
    prog.set_core_dump(str(snap.vmcore))
    prog.load_debug_info([str(snap.vmlinux)])
    assert buddy.format_buddyinfo(drgn_api.buddyinfo(prog)) == outputs["buddyinfo"]
    assert buddy.format_pagetypeinfo(drgn_api.pagetypeinfo(prog)) == outputs["pagetypeinfo"]
    fl = drgn_api.freelists(prog)
    assert [len(z.blocks) for z in fl] == [len(z["blocks"]) for z in outputs["freelists.json"]]
    report = drgn_api.check(prog)
    assert report.ok and report.problems == []
