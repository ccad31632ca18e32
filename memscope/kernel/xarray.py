"""XArrays (include/linux/xarray.h, lib/xarray.c): ``struct xarray { xa_lock, xa_flags,
xa_head }`` and ``struct xa_node { shift, offset, count, nr_values, parent, array, ...,
slots[XA_CHUNK_SIZE], marks }``.  The page cache (``address_space.i_pages``), IDRs and
many kernel tables are XArrays (since v4.20; the radix tree is one too).

Entries (xarray.h): an internal entry has ``(entry & 3) == 2``; a node pointer is an
internal entry above 4096 (``xa_mk_node(node) = node | 2``), a sibling of a multi-index
entry one below ``xa_mk_sibling(XA_CHUNK_SIZE - 1)`` (its slot number << 2 | 2), the retry
and zero entries are ``xa_mk_internal(256)`` and ``xa_mk_internal(257)``; a value entry
(e.g. a page cache shadow entry) has bit 0 set.  XA_CHUNK_SIZE is the length of
``xa_node.slots`` in the debug info (64 unless CONFIG_BASE_SMALL).

:func:`xa_for_each` is bounded and checked like the list walks: each node must name the
node it hangs from (``parent``), its slot there (``offset``), its array (``array``) and
a ``shift`` one chunk below its parent's; a node seen twice is a ``cycle``; a node that
cannot be read is ``unreadable`` (its subtree is skipped).
"""

from __future__ import annotations

import struct
from typing import Iterator

from ..target.base import FaultError, Target
from .addr import is_kernel_address
from .list import Reader
from .problem import Problem, ProblemSink

__all__ = ("XA_RETRY_ENTRY", "XA_ZERO_ENTRY", "xa_for_each", "xa_is_internal", "xa_is_node",
           "xa_is_sibling", "xa_is_value", "xa_is_zero", "xa_load", "xa_to_value")


def xa_mk_internal(v: int) -> int:
    """``xa_mk_internal(v)``: ``v << 2 | 2``."""
    return v << 2 | 2


XA_RETRY_ENTRY = xa_mk_internal(256)
XA_ZERO_ENTRY = xa_mk_internal(257)


def xa_is_internal(entry: int) -> bool:
    """``xa_is_internal()``: a node, sibling, retry or zero entry."""
    return entry & 3 == 2


def xa_is_node(entry: int) -> bool:
    """``xa_is_node()``: an internal entry that points to a ``struct xa_node`` (+2)."""
    return xa_is_internal(entry) and entry > 4096


def xa_is_sibling(entry: int, chunk_size: int = 64) -> bool:
    """``xa_is_sibling()``: a slot of a multi-index entry other than its first."""
    return xa_is_internal(entry) and entry < xa_mk_internal(chunk_size - 1)


def xa_is_value(entry: int) -> bool:
    """``xa_is_value()``: an integer stored in the array (bit 0 set)."""
    return bool(entry & 1)


def xa_to_value(entry: int) -> int:
    """``xa_to_value()``: the integer of a value entry."""
    return entry >> 1


def xa_is_zero(entry: int) -> bool:
    """``xa_is_zero()``: a reserved slot (seen only by the advanced API)."""
    return entry == XA_ZERO_ENTRY


class _XaNode:
    """struct xarray / struct xa_node layouts (probed once per call)."""

    def __init__(self, t: Target):
        xa = t.layout("struct xarray")
        self.head = xa.offset("xa_head")
        node = t.layout("struct xa_node")
        self.size = node.size
        self.shift = node.offset("shift")
        self.offset = node.offset("offset")
        self.parent = node.offset("parent")
        self.array = node.offset("array")
        self.slots = node.offset("slots")
        self.chunk = node["slots"].array_length or 64
        self.chunk_shift = self.chunk.bit_length() - 1

    def slot_values(self, raw: bytes) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.chunk}Q", raw, self.slots)


def xa_load(t: Target, xa: int, index: int, *, advanced: bool = False) -> int:
    """``xa_load(xa, index)``: the entry at INDEX of the XArray at XA, or 0.

    :param advanced: return zero entries (:data:`XA_ZERO_ENTRY`) instead of 0.
    :raises FaultError: a node on the way cannot be read."""
    lay = _XaNode(t)
    entry = t.read_u64(xa + lay.head)
    if not xa_is_node(entry):
        entry = entry if index == 0 else 0
    else:
        top = True
        while xa_is_node(entry):
            raw = t.read(entry - 2, lay.size)
            shift = raw[lay.shift]
            if top and index >> shift >= lay.chunk:
                return 0  # beyond the root node's span (xa_load's max_index check)
            top = False
            slots = lay.slot_values(raw)
            entry = slots[index >> shift & (lay.chunk - 1)]
            if xa_is_sibling(entry, lay.chunk):
                entry = slots[entry >> 2]
            if shift == 0:
                break
    if entry == XA_ZERO_ENTRY and not advanced:
        return 0
    return entry


