"""Replay of the CMA bitmap and the vmalloc areas (memscope.model.cma,
memscope.model.vmalloc, ``memscope replay``) on the lab's 7.2-trace-cma window: Debian's
7.2 x86_64 kernel booted with ``cma=64M``, kmem, cma and vmalloc traced; between the
snapshots "before" and "after" the NVMe controller is removed and probed again (its I/O
queues' rings are dma_alloc_coherent()ed from the default CMA area) and 40 processes
with vmalloc()ed kernel stacks come and go (fixtures/workloads/trace-cma-vmalloc.sh).

Answer key: dumps A and B read by drgn's own objects and helpers, never by memscope.mm:
each CMA range's bitmap (``cma_areas[i].ranges[r].bitmap``, ``count >> order_per_bit``
bits), every busy vmap area (drgn's ``for_each_vmap_area()``) and every lazily freed
one (each ``vmap_nodes[i].lazy.head``).  The models start from A as drgn reads it, take
the window's events, and must arrive at B as drgn reads it; a divergence the kernel
makes unavoidable would be checked here one by one against B, never allowed wholesale."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import pytest

from kernel_dumps import open_dump
from memscope.mm.context import KernelContext
from memscope.model.buddy import BuddyModel
from memscope.model.cma import CmaModel, CmaRangeState, compare_cma, contig_pageblocks
from memscope.model.replay import buddy_rules, buddy_state, window_events
from memscope.model.vmalloc import VmallocModel, VmallocState, compare_vmalloc

CASE = "7.2-trace-cma"


@pytest.fixture(scope="module")
def window(lab_case):
    a_snap, b_snap = lab_case(CASE, "before"), lab_case(CASE, "after")
    prog_a, ta = open_dump(a_snap)
    prog_b, tb = open_dump(b_snap)
    events, parts = window_events(KernelContext(ta), KernelContext(tb))
    return prog_a, prog_b, events, parts, (a_snap, b_snap)


def _drgn_cma(prog) -> list[CmaRangeState]:
    """Every activated range of every CMA area with its bitmap, by drgn (7.2's
    multi-range struct cma: ``ranges[nranges]``, valid once ``flags`` has
    CMA_ACTIVATED)."""
    activated = prog.constant("CMA_ACTIVATED").value_()
    out = []
    for i in range(prog["cma_area_count"].value_()):
        cma = prog["cma_areas"][i]
        if not cma.flags.value_() >> activated & 1:
            continue
        opb = cma.order_per_bit.value_()
        for r in range(cma.nranges.value_()):
            rng = cma.ranges[r]
            nbits = rng.count.value_() >> opb
            raw = prog.read(rng.bitmap.value_(), (nbits + 63) // 64 * 8)
            bm = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:nbits]
            out.append(CmaRangeState(cma.name.string_().decode(), rng.base_pfn.value_(),
                                     rng.count.value_(), opb, bm.astype(bool)))
    return out


def _drgn_vmalloc(prog) -> VmallocState:
    """Busy areas (drgn's for_each_vmap_area()) and lazily freed ones (each vmap node's
    lazy list), with each busy area's caller's symbol name, by drgn."""
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import _nr_vmap_nodes, _vmap_nodes, for_each_vmap_area

    busy, lazy, callers = {}, {}, {}
    for va in for_each_vmap_area(prog):
        s = va.va_start.value_()
        busy[s] = va.va_end.value_()
        if va.vm:
            try:
                callers[s] = prog.symbol(va.vm.caller.value_()).name
            except LookupError:
                pass
    nodes = _vmap_nodes(prog)
    for i in range(_nr_vmap_nodes(prog)):
        for va in list_for_each_entry("struct vmap_area", nodes[i].lazy.head.address_of_(),
                                      "list"):
            lazy[va.va_start.value_()] = va.va_end.value_()
    return VmallocState(busy, lazy, callers)


def test_the_window_lost_nothing_and_holds_the_workloads_events(window):
    _, _, events, parts, _ = window
    assert parts and all(p.lost == 0 for p in parts)
    assert len(events) == sum(p.written for p in parts)
    n = collections.Counter(e.name for e in events)
    # two I/O queues (one per CPU), each a completion and a submission ring, released by
    # the removal and allocated again by the probe
    assert n["cma_release"] >= 4 and n["cma_alloc_finish"] >= 4
    assert n["cma_alloc_start"] == n["cma_alloc_finish"]
    assert n["alloc_vmap_area"] >= 30 and n["free_vmap_area_noflush"] >= 30


def test_the_cma_allocations_are_the_nvme_rings(window):
    """The kernel's formulas: drivers/nvme/host/pci.c CQ_SIZE = q_depth * 16 bytes and
    SQ_SIZE = q_depth << sqes (64-byte commands), q_depth = io_queue_depth = 1024 (QEMU's
    NVMe offers more): 4 and 16 pages, each a successful cma_alloc_finish of the
    "reserved" area (cma=); one per CPU's I/O queue, released by each of the two unbinds
    and allocated by the bind."""
    _, _, events, _, _ = window
    allocs = [e.fields for e in events if e.name == "cma_alloc_finish"]
    releases = [e.fields for e in events if e.name == "cma_release"]
    assert all(f["errorno"] == 0 and f["page"] and f["name"] == "reserved" for f in allocs)
    rings = {1024 * 16 // 4096: 2, (1024 << 6) // 4096: 2}  # 2 CPUs, 2 I/O queues
    assert collections.Counter(f["count"] for f in allocs) == rings
    assert collections.Counter(f["count"] for f in releases) == {n: 2 * k for n, k in rings.items()}


def test_the_cma_bitmap_is_predicted_exactly(window):
    prog_a, prog_b, events, _, _ = window
    m = CmaModel(_drgn_cma(prog_a))
    m.apply_all(events)
    assert m.divergences == [] and m.applied >= 12
    assert sum(m.in_progress.values()) == 0
    real = _drgn_cma(prog_b)
    assert [(r.area, r.base_pfn) for r in m.ranges] == [(r.area, r.base_pfn) for r in real]
    for pred, b in zip(m.ranges, real):
        assert (pred.bitmap == b.bitmap).all()
    g = compare_cma(m, real)
    assert (g.missing, g.extra, g.divergences) == (0, 0, [])
    assert g.matched == sum(int(r.bitmap.sum()) for r in real) > 0
    # and the window changed it: the prediction is not the earlier bitmap
    before = _drgn_cma(prog_a)
    assert any((x.bitmap != y.bitmap).any() for x, y in zip(before, real))


def test_the_vmalloc_areas_are_predicted_exactly(window):
    prog_a, prog_b, events, _, _ = window
    sa = _drgn_vmalloc(prog_a)
    m = VmallocModel(sa.busy, sa.lazy)
    m.apply_all(events)
    assert m.divergences == []
    sb = _drgn_vmalloc(prog_b)
    assert m.busy == sb.busy
    assert m.lazy == sb.lazy
    g = compare_vmalloc(m, sb, sa.callers)
    assert (g.missing, g.extra, g.divergences) == (0, 0, [])
    assert g.matched == len(sb.busy) + len(sb.lazy)
    # the window allocated and freed areas: B is not A
    assert sb.busy != sa.busy


def test_the_buddy_blocks_differ_only_where_a_cma_allocation_isolated(window):
    """The window's CMA allocations move free pages with no page event
    (alloc_contig_frozen_range(): isolate_freepages_range(), start/undo_isolate_page_range()):
    each free block of B (by drgn) that the buddy model does not predict, and each it
    predicts that B does not have, must lie in a pageblock one of the window's
    cma_alloc_finish events named (x86_64's pageblock_order: HUGETLB_PAGE_ORDER, 9), one
    by one; everywhere else the prediction is exact."""
    from test_replay import _drgn_free_blocks

    _, prog_b, events, _, (a_snap, _) = window
    a = KernelContext(open_dump(a_snap)[1])
    s = buddy_state(a)
    m = BuddyModel(buddy_rules(a), s.zones, s.free, s.pcp, s.pageblock)
    m.apply_all(events)
    blocks = contig_pageblocks(events, 9)
    assert len(blocks) == 4

    def isolated(pfn, order):
        return any(pfn < hi and lo < pfn + (1 << order) for lo, hi, _ in blocks)

    pred = {p: o for p, (o, _) in m.free.items()}
    real = _drgn_free_blocks(prog_b)
    for pfn, order in (real.items() - pred.items()) | (pred.items() - real.items()):
        assert isolated(pfn, order), (hex(pfn), order)
    for d in m.divergences:
        assert isolated(d.pfn, d.order), d
    assert len(pred.items() & real.items()) > 100


def test_replay_command_agrees_on_cma_and_vmalloc(window):
    """``memscope replay --from CASE/before --to CASE/after -f json``: a ``cma`` and a
    ``vmalloc`` record, each agreeing with B (by drgn, above) in its counts."""
    prog_a, prog_b, _, _, (a, b) = window
    r = subprocess.run([sys.executable, "-m", "memscope.cli", "replay", "--from", str(a.dir),
                        "--to", str(b.dir), "-f", "json"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode in (0, 1), r.stderr
    recs = {g["allocator"]: g for g in json.loads(r.stdout)["allocators"]}
    assert {"buddy", "pcp", "slab", "cma", "vmalloc"} <= set(recs)
    cma, vm = recs["cma"], recs["vmalloc"]
    assert (cma["missing"], cma["extra"], cma["divergences"]) == (0, 0, [])
    assert cma["matched"] == sum(int(x.bitmap.sum()) for x in _drgn_cma(prog_b))
    sb = _drgn_vmalloc(prog_b)
    assert (vm["missing"], vm["extra"], vm["divergences"]) == (0, 0, [])
    assert vm["matched"] == len(sb.busy) + len(sb.lazy)
    # the buddy record's divergences (checked against drgn above) name the CMA isolation
    for d in recs["buddy"]["divergences"]:
        assert "a CMA allocation of the window (cma_alloc_finish) isolated" in d["cause"], d


@pytest.mark.parametrize("case", ["6.12-trace", "7.2-trace"])
def test_the_vmalloc_areas_of_the_quiet_windows_are_predicted_exactly(case, lab_case):
    """The quiet second of the kernels with vmalloc tracepoints (tests/test_replay.py's
    cases): A's areas by drgn through the window's events are B's by drgn."""
    a_snap, b_snap = lab_case(case, "before"), lab_case(case, "after")
    (prog_a, ta), (prog_b, tb) = open_dump(a_snap), open_dump(b_snap)
    events, parts = window_events(KernelContext(ta), KernelContext(tb))
    assert all(p.lost == 0 for p in parts)
    sa = _drgn_vmalloc(prog_a)
    m = VmallocModel(sa.busy, sa.lazy)
    m.apply_all(events)
    sb = _drgn_vmalloc(prog_b)
    assert m.divergences == []
    assert (m.busy, m.lazy) == (sb.busy, sb.lazy)
    assert len(sb.busy) > 50
