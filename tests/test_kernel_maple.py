"""memscope.kernel.maple on every lab kernel with maple trees (v6.1+, detected from the
debug info): init_mm's and every process's VMA tree (mm_struct.mm_mt), against drgn's
mt_for_each and mtree_load on the same dump; the number of entries against the kernel's
own count of VMAs (mm->map_count)."""

from __future__ import annotations

import pytest
from drgn.helpers.linux.mapletree import mt_for_each, mtree_load
from drgn.helpers.linux.pid import for_each_task

from kernel_dumps import open_dump
from memscope.kernel import maple


def _mms(prog):
    """init_mm and every distinct user mm_struct."""
    seen = {prog["init_mm"].address_of_().value_(): prog["init_mm"].address_of_()}
    for task in for_each_task(prog):
        if task.mm:
            seen.setdefault(task.mm.value_(), task.mm)
    return list(seen.values())


def test_mm_maple_trees_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    if not t.has_type("struct maple_tree"):
        pytest.skip("no maple trees before v6.1 (VMAs were an rbtree and a list)")
    trees = entries = 0
    for mm in _mms(prog):
        mt = mm.mm_mt.address_of_()
        want = [(a, b, e.value_()) for a, b, e in mt_for_each(mt)]
        problems = []
        got = list(maple.mt_for_each(t, mt.value_(), bound=mm.map_count.value_(),
                                     problems=problems))
        assert problems == [] and got == want, hex(mm.value_())
        # mm->map_count is the kernel's count of the VMAs in the tree
        assert len(got) == mm.map_count.value_()
        for first, last, entry in got[::7]:
            for index in (first, last, (first + last) // 2):
                assert maple.mtree_load(t, mt.value_(), index) == entry
                assert mtree_load(mt, index).value_() == entry
        # gaps: the index before the first entry and after the last one
        if got and got[0][0] > 0:
            assert maple.mtree_load(t, mt.value_(), got[0][0] - 1) == \
                mtree_load(mt, got[0][0] - 1).value_()
        trees += 1
        entries += len(got)
    assert trees >= 4 and entries > 30  # busybox guests: 5 trees, 37-49 VMAs


def test_maple_bound_is_exact(real_kernel):
    prog, t = open_dump(real_kernel)
    if not t.has_type("struct maple_tree"):
        pytest.skip("no maple trees before v6.1")
    mm = max(_mms(prog)[1:], key=lambda m: m.map_count.value_())
    n = mm.map_count.value_()
    mt = mm.mm_mt.address_of_().value_()
    problems = []
    assert len(list(maple.mt_for_each(t, mt, bound=n - 1, problems=problems))) == n - 1
    assert [p.kind for p in problems] == ["too_long"]


def test_sparse_irqs_matches_drgn(real_kernel):
    """kernel/irq/irqdesc.c's sparse_irqs: a maple tree since v6.5 (commit 721255b9826b
    "genirq: Use a maple tree for interrupt descriptor management")."""
    prog, t = open_dump(real_kernel)
    if not t.has_symbol("sparse_irqs") or not t.has_type("struct maple_tree"):
        pytest.skip("interrupt descriptors are in a radix tree before v6.5")
    mt = prog["sparse_irqs"].address_of_()
    want = [(a, b, e.value_()) for a, b, e in mt_for_each(mt)]
    problems = []
    # IRQ_BITMAP_BITS (NR_IRQS + 8196 with sparse IRQs) bounds the descriptors
    got = list(maple.mt_for_each(t, mt.value_(), bound=1 << 16, problems=problems))
    assert problems == [] and got == want and len(got) > 5
