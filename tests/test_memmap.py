"""The memmap plumbing shared by every page-level reader (memscope.mm.memmap) and the one
per-CPU list walk (memscope.mm.freelists.FreeListWalker.pcp), on every lab kernel.

- A module that registers more struct page words (register_page_fields, as a SLUB reader
  will for slab_cache/freelist/counters) finds them in the same bulk decode: checked
  word for word against drgn's reading of the same struct pages.
- The pcp walk is one walk: a cycle written into a copy of a real pcp list (found with
  drgn's own list helper) is the same Problem record in ``check`` and in the page
  classification's findings.
"""

from __future__ import annotations

import drgn
import numpy as np
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.list import list_for_each
from drgn.helpers.linux.mm import page_to_pfn
from drgn.helpers.linux.mmzone import for_each_online_pgdat
from drgn.helpers.linux.percpu import per_cpu_ptr

from kernel_dumps import PatchedTarget, open_dump
from memscope.kernel.problem import Problem
from memscope.mm import freelists, memmap, page
from memscope.mm.context import KernelContext


def _pcp_lists(prog):
    """(node, zone name, cpu, index, [list_head addresses]) of every pcp list, by drgn."""
    for pgdat in for_each_online_pgdat(prog):
        for zone in pgdat.node_zones:
            if not zone.present_pages:
                continue
            name = zone.name.string_().decode()
            for cpu in for_each_possible_cpu(prog):
                if zone.type_.has_member("per_cpu_pageset"):
                    pcp = per_cpu_ptr(zone.per_cpu_pageset, cpu)
                else:  # 5.10
                    pcp = per_cpu_ptr(zone.pageset, cpu).pcp
                for i in range(len(pcp.lists)):
                    entries = [int(e.value_()) for e in list_for_each(pcp.lists[i].address_of_())]
                    yield int(pgdat.node_id), name, cpu, i, entries


def test_registered_page_fields_are_decoded_with_the_rest(real_kernel):
    prog, t = open_dump(real_kernel)
    lay = t.layout("struct page")
    lru = lay.offset("lru")

    def lru_prev(target, layout):
        # A word no built-in field decodes: the second pointer of page->lru.
        yield memmap.PageField("test_lru_prev", lru + 8, "<u8")

    memmap.register_page_fields(lru_prev)
    try:
        ctx = KernelContext(t)
        pages, valid, _ = memmap.read_struct_pages(ctx)
        assert "test_lru_prev" in memmap.page_layout(ctx).fields
    finally:
        memmap._FIELD_PROVIDERS.remove(lru_prev)
    got = pages["test_lru_prev"]
    # Every page on a pcp list (linked through that word), and a spread of other pfns.
    pfns = set()
    for *_, entries in _pcp_lists(prog):
        for e in entries[:64]:
            pfns.add(page_to_pfn(drgn.Object(prog, "struct page *", e - lru)).value_())
    pfns |= set(np.flatnonzero(valid)[::997].tolist())
    assert len(pfns) > 100
    for pfn in sorted(pfns):
        want = prog.read_u64(memmap.vmemmap_base(ctx) + pfn * lay.size + lru + 8)
        assert valid[pfn] and int(got[pfn]) == want, hex(pfn)


def test_one_pcp_walk_serves_check_and_the_page_classes(real_kernel):
    prog, real = open_dump(real_kernel)
    node, zone, cpu, index, entries = max(_pcp_lists(prog), key=lambda x: len(x[4]))
    assert len(entries) >= 4
    t = PatchedTarget(real)
    t.patch(entries[2], entries[0])  # entry 2's next -> entry 0: a cycle
    report = freelists.check(KernelContext(t))
    cycle = Problem("cycle", f"cpu {cpu} pcp lists[{index}]",
                    f"entry {entries[0]:#x} comes back after 3 entries (the list never "
                    "returns to its head)", node, zone)
    assert [p for p in report.problems if p.kind == "cycle"] == [cycle]
    assert any(p.kind == "pcp_count_mismatch" and p.where == f"cpu {cpu} pcp"
               and (p.node, p.zone) == (node, zone) for p in report.problems)
    pm = page.memmap(KernelContext(t))
    assert cycle in pm.pcp_findings
    assert not report.ok and all(p.kind != "cycle" or p == cycle for p in pm.pcp_findings)
