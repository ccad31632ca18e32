"""Maple trees (include/linux/maple_tree.h, lib/maple_tree.c; since v6.1, commit
54a611b60590 "Maple Tree: add new data structure"): a B-tree of ranges, e.g. a process's
VMAs in ``mm_struct.mm_mt``.

``struct maple_tree { lock, ma_flags, ma_root }``.  ``ma_root`` is NULL, a single entry
for index 0, or a node pointer (``xa_mk_node()``: the node's address | 2).  A child pointer
in a node is an encoded node (``mt_mk_node()``): the 256-byte aligned node address | its
type << 3 (MAPLE_ENODE_TYPE_SHIFT) | 4 (MAPLE_ENODE_NULL).  The node types are
``enum maple_type`` (read from the debug info): ``maple_dense`` (a slot per index),
``maple_leaf_64`` and ``maple_range_64`` (``struct maple_range_64``: 15 pivots, 16 slots,
``meta.end`` in the last slot's bytes) and ``maple_arange_64`` (``struct maple_arange_64``:
9 pivots, 10 slots, 10 gaps, ``meta``).  Slot I covers ``[pivot[I-1] + 1, pivot[I]]``
(the node's minimum for I = 0, its maximum after the last pivot); the number of used
slots is ``ma_data_end()``'s.  Every pivot count comes from the array lengths in the
debug info.

:func:`mt_for_each` is bounded and checked like the other walks: a node's ``parent`` must
point to the node it hangs from (the root's: the tree | MA_ROOT_PARENT, 1), its pivots
must rise inside its range, its type must be known, and a node seen twice is a ``cycle``.
"""

from __future__ import annotations

import struct
from typing import Iterator

from ..target.base import FaultError, Target, TargetError
from .addr import is_kernel_address
from .list import Reader
from .problem import Problem, ProblemSink
from .xarray import XA_ZERO_ENTRY, xa_is_node

__all__ = ("mt_for_each", "mtree_load")

MAPLE_NODE_MASK = 255  # nodes are 256-byte aligned
MAPLE_ENODE_TYPE_SHIFT = 3
MAPLE_ENODE_TYPE_MASK = 0xF
MA_ROOT_PARENT = 1
_MASK64 = (1 << 64) - 1


class _Layout:
    """The node layouts and enum maple_type, probed once per call."""

    def __init__(self, t: Target):
        self.root = t.layout("struct maple_tree").offset("ma_root")
        node = t.layout("struct maple_node")
        self.size = node.size
        self.dense_slots = node["slot"].array_length  # MAPLE_NODE_SLOTS
        self.dense_slot = node.offset("slot")
        mt = t.enum("enum maple_type")
        self.dense, self.leaf = mt["maple_dense"], mt["maple_leaf_64"]
        self.range, self.arange = mt["maple_range_64"], mt["maple_arange_64"]
        r = t.layout("struct maple_range_64")
        a = t.layout("struct maple_arange_64")
        meta = t.layout("struct maple_metadata").offset("end")
        # type -> (pivot offset, pivots, slot offset, slots, meta.end offset)
        self.shapes = {
            self.leaf: (r.offset("pivot"), r["pivot"].array_length, r.offset("slot"),
                        r["slot"].array_length, r.offset("meta") + meta),
            self.arange: (a.offset("pivot"), a["pivot"].array_length, a.offset("slot"),
                          a["slot"].array_length, a.offset("meta") + meta),
        }
        self.shapes[self.range] = self.shapes[self.leaf]


def _data_end(raw: bytes, typ: int, lay: _Layout, pivots: tuple[int, ...], max_: int) -> int:
    """``ma_data_end()``: the offset of the last used slot of the node."""
    _, npiv, _, _, meta_end = lay.shapes[typ]
    if typ == lay.arange:
        return raw[meta_end]
    last = pivots[npiv - 1]
    if not last:
        return raw[meta_end]
    if last == max_:
        return npiv - 1
    return npiv


def _ranges(raw: bytes, typ: int, lay: _Layout, min_: int, max_: int,
            ) -> tuple[list[tuple[int, int, int]], str | None]:
    """The (first, last, slot) ranges of a node that covers [MIN_, MAX_], and what is wrong
    with it (None if nothing)."""
    if typ == lay.dense:
        slots = struct.unpack_from(f"<{lay.dense_slots}Q", raw, lay.dense_slot)
        if max_ - min_ + 1 < len(slots) and max_ != _MASK64:
            slots = slots[:max_ - min_ + 1]
        return [(min_ + i, min_ + i, s) for i, s in enumerate(slots)], None
    poff, npiv, soff, nslots, _ = lay.shapes[typ]
    pivots = struct.unpack_from(f"<{npiv}Q", raw, poff)
    slots = struct.unpack_from(f"<{nslots}Q", raw, soff)
    end = _data_end(raw, typ, lay, pivots, max_)
    if end >= nslots:
        return [], f"data end {end} is past the node's {nslots} slots"
    out = []
    prev = min_
    for i in range(end):
        if not prev <= pivots[i] <= max_:
            return out, (f"pivot[{i}] {pivots[i]:#x} is outside [{prev:#x}, {max_:#x}]")
        out.append((prev, pivots[i], slots[i]))
        prev = pivots[i] + 1
    if prev <= max_:  # (a last pivot at the node's maximum leaves slot END no range)
        out.append((prev, max_, slots[end]))
    return out, None


