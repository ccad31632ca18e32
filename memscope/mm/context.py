"""The per-target context every mm module and command reads through: :class:`KernelContext`.

It holds the :class:`~memscope.target.base.Target` and two explicit caches:

- **probes** (:meth:`KernelContext.probe`): what belongs to the kernel build and cannot
  change while it runs: layouts, enumerators, symbols, and constants derived from them
  (``pageblock_order``, the number of orders, the extfrag format's width);
- **snapshot state** (:meth:`KernelContext.snapshot`): what is read from the kernel's
  memory and changes on a live target: the zones, the ``mem_section[]`` entries, the
  decoded memmap, the pageblock bits, the free-list walker's reads.

:meth:`KernelContext.refresh` drops the snapshot state, so that the next command on a
live target (``-k``, QMP, gdb on a running guest) reads memory afresh while keeping the
probes.  Nothing outside this class touches the caches.

(It is not called ``mm``: that is the kernel's ``struct mm_struct``, a process's address
space.)
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..target.base import Target, TargetError
from . import zone as _zone
from .zone import Zone

T = TypeVar("T")


class KernelContext:
    """One target with its per-kernel probes and its per-snapshot state (see the module)."""

    def __init__(self, target: Target):
        self.t = target
        self._probes: dict[str, Any] = {}
        self._snapshot: dict[str, Any] = {}

    # --- the two caches ----------------------------------------------------------------
    def probe(self, key: str, fn: Callable[[], T]) -> T:
        """The per-kernel value KEY, computed by FN() on first use and kept for the life of
        the context (layouts, enumerators, derived constants: nothing a running kernel
        changes)."""
        try:
            return self._probes[key]
        except KeyError:
            v = self._probes[key] = fn()
            return v

    def snapshot(self, key: str, fn: Callable[[], T]) -> T:
        """The per-snapshot value KEY (state read from memory), computed by FN() on first
        use and kept until :meth:`refresh`."""
        try:
            return self._snapshot[key]
        except KeyError:
            v = self._snapshot[key] = fn()
            return v

    def peek_snapshot(self, key: str) -> Any:
        """The per-snapshot value KEY if it was computed already, else None (nothing is
        computed)."""
        return self._snapshot.get(key)

    def refresh(self) -> None:
        """Forget every snapshot value: the next reads see the target's memory as it is
        now.  The probes stay."""
        self._snapshot.clear()

    # --- per-kernel probes ---------------------------------------------------------------
    @property
    def zone_layout(self):
        """``struct zone``'s layout."""
        return self.probe("zone_layout", lambda: self.t.layout("struct zone"))

    @property
    def pgdat_layout(self):
        """``struct pglist_data``'s layout."""
        return self.probe("pgdat_layout", lambda: self.t.layout("struct pglist_data"))

    @property
    def nr_orders(self) -> int:
        """NR_PAGE_ORDERS: the length of ``zone->free_area[]``."""
        return self.probe("nr_orders", self._nr_orders)

    def _nr_orders(self) -> int:
        # Take the number of orders from the array: MAX_ORDER was exclusive up to v6.3,
        # inclusive from v6.4 (commit 23baf831a32c) and renamed MAX_PAGE_ORDER in v6.8;
        # free_area[] always has NR_PAGE_ORDERS entries.
        n = self.zone_layout["free_area"].array_length
        if not n:
            raise TargetError("struct zone.free_area has no array length")
        return n

    @property
    def free_area_size(self) -> int:
        """sizeof(struct free_area)."""
        return self.probe("free_area_size", lambda: self.t.sizeof("struct free_area"))

    @property
    def migratetypes(self) -> dict[str, int]:
        """enum migratetype's enumerators and values, e.g. {"MIGRATE_UNMOVABLE": 0, ...}.

        CMA and ISOLATE exist only with CONFIG_CMA / CONFIG_MEMORY_ISOLATION, so their
        values move: read them from the debug info."""
        return self.probe("migratetypes",
                          lambda: {k: v for k, v in self.t.enum("enum migratetype").items()})

    # --- nodes and zones (memscope.mm.zone) ----------------------------------------------
    def node_ids(self) -> list[int]:
        """The online nodes, in order (for_each_online_node)."""
        return _zone.node_ids(self)

    def pgdat(self, nid: int) -> int:
        """NODE_DATA(nid): the address of node NID's ``pglist_data``."""
        return _zone.pgdat(self, nid)

    def zones(self, nid: int) -> list[Zone]:
        """Every zone of node NID (populated or not), in node_zones order."""
        return _zone.zones(self, nid)

    def all_zones(self, populated_only: bool = True) -> list[Zone]:
        """Every zone of every online node (only the populated ones unless
        POPULATED_ONLY is false), read once per snapshot; a new list each call."""
        zones = self.snapshot("all_zones",
                              lambda: [z for nid in self.node_ids() for z in self.zones(nid)])
        return [z for z in zones if z.populated or not populated_only]
