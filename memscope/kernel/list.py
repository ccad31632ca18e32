"""Doubly linked lists and hash lists (include/linux/list.h, include/linux/types.h).

``struct list_head { next, prev }`` and ``struct hlist_head { first }`` /
``struct hlist_node { next, pprev }``, walked as the kernel's ``list_for_each()`` and
``hlist_for_each()`` do, but bounded and checked, so that a corrupted dump or a live
kernel changing under the read gives :class:`~memscope.kernel.problem.Problem` records
instead of an exception or a hang:

- at most BOUND entries (the caller's bound, derived from the dump: a counter, the number
  of pages...); one more is ``too_long`` and stops the walk;
- an entry seen before is a ``cycle`` and stops the walk;
- a pointer that cannot be read, or is not a kernel address (NULL included), is
  ``unreadable`` and stops the walk;
- each entry's back link (``prev``; ``pprev`` for hash lists) must point to the entry
  before it, and the head's ``prev`` to the last entry: else ``broken_link`` (the walk
  goes on, as the kernel's forward walk would);
- after :data:`~memscope.kernel.problem.MAX_PROBLEMS` problems the walk gives up.

The walks read memory only through the Target (``Target.read``), or through READ when the
caller has the memory at hand already (e.g. struct pages read in bulk).
"""

from __future__ import annotations

import struct
from typing import Callable, Iterator

from ..target.base import FaultError, Target
from .addr import is_kernel_address
from .fields import offsetof
from .problem import Problem, ProblemSink

__all__ = ("BadEntry", "hlist_for_each", "hlist_for_each_entry", "list_for_each",
           "list_for_each_entry", "list_empty", "llist_for_each_entry")

_LINK = struct.Struct("<QQ")  # {next, prev} and {next, pprev}: two pointers
_MASK64 = (1 << 64) - 1

#: Reads SIZE bytes at an address; raises FaultError (``Target.read``'s contract).
Reader = Callable[[int, int], bytes]


def _links(read: Reader, address: int) -> tuple[int, int] | None:
    """The two pointers of the list_head or hlist_node at ADDRESS, or None (unreadable,
    or not a kernel address: NULL included)."""
    if not is_kernel_address(address):
        return None
    try:
        return _LINK.unpack(read(address, 16))
    except FaultError:
        return None


def list_empty(t: Target, head: int) -> bool:
    """``list_empty(head)``: whether the list at HEAD has no entry (``head->next == head``).

    :raises FaultError: the head cannot be read."""
    return t.read_u64(head) == head