def mtree_load(t: Target, mt: int, index: int, *, advanced: bool = False) -> int:
    """``mtree_load(mt, index)``: the entry whose range holds INDEX in the maple tree at
    MT, or 0.

    :param advanced: return zero entries (XA_ZERO_ENTRY) instead of 0.
    :raises FaultError: a node on the way cannot be read.
    :raises TargetError: a node has an unknown type or bad pivots."""
    lay = _Layout(t)
    entry = t.read_u64(mt + lay.root)
    if not xa_is_node(entry):
        return entry if index == 0 else 0
    min_, max_ = 0, _MASK64
    while True:
        typ = entry >> MAPLE_ENODE_TYPE_SHIFT & MAPLE_ENODE_TYPE_MASK
        if typ not in lay.shapes and typ != lay.dense:
            raise TargetError(f"maple node {entry:#x} has unknown type {typ}")
        raw = t.read(entry & ~MAPLE_NODE_MASK, lay.size)
        ranges, bad = _ranges(raw, typ, lay, min_, max_)
        if bad:
            raise TargetError(f"maple node {entry & ~MAPLE_NODE_MASK:#x}: {bad}")
        for first, last, slot in ranges:
            if first <= index <= last:
                break
        else:
            return 0
        if typ in (lay.leaf, lay.dense):
            return 0 if slot == XA_ZERO_ENTRY and not advanced else slot
        entry, min_, max_ = slot, first, last


def mt_for_each(t: Target, mt: int, *, bound: int, problems: list[Problem],
                where: str | None = None, advanced: bool = False,
                read: Reader | None = None) -> Iterator[tuple[int, int, int]]:
    """``mt_for_each(mt, entry, index, max)``: (first index, last index, entry) of every
    non-NULL entry of the maple tree at MT, in index order (both indices inclusive),
    bounded and checked (see the module).

    :param mt: address of the ``struct maple_tree`` (e.g. ``&mm->mm_mt``).
    :param bound: the most entries the tree holds (e.g. ``mm->map_count``): more is
        ``too_long``; at most ``4 * BOUND + 2`` nodes are read (a node holds at least one
        range, and entries and the gaps between them make at most ``2 * BOUND + 1``).
    :param advanced: also yield zero entries (XA_ZERO_ENTRY), as drgn's ``advanced``.
    :return: iterator of (first, last, entry).
    """
    read = read or t.read
    lay = _Layout(t)
    sink = ProblemSink(problems, where or f"maple tree {mt:#x}")
    try:
        root = int.from_bytes(read(mt + lay.root, 8), "little")
    except FaultError:
        sink.add("unreadable", f"maple tree {mt:#x} cannot be read")
        return
    if not xa_is_node(root):
        if root:
            yield 0, 0, root
        return
    max_nodes = 4 * bound + 2
    visited: set[int] = set()
    yielded = 0
    # (encoded node, min, max, expected parent word & ~MAPLE_NODE_MASK or root parent)
    stack = [(root, 0, _MASK64, (mt | MA_ROOT_PARENT) & _MASK64)]
    while stack:
        enode, min_, max_, parent = stack.pop()
        node = enode & ~MAPLE_NODE_MASK & _MASK64
        typ = enode >> MAPLE_ENODE_TYPE_SHIFT & MAPLE_ENODE_TYPE_MASK
        if node in visited:
            sink.add("cycle", f"node {node:#x} was visited before")
        elif len(visited) >= max_nodes:
            sink.add("too_long", f"more than {max_nodes} nodes: walk stopped")
            return
        elif typ not in lay.shapes and typ != lay.dense:
            sink.add("bad_node", f"node pointer {enode:#x} has unknown type {typ}")
        else:
            try:
                if not is_kernel_address(node):
                    raise FaultError(node, lay.size)
                raw = read(node, lay.size)
            except FaultError:
                raw = None
                sink.add("unreadable", f"node {node:#x} [{min_:#x}, {max_:#x}] cannot be "
                         "read")
            if raw is not None:
                visited.add(node)
                p, = struct.unpack_from("<Q", raw, 0)
                got = p if parent & MA_ROOT_PARENT else p & ~MAPLE_NODE_MASK
                if got != parent:
                    sink.add("broken_link", f"node {node:#x}: parent {p:#x} is not "
                             f"{parent:#x}")
                ranges, bad = _ranges(raw, typ, lay, min_, max_)
                if bad:
                    sink.add("bad_node", f"node {node:#x} [{min_:#x}, {max_:#x}]: {bad}")
                elif typ in (lay.leaf, lay.dense):
                    for first, last, slot in ranges:
                        if not slot or slot == XA_ZERO_ENTRY and not advanced:
                            continue
                        if yielded >= bound:
                            sink.add("too_long", f"more than {bound} entries: walk stopped")
                            return
                        yielded += 1
                        yield first, last, slot
                else:
                    for first, last, slot in reversed(ranges):
                        if slot:
                            stack.append((slot, first, last, node))
                        else:
                            sink.add("bad_node", f"node {node:#x}: no child for "
                                     f"[{first:#x}, {last:#x}]")
        if sink.full:
            return
