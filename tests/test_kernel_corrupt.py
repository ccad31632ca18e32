"""Corrupted in-memory copies of real structures (a Target that overrides a few words of
a real dump): every bounded walk of memscope.kernel turns a cycle, a broken back link, a
wild or NULL pointer into Problem records, stops or skips where it must, and never raises
or hangs.  On every lab kernel: the task list, init_struct_pid's session hlist, the
largest busy vmap area tree, the pid IDR (an XArray) and the largest VMA maple tree."""

from __future__ import annotations

import struct

import pytest

from kernel_dumps import PatchedTarget, open_dump
from memscope.kernel import list as klist
from memscope.kernel import maple, rbtree, xarray
from memscope.kernel.problem import MAX_PROBLEMS

WILD = 0xDEAD000000000100  # LIST_POISON1: never mapped
BOUND = 1 << 20


def _kinds(problems):
    return [p.kind for p in problems]


# --- list_for_each ------------------------------------------------------------------
def _tasks(t, prog):
    head = prog["init_task"].tasks.address_of_().value_()
    return head, list(klist.list_for_each(t, head, bound=BOUND, problems=[]))


def _walk(t, head):
    problems = []
    got = list(klist.list_for_each(t, head, bound=BOUND, problems=problems, where="tasks"))
    return got, problems


def test_list_cycle(real_kernel):
    prog, real = open_dump(real_kernel)
    head, entries = _tasks(real, prog)
    t = PatchedTarget(real)
    t.patch(entries[5], entries[2])  # entry 5's next goes back to entry 2
    got, problems = _walk(t, head)
    assert got == entries[:6] and _kinds(problems) == ["cycle"]
    assert problems[0].where == "tasks" and f"{entries[2]:#x}" in problems[0].message


def test_list_broken_prev(real_kernel):
    prog, real = open_dump(real_kernel)
    head, entries = _tasks(real, prog)
    t = PatchedTarget(real)
    t.patch(entries[3] + 8, 0xFFFF888012345678)
    got, problems = _walk(t, head)
    assert got == entries and _kinds(problems) == ["broken_link"]
    t.patch(head + 8, entries[1])  # the head's prev is not the last entry
    got, problems = _walk(t, head)
    assert got == entries and _kinds(problems) == ["broken_link", "broken_link"]


@pytest.mark.parametrize("pointer", [WILD, 0])
def test_list_wild_and_null_pointers(real_kernel, pointer):
    prog, real = open_dump(real_kernel)
    head, entries = _tasks(real, prog)
    t = PatchedTarget(real)
    t.patch(entries[4], pointer)
    got, problems = _walk(t, head)
    assert got == entries[:5] and _kinds(problems) == ["unreadable"]
    t.patch(head, pointer)  # the head itself
    got, problems = _walk(t, head)
    assert got == [] and _kinds(problems) == ["unreadable"]


def test_list_gives_up_after_max_problems(real_kernel):
    prog, real = open_dump(real_kernel)
    head, entries = _tasks(real, prog)
    assert len(entries) > MAX_PROBLEMS + 4
    t = PatchedTarget(real)
    for e in entries[1:MAX_PROBLEMS + 4]:
        t.patch(e + 8, 0xFFFF888012345678)
    got, problems = _walk(t, head)
    assert _kinds(problems) == ["broken_link"] * MAX_PROBLEMS + ["gave_up"]
    assert len(got) == MAX_PROBLEMS


# --- hlist_for_each -------------------------------------------------------------------
def test_hlist_corruptions(real_kernel):
    prog, real = open_dump(real_kernel)
    sid = real.enum_value("enum pid_type", "PIDTYPE_SID")
    head = prog["init_struct_pid"].tasks[sid].address_of_().value_()
    nodes = list(klist.hlist_for_each(real, head, bound=BOUND, problems=[]))
    assert len(nodes) > 10

    def walk(t):
        problems = []
        return list(klist.hlist_for_each(t, head, bound=BOUND, problems=problems)), problems

    t = PatchedTarget(real)
    t.patch(nodes[6], nodes[1])  # cycle
    got, problems = walk(t)
    assert got == nodes[:7] and _kinds(problems) == ["cycle"]
    t = PatchedTarget(real)
    t.patch(nodes[2] + 8, nodes[2])  # pprev does not point at nodes[1]->next
    got, problems = walk(t)
    assert got == nodes and _kinds(problems) == ["broken_link"]
    t = PatchedTarget(real)
    t.patch(nodes[3], WILD)
    got, problems = walk(t)
    assert got == nodes[:4] and _kinds(problems) == ["unreadable"]
    got = list(klist.hlist_for_each(real, head, bound=5, problems=(problems := [])))
    assert got == nodes[:5] and _kinds(problems) == ["too_long"]