class _Frame:
    """One node of the walk: its slots and the next one to look at."""

    __slots__ = ("node", "base", "shift", "slots", "next")

    def __init__(self, node: int, base: int, shift: int, slots: tuple[int, ...]):
        self.node, self.base, self.shift, self.slots, self.next = node, base, shift, slots, 0


def xa_for_each(t: Target, xa: int, *, bound: int, problems: list[Problem],
                where: str | None = None, advanced: bool = False,
                read: Reader | None = None) -> Iterator[tuple[int, int]]:
    """``xa_for_each(xa, index, entry)``: (index, entry) for every present entry of the
    XArray at XA, in index order, bounded and checked (see the module).  A multi-index
    entry is yielded once, at its first index; siblings and retry entries are not
    yielded, zero entries only when ADVANCED.

    :param bound: the most entries the array can hold (e.g. ``mapping->nrpages``): more
        is ``too_long``; the walk reads at most ``BOUND * height + 1`` nodes.
    :param problems: problems found are appended here.
    :return: iterator of (index, entry) with the entry's raw value (a pointer, or a value
        entry: see :func:`xa_is_value`).
    """
    read = read or t.read
    lay = _XaNode(t)
    sink = ProblemSink(problems, where or f"xarray {xa:#x}")
    try:
        head = int.from_bytes(read(xa + lay.head, 8), "little")
    except FaultError:
        sink.add("unreadable", f"xarray {xa:#x} cannot be read")
        return
    if not xa_is_node(head):
        if head and not xa_is_internal(head) or advanced and head == XA_ZERO_ENTRY:
            yield 0, head
        return
    max_nodes = bound * (64 // lay.chunk_shift + 1) + 1
    visited: set[int] = set()
    yielded = 0

    def enter(node: int, base: int, parent: int, offset: int, shift: int | None):
        """Read and check the node at NODE; a _Frame, or None (a problem was recorded)."""
        if node in visited:
            sink.add("cycle", f"node {node:#x} (under {parent:#x}) was visited before")
            return None
        if len(visited) >= max_nodes:
            sink.add("too_long", f"more than {max_nodes} nodes: walk stopped")
            return None
        try:
            if not is_kernel_address(node):
                raise FaultError(node, lay.size)
            raw = read(node, lay.size)
        except FaultError:
            sink.add("unreadable", f"node {node:#x} (under {parent:#x}) cannot be read")
            return None
        visited.add(node)
        n_shift, n_offset = raw[lay.shift], raw[lay.offset]
        n_parent, = struct.unpack_from("<Q", raw, lay.parent)
        n_array, = struct.unpack_from("<Q", raw, lay.array)
        if n_parent != parent or (parent and n_offset != offset) or n_array != xa:
            sink.add("broken_link", f"node {node:#x}: parent {n_parent:#x} offset "
                     f"{n_offset} array {n_array:#x}, expected {parent:#x}, {offset}, "
                     f"{xa:#x}")
        if n_shift % lay.chunk_shift or shift is not None and n_shift != shift:
            want = f"a multiple of {lay.chunk_shift}" if shift is None else str(shift)
            sink.add("bad_node", f"node {node:#x}: shift {n_shift}, expected {want}")
            return None
        return _Frame(node, base, n_shift, lay.slot_values(raw))

    frame = enter(head - 2, 0, 0, 0, None)
    stack = [frame] if frame else []
    while stack and not sink.full:
        f = stack[-1]
        if f.next >= lay.chunk:
            stack.pop()
            continue
        i = f.next
        f.next += 1
        entry = f.slots[i]
        if not entry:
            continue
        index = f.base + (i << f.shift)
        if xa_is_node(entry):
            if f.shift == 0:
                sink.add("bad_node", f"node {f.node:#x} slot {i}: node pointer {entry:#x} "
                         "in a leaf node")
                continue
            child = enter(entry - 2, index, f.node, i, f.shift - lay.chunk_shift)
            if child:
                stack.append(child)
            continue
        if xa_is_internal(entry) and not (advanced and entry == XA_ZERO_ENTRY):
            continue  # sibling, retry, zero
        if yielded >= bound:
            sink.add("too_long", f"more than {bound} entries: walk stopped")
            return
        yielded += 1
        yield index, entry
