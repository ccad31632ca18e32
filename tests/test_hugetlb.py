"""The hugetlb class of `pages` on every lab kernel, against the guest's /proc/meminfo and
the hugetlb pool's own lists read with drgn.

The mixed and numa workloads reserve 16 x 2 MiB hugetlb pages (vm.nr_hugepages) that no
process uses: every one sits free on the default hstate's ``hugepage_freelists[node]``.  6.10+ types
them PGTY_hugetlb; 5.10 and 6.1 mark the folio's first tail with HUGETLB_PAGE_DTOR, which
`pages` once read as "free" (refcount 0, neither buddy nor pcp)."""

from __future__ import annotations

import numpy as np
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import page_to_pfn

from memscope.mm import page as mpage

from test_pages import meminfo_pages, mm_for


def _meminfo_kb(snap) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1])
            for line in snap.truth_text("meminfo").splitlines()}


def test_hugetlb_pages_equal_meminfo_hugepages_total(real_kernel):
    mi = _meminfo_kb(real_kernel)
    assert mi["HugePages_Total"] > 0, "the workload reserved no hugetlb pages: nothing tested"
    per_huge = mi["Hugepagesize"] * 1024 // mm_for(real_kernel).t.page_size
    pm = mpage.memmap(mm_for(real_kernel))
    assert int(np.count_nonzero(pm.cls == mpage.C["hugetlb"])) == \
        mi["HugePages_Total"] * per_huge
    assert meminfo_pages(real_kernel)["Hugetlb"] == mi["HugePages_Total"] * per_huge


def test_every_page_of_every_free_hugetlb_folio_is_hugetlb(real_kernel):
    """The folios on the pool's free lists (drgn's list helper over
    hstates[default_hstate_idx].hugepage_freelists[]), each 2^order pages, are hugetlb in `pages`."""
    mm = mm_for(real_kernel)
    prog = mm.t.prog
    pm = mpage.memmap(mm)
    h = prog["hstates"][prog["default_hstate_idx"]]  # vm.nr_hugepages sizes this one
    order = int(h.order)
    heads = []
    for node in range(len(h.hugepage_freelists)):
        head = h.hugepage_freelists[node].address_of_()
        heads += [int(page_to_pfn(p)) for p in list_for_each_entry("struct page", head, "lru")]
    mi = _meminfo_kb(real_kernel)
    assert len(heads) == mi["HugePages_Free"] > 0
    for pfn in heads:
        assert (pm.cls[pfn:pfn + (1 << order)] == mpage.C["hugetlb"]).all(), hex(pfn)