# --- rbtree_inorder_for_each ------------------------------------------------------------
def test_rbtree_corruptions(real_kernel):
    prog, real = open_dump(real_kernel)
    rb = real.layout("struct rb_node")
    roots = []
    try:
        nodes_ = prog["vmap_nodes"]
        roots = [nodes_[i].busy.root.address_of_().value_()
                 for i in range(prog["nr_vmap_nodes"].value_())]
    except KeyError:
        roots = [prog["vmap_area_root"].address_of_().value_()]
    trees = {r: list(rbtree.rbtree_inorder_for_each(real, r, bound=BOUND, problems=[]))
             for r in roots}
    root, nodes = max(trees.items(), key=lambda kv: len(kv[1]))
    assert len(nodes) > 20
    top = real.read_u64(root)
    leftmost = nodes[0]

    def walk(t):
        problems = []
        return list(rbtree.rbtree_inorder_for_each(t, root, bound=BOUND,
                                                   problems=problems)), problems

    t = PatchedTarget(real)
    t.patch(leftmost + rb.offset("rb_left"), top)  # the smallest node's left is the root
    got, problems = walk(t)
    assert got == nodes and _kinds(problems) == ["cycle"]
    t = PatchedTarget(real)
    t.patch(leftmost + rb.offset("rb_left"), WILD)
    got, problems = walk(t)
    assert got == nodes and _kinds(problems) == ["unreadable"]
    t = PatchedTarget(real)
    t.patch(nodes[len(nodes) // 2] + rb.offset("__rb_parent_color"), 0xFFFF888012345001)
    got, problems = walk(t)
    assert got == nodes and _kinds(problems) == ["broken_link"]
    t.patch(root, 0)  # an empty tree
    got, problems = walk(t)
    assert got == [] and problems == []


# --- xa_for_each ----------------------------------------------------------------------------
def test_xarray_corruptions(real_kernel):
    prog, real = open_dump(real_kernel)
    xa = prog["init_pid_ns"].idr.idr_rt.address_of_().value_()
    node = real.layout("struct xa_node")
    entries = list(xarray.xa_for_each(real, xa, bound=BOUND, problems=[]))
    head = real.read_u64(xa + real.layout("struct xarray").offset("xa_head"))
    assert xarray.xa_is_node(head)
    top = head - 2
    slots = struct.unpack(f"<{node['slots'].array_length}Q",
                          real.read(top + node.offset("slots"), node["slots"].size))
    children = [(i, s) for i, s in enumerate(slots) if xarray.xa_is_node(s)]
    assert children, "the pid IDR has a second level (pids above 63)"
    i, child = children[0]
    below = [e for e in entries if e[0] >> real.read(top, node.size)[node.offset("shift")] == i]
    slot_addr = top + node.offset("slots") + 8 * i

    def walk(t):
        problems = []
        return list(xarray.xa_for_each(t, xa, bound=BOUND, problems=problems)), problems

    rest = [e for e in entries if e not in below]
    t = PatchedTarget(real)
    t.patch(slot_addr, WILD | 2)  # a node pointer into nowhere
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["unreadable"]
    t = PatchedTarget(real)
    t.patch(slot_addr, head)  # a child that is the root again
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["cycle"]
    t = PatchedTarget(real)
    t.patch(child - 2 + node.offset("parent"), 0xFFFF888012345000)
    got, problems = walk(t)
    assert got == entries and _kinds(problems) == ["broken_link"]
    t = PatchedTarget(real)
    raw = real.read_u64(child - 2 + node.offset("shift"))
    t.patch(child - 2 + node.offset("shift"), raw & ~0xFF | 12)  # shift 12 under shift 6
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["bad_node"]
    got = list(xarray.xa_for_each(real, xa, bound=3, problems=(problems := [])))
    assert got == entries[:3] and _kinds(problems) == ["too_long"]


# --- mt_for_each --------------------------------------------------------------------------
def test_maple_corruptions(real_kernel):
    prog, real = open_dump(real_kernel)
    if not real.has_type("struct maple_tree"):
        pytest.skip("no maple trees before v6.1")
    from drgn.helpers.linux.pid import for_each_task
    mm = max((task.mm for task in for_each_task(prog) if task.mm),
             key=lambda m: m.map_count.value_())
    mt = mm.mm_mt.address_of_().value_()
    entries = list(maple.mt_for_each(real, mt, bound=BOUND, problems=[]))
    root = real.read_u64(mt + real.layout("struct maple_tree").offset("ma_root"))
    top = root & ~0xFF
    typ = root >> 3 & 0xF
    lay_name = "struct maple_arange_64" if typ == real.enum_value(
        "enum maple_type", "maple_arange_64") else "struct maple_range_64"
    lay = real.layout(lay_name)
    if typ == real.enum_value("enum maple_type", "maple_leaf_64"):
        pytest.skip("the largest VMA tree is a single leaf")
    slot0 = top + lay.offset("slot")
    child = real.read_u64(slot0)
    under_first = [e for e in entries
                   if e[1] <= real.read_u64(top + lay.offset("pivot"))]
    rest = entries[len(under_first):]

    def walk(t):
        problems = []
        return list(maple.mt_for_each(t, mt, bound=BOUND, problems=problems)), problems

    t = PatchedTarget(real)
    t.patch(slot0, WILD & ~0xFF | child & 0xFF)  # same type bits, wild node
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["unreadable"]
    t = PatchedTarget(real)
    t.patch(slot0, root & ~0xFF | child & 0xFF)  # the child is the root again
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["cycle"]
    t = PatchedTarget(real)
    t.patch(slot0, child | 0x78)  # type 15: no such maple_type
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["bad_node"]
    t = PatchedTarget(real)
    t.patch(child & ~0xFF, 0xFFFF888012345000)  # the child's parent pointer
    got, problems = walk(t)
    assert got == entries and _kinds(problems) == ["broken_link"]
    t = PatchedTarget(real)
    # the first child's first pivot beyond the range its parent gives it
    leaf = real.layout("struct maple_range_64")
    t.patch((child & ~0xFF) + leaf.offset("pivot"),
            real.read_u64(top + lay.offset("pivot")) + 1)
    got, problems = walk(t)
    assert got == rest and _kinds(problems) == ["bad_node"]
    got = list(maple.mt_for_each(real, mt, bound=2, problems=(problems := [])))
    assert got == entries[:2] and _kinds(problems) == ["too_long"]