class BadEntry(Exception):
    """Raised by an ``entry_links`` hook of :func:`list_for_each`: the pointer cannot be
    an entry of the list.  The walk records a problem of KIND with MESSAGE and stops."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def list_for_each(t: Target, head: int, *, bound: int, problems: list[Problem],
                  where: str | None = None, read: Reader | None = None,
                  sink: ProblemSink | None = None,
                  entry_links: Callable[[int, int], tuple[int, int]] | None = None,
                  describe: Callable[[int, int], str] | None = None) -> Iterator[int]:
    """Iterate over the ``struct list_head`` entries of the list at HEAD (head excluded),
    as ``list_for_each(pos, head)`` does, bounded and checked (see the module).

    :param t: the target.
    :param head: address of the ``struct list_head`` that heads the list.
    :param bound: the most entries the list can hold; a longer walk stops (``too_long``).
    :param problems: problems found are appended here.
    :param where: the ``where`` of the problems (default: the head's address).
    :param read: reads memory instead of ``t.read`` (same contract).
    :param sink: collects the problems instead of a new sink on *problems*: a caller that
        checks each entry itself shares one problem limit with the walk this way.
    :param entry_links: ``entry_links(n, pos)`` gives the ``(next, prev)`` pointers of
        entry N (from 0) at POS instead of a read, or raises :class:`BadEntry` when POS
        cannot be an entry (e.g. it is not inside the array the entries live in, or that
        memory cannot be read): for entries the caller has in memory already, checked
        its own way.  The head is still read through *read*.
    :param describe: ``describe(n, pos)`` names entry N in messages (default ``"entry N
        at POS"``); called after the entry's links were read.
    :return: iterator of entry addresses (``struct list_head *``), in list order.
    """
    read = read or t.read
    if sink is None:
        sink = ProblemSink(problems, where or f"list {head:#x}")
    links = _links(read, head)
    if links is None:
        sink.add("unreadable", f"list head {head:#x} cannot be read")
        return
    nxt, last = links
    prev = head
    visited: set[int] = set()
    n = 0
    while nxt != head:
        if nxt in visited:
            sink.add("cycle", f"entry {nxt:#x} comes back after {n} entries "
                     "(the list never returns to its head)")
            return
        if n >= bound:
            sink.add("too_long", f"more than {bound} entries: walk stopped")
            return
        if entry_links is not None:
            try:
                nn, pp = entry_links(n, nxt)
            except BadEntry as e:
                sink.add(e.kind, e.message)
                return
        else:
            links = _links(read, nxt)
            if links is None:
                sink.add("unreadable", f"entry {n} at {nxt:#x} (after {prev:#x}) cannot be "
                         "read")
                return
            nn, pp = links
        if pp != prev:
            name = describe(n, nxt) if describe else f"entry {n} at {nxt:#x}"
            sink.add("broken_link", f"{name}: prev {pp:#x} is not the previous entry "
                     f"{prev:#x}")
            if sink.full:
                return
        visited.add(nxt)
        n += 1
        yield nxt
        prev, nxt = nxt, nn
    if last != prev:
        sink.add("broken_link", f"head {head:#x}: prev {last:#x} is not the last entry "
                 f"{prev:#x}")


def list_for_each_entry(t: Target, type_name: str, head: int, member: str, *, bound: int,
                        problems: list[Problem], where: str | None = None,
                        read: Reader | None = None) -> Iterator[int]:
    """Iterate over the structures linked on the list at HEAD through their MEMBER, as
    ``list_for_each_entry(pos, head, member)`` does (bounded and checked, see
    :func:`list_for_each`).

    :param type_name: the entries' type, e.g. ``"struct task_struct"``.
    :param member: the ``struct list_head`` member that links them, e.g. ``"tasks"``
        (a dotted path reaches into nested structs: ``"se.group_node"``).
    :return: iterator of entry addresses (``type_name *``), in list order.
    """
    off = offsetof(t, type_name, member)
    for pos in list_for_each(t, head, bound=bound, problems=problems, where=where, read=read):
        yield (pos - off) & _MASK64


def _runaway(sink: ProblemSink, visited: set[int], pos: int, n: int, bound: int) -> bool:
    """Whether a walk of NULL-terminated nodes must stop before node POS (the Nth): it
    came back (``cycle``) or the walk is past BOUND (``too_long``); the problem recorded."""
    if pos in visited:
        sink.add("cycle", f"node {pos:#x} comes back after {n} nodes")
        return True
    if n >= bound:
        sink.add("too_long", f"more than {bound} nodes: walk stopped")
        return True
    return False


def hlist_for_each(t: Target, head: int, *, bound: int, problems: list[Problem],
                   where: str | None = None, read: Reader | None = None) -> Iterator[int]:
    """Iterate over the ``struct hlist_node`` entries of the hash list at HEAD (a
    ``struct hlist_head``), as ``hlist_for_each(pos, head)`` does, bounded and checked:
    each node's ``pprev`` must hold the address of the pointer that led to it
    (``&head->first``, then ``&prev->next``).

    :param head: address of the ``struct hlist_head``.
    :return: iterator of node addresses (``struct hlist_node *``), in list order.
    """
    read = read or t.read
    sink = ProblemSink(problems, where or f"hlist {head:#x}")
    try:
        if not is_kernel_address(head):
            raise FaultError(head, 8)
        pos = int.from_bytes(read(head, 8), "little")
    except FaultError:
        sink.add("unreadable", f"hlist head {head:#x} cannot be read")
        return
    link = head  # where the pointer to POS is stored: &head->first, then &node->next
    visited: set[int] = set()
    n = 0
    while pos:
        if _runaway(sink, visited, pos, n, bound):
            return
        links = _links(read, pos)
        if links is None:
            sink.add("unreadable", f"node {n} at {pos:#x} (after {link:#x}) cannot be read")
            return
        nxt, pprev = links
        if pprev != link:
            sink.add("broken_link", f"node {n} at {pos:#x}: pprev {pprev:#x} is not "
                     f"{link:#x}, where the pointer to it is")
            if sink.full:
                return
        visited.add(pos)
        n += 1
        yield pos
        link, pos = pos, nxt  # hlist_node.next is the node's first word


def hlist_for_each_entry(t: Target, type_name: str, head: int, member: str, *, bound: int,
                         problems: list[Problem], where: str | None = None,
                         read: Reader | None = None) -> Iterator[int]:
    """Iterate over the structures on the hash list at HEAD through their MEMBER (a
    ``struct hlist_node``), as ``hlist_for_each_entry(pos, head, member)`` does.

    :return: iterator of entry addresses (``type_name *``), in list order.
    """
    off = offsetof(t, type_name, member)
    for pos in hlist_for_each(t, head, bound=bound, problems=problems, where=where, read=read):
        yield (pos - off) & _MASK64


def llist_for_each_entry(t: Target, type_name: str, first: int, member: str, *, bound: int,
                         problems: list[Problem], where: str | None = None,
                         read: Reader | None = None) -> Iterator[int]:
    """Iterate over the structures on a lock-less list (include/linux/llist.h: ``struct
    llist_node { next }``, NULL-terminated) starting at node FIRST (``head->first``), as
    ``llist_for_each_entry(pos, first, member)`` does, bounded and checked (a singly
    linked list has no back links to check; cycles and unreadable nodes are found).

    :param first: address of the first ``struct llist_node`` (0: an empty list).
    :return: iterator of entry addresses (``type_name *``), in list order.
    """
    read = read or t.read
    off = offsetof(t, type_name, member)
    sink = ProblemSink(problems, where or f"llist {first:#x}")
    pos, n = first, 0
    visited: set[int] = set()
    while pos:
        if _runaway(sink, visited, pos, n, bound):
            return
        try:
            if not is_kernel_address(pos):
                raise FaultError(pos, 8)
            nxt = int.from_bytes(read(pos, 8), "little")
        except FaultError:
            sink.add("unreadable", f"node {n} at {pos:#x} cannot be read")
            return
        visited.add(pos)
        n += 1
        yield (pos - off) & _MASK64
        pos = nxt
