"""Red-black trees (include/linux/rbtree.h, rbtree_types.h): ``struct rb_root
{ rb_node }``, ``struct rb_root_cached { rb_root, rb_leftmost }`` and ``struct rb_node
{ __rb_parent_color, rb_right, rb_left }`` (the parent pointer with the colour in bit 0).

:func:`rbtree_inorder_for_each` visits the nodes in key order, as ``rb_first()`` /
``rb_next()`` do, bounded and checked like the list walks (:mod:`memscope.kernel.list`):
at most BOUND nodes (``too_long``), a node seen twice is a ``cycle`` and a pointer that
cannot be read ``unreadable`` (neither is followed further: the rest of the tree is still
walked), a node whose parent pointer is not the node it hangs from is ``broken_link``.
"""

from __future__ import annotations

import struct
from typing import Iterator

from ..target.base import FaultError, Target
from .addr import is_kernel_address
from .fields import offsetof
from .list import Reader
from .problem import Problem, ProblemSink

__all__ = ("rb_parent", "rbtree_inorder_for_each", "rbtree_inorder_for_each_entry")

_MASK64 = (1 << 64) - 1


def rb_parent(parent_color: int) -> int:
    """``rb_parent()``: the parent's address from ``__rb_parent_color`` (low two bits
    hold the colour)."""
    return parent_color & ~3 & _MASK64


class _Node:
    """struct rb_node's layout (probed once per call)."""

    def __init__(self, t: Target):
        lay = t.layout("struct rb_node")
        self.size = lay.size
        self.parent = lay.offset("__rb_parent_color")
        self.right = lay.offset("rb_right")
        self.left = lay.offset("rb_left")


def rbtree_inorder_for_each(t: Target, root: int, *, bound: int, problems: list[Problem],
                            where: str | None = None,
                            read: Reader | None = None) -> Iterator[int]:
    """Iterate over the nodes of the tree at ROOT in order (smallest key first), bounded
    and checked (see the module).

    :param root: address of the ``struct rb_root`` (or ``struct rb_root_cached``, whose
        first member it is).
    :param bound: the most nodes the tree can hold.
    :param problems: problems found are appended here.
    :return: iterator of node addresses (``struct rb_node *``).
    """
    read = read or t.read
    lay = _Node(t)
    sink = ProblemSink(problems, where or f"rbtree {root:#x}")
    unpack = struct.Struct("<Q").unpack_from
    try:
        node = unpack(read(root, 8))[0]
    except FaultError:
        sink.add("unreadable", f"rb_root {root:#x} cannot be read")
        return
    visited: set[int] = set()
    stack: list[tuple[int, int]] = []  # (node, its rb_right), waiting for their turn
    parent = 0  # the node NODE hangs from (0 for the root)
    while True:
        while node:
            if node in visited:
                sink.add("cycle", f"node {node:#x} (a child of {parent:#x}) was visited "
                         "before")
                break
            if len(visited) >= bound:
                sink.add("too_long", f"more than {bound} nodes: walk stopped")
                return
            try:
                if not is_kernel_address(node):
                    raise FaultError(node, lay.size)
                raw = read(node, lay.size)
            except FaultError:
                sink.add("unreadable", f"node {node:#x} (a child of {parent:#x}) cannot "
                         "be read")
                break
            visited.add(node)
            if rb_parent(unpack(raw, lay.parent)[0]) != parent:
                sink.add("broken_link", f"node {node:#x}: parent "
                         f"{rb_parent(unpack(raw, lay.parent)[0]):#x} is not {parent:#x}, "
                         "the node it hangs from")
            if sink.full:
                return
            stack.append((node, unpack(raw, lay.right)[0]))
            parent, node = node, unpack(raw, lay.left)[0]
        if sink.full or not stack:
            return
        node, right = stack.pop()
        yield node
        parent, node = node, right


def rbtree_inorder_for_each_entry(t: Target, type_name: str, root: int, member: str, *,
                                  bound: int, problems: list[Problem],
                                  where: str | None = None,
                                  read: Reader | None = None) -> Iterator[int]:
    """The structures holding the nodes of the tree at ROOT in their MEMBER (a
    ``struct rb_node``), in order, as ``rbtree_inorder_for_each_entry()`` does.

    :param type_name: e.g. ``"struct vmap_area"``; MEMBER e.g. ``"rb_node"``.
    :return: iterator of entry addresses (``type_name *``)."""
    off = offsetof(t, type_name, member)
    for node in rbtree_inorder_for_each(t, root, bound=bound, problems=problems,
                                        where=where, read=read):
        yield (node - off) & _MASK64
