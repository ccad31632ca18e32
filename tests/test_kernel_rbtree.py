"""memscope.kernel.rbtree on every lab kernel: the busy vmap areas, against drgn's
rbtree_inorder_for_each_entry on the same dump.  Up to v6.8 they are one tree,
vmap_area_root; since v6.9 (commit d093602919ad "mm: vmalloc: remove global vmap_area_root
rb-tree") each of the nr_vmap_nodes vmap_nodes[] has its own busy.root."""

from __future__ import annotations

from drgn.helpers.linux.rbtree import rbtree_inorder_for_each_entry

from kernel_dumps import open_dump
from memscope.kernel import rbtree


def _roots(prog):
    """(where, struct rb_root object) of every busy vmap area tree."""
    try:
        nodes = prog["vmap_nodes"]
    except KeyError:
        return [("vmap_area_root", prog["vmap_area_root"])]
    return [(f"vmap_nodes[{i}].busy.root", nodes[i].busy.root)
            for i in range(prog["nr_vmap_nodes"].value_())]


def test_vmap_area_trees_match_drgn(real_kernel):
    prog, t = open_dump(real_kernel)
    total = 0
    for where, root in _roots(prog):
        want = [va.value_() for va in rbtree_inorder_for_each_entry(
            "struct vmap_area", root.address_of_(), "rb_node")]
        problems = []
        got = list(rbtree.rbtree_inorder_for_each_entry(
            t, "struct vmap_area", root.address_of_().value_(), "rb_node",
            bound=1 << 20, problems=problems, where=where))
        assert problems == [] and got == want, where
        # in order: the tree is keyed by va_start, and busy areas do not overlap
        starts = [prog.read_u64(va) for va in got]  # va_start is the first member
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        total += len(got)
    assert total > 50


def test_vmap_area_tree_bound_is_exact(real_kernel):
    prog, t = open_dump(real_kernel)
    where, root = max(_roots(prog), key=lambda r: sum(
        1 for _ in rbtree_inorder_for_each_entry("struct vmap_area", r[1].address_of_(),
                                                 "rb_node")))
    head = root.address_of_().value_()
    n = sum(1 for _ in rbtree.rbtree_inorder_for_each(t, head, bound=1 << 20, problems=[]))
    problems = []
    assert len(list(rbtree.rbtree_inorder_for_each(t, head, bound=n, problems=problems))) == n
    assert problems == []
    got = list(rbtree.rbtree_inorder_for_each(t, head, bound=n - 1, problems=problems))
    assert [p.kind for p in problems] == ["too_long"] and len(got) < n
