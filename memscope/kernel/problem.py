"""The one record of something wrong that a walk of a kernel structure finds.

Every bounded walk of this package (lists, rbtrees, maple trees, xarrays) turns corruption
or a structure changing under the read into :class:`Problem` records appended to a list
the caller passes, never an exception or a hang.  It is also the record of the mm walks
and checks (``memscope.mm.freelists``: free lists, per-CPU lists, counters), which fill in
``node`` and ``zone``; their kinds are listed there.

Kinds the walks of this package report:

- ``cycle``: an entry comes back (the walk stops there);
- ``unreadable``: a pointer leads to memory that cannot be read, NULL included (stops);
- ``broken_link``: a back link (``list_head.prev``, ``hlist_node.pprev``, rb parent,
  xa_node parent/offset/shift, maple parent) does not point where it must;
- ``bad_node``: a tree node whose contents cannot be valid (an unknown maple node type,
  pivots out of order or outside the node's range, an xa_node shift that does not fit);
- ``too_long``: more entries than the caller's bound (stops);
- ``gave_up``: :data:`MAX_PROBLEMS` problems in one walk; the rest is not walked.

And the commands that report what they could not check (``check``):

- ``missing_page``: a read needed a page the dump left out (a filtered or truncated
  dump, :class:`memscope.target.base.MissingPage`); what it held was not checked.
"""

from __future__ import annotations

import dataclasses

__all__ = ("MAX_PROBLEMS", "Problem", "ProblemSink")

#: A walk stops after this many problems (the rest of the structure cannot be trusted).
MAX_PROBLEMS = 16


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong found by a walk.

    :param kind: what is wrong (see the module's list of kinds).
    :param where: the structure walked, e.g. ``"init_task.tasks"`` or ``"vmap_area_root"``.
    :param message: one line that says what was found, with addresses.
    :param node: the NUMA node the structure belongs to, when the caller knows one.
    :param zone: the zone name, when the caller knows one.
    """

    kind: str
    where: str
    message: str
    node: int | None = None
    zone: str | None = None

    def __post_init__(self) -> None:
        # The mm walks' former record took (kind, node, zone, where, message): a call in
        # that order must fail here, not make a record with the fields swapped.
        if not (isinstance(self.where, str) and isinstance(self.message, str)
                and (self.node is None or isinstance(self.node, int))
                and (self.zone is None or isinstance(self.zone, str))):
            raise TypeError("Problem(kind, where, message, node=None, zone=None): "
                            f"got where={self.where!r}, message={self.message!r}, "
                            f"node={self.node!r}, zone={self.zone!r}")

    def to_json(self) -> dict:
        """The record as JSON data, keys in the order every command prints them: ``kind``,
        ``node``, ``zone``, ``where``, ``message`` (``node`` and ``zone`` null when
        unknown)."""
        return {"kind": self.kind, "node": self.node, "zone": self.zone,
                "where": self.where, "message": self.message}

    def __str__(self) -> str:
        context = ""
        if self.node is not None:
            context += f"node {self.node} "
        if self.zone is not None:
            context += f"zone {self.zone} "
        return f"{context}{self.where}: {self.message}"


class ProblemSink:
    """Collects one walk's problems into the caller's list and says when to give up.

    :param problems: the caller's list; records are appended to it.
    :param where: the ``where`` of every record.
    :param limit: problems after which :meth:`add` appends a ``gave_up`` record and
        :attr:`full` turns true (the walk then stops).
    :param node: the ``node`` of every record (None: unknown).
    :param zone: the ``zone`` of every record (None: unknown).
    """

    def __init__(self, problems: list[Problem], where: str, limit: int = MAX_PROBLEMS, *,
                 node: int | None = None, zone: str | None = None):
        self.problems = problems
        self.where = where
        self.limit = limit
        self.node = node
        self.zone = zone
        self.count = 0

    @property
    def full(self) -> bool:
        """Whether the walk has found ``limit`` problems and must stop."""
        return self.count >= self.limit

    def add(self, kind: str, message: str) -> None:
        """Record one problem (and ``gave_up`` when this one reaches the limit)."""
        if self.full:
            return
        self.problems.append(Problem(kind, self.where, message, self.node, self.zone))
        self.count += 1
        if self.full:
            self.problems.append(Problem("gave_up", self.where,
                                         f"{self.limit} problems: the rest is not walked",
                                         self.node, self.zone))
