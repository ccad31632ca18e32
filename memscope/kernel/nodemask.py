"""Node masks (include/linux/nodemask.h): ``nodemask_t { DECLARE_BITMAP(bits,
MAX_NUMNODES) }`` and the global ``node_states[NR_NODE_STATES]`` (mm/page_alloc.c),
indexed by ``enum node_states`` (N_POSSIBLE, N_ONLINE, N_NORMAL_MEMORY, N_MEMORY,
N_CPU...: read from the debug info, the list depends on the configuration).

Iterations stop at ``nr_node_ids`` (``for_each_node_mask()`` stops at MAX_NUMNODES,
beyond which no node is ever set; drgn stops at nr_node_ids too).  Without CONFIG_NUMA
``node_states`` does not exist and node 0 is the one node in every state."""

from __future__ import annotations

from typing import Iterator

from ..target.base import Target, TargetError
from .bitops import for_each_set_bit, read_bitmap

__all__ = ("for_each_node", "for_each_node_mask", "for_each_node_state",
           "for_each_online_node", "node_state", "node_states", "nr_node_ids")


def nr_node_ids(t: Target) -> int:
    """``nr_node_ids``: one more than the highest possible node number (1 without NUMA,
    where it is a constant)."""
    if not t.has_symbol("nr_node_ids"):
        return 1
    return t.read_u32(t.symbol("nr_node_ids"))


def node_states(t: Target, state: str | int) -> int:
    """The address of ``node_states[STATE]`` (a ``nodemask_t``).

    :param state: an ``enum node_states`` enumerator name (``"N_ONLINE"``) or value.
    :raises TargetError: no ``node_states`` (!CONFIG_NUMA) or no such state."""
    if isinstance(state, str):
        state = t.enum_value("enum node_states", state)
    n = t.enum_value("enum node_states", "NR_NODE_STATES")
    if not 0 <= state < n:
        raise TargetError(f"node state {state} is not below NR_NODE_STATES ({n})")
    return t.symbol("node_states") + state * t.sizeof("nodemask_t")


def for_each_node_mask(t: Target, mask: int) -> Iterator[int]:
    """``for_each_node_mask(node, mask)``: the nodes of the ``nodemask_t`` at MASK."""
    n = nr_node_ids(t)
    return for_each_set_bit(read_bitmap(t, mask, n), n)


def for_each_node_state(t: Target, state: str | int) -> Iterator[int]:
    """``for_each_node_state(node, state)`` (node 0 alone without CONFIG_NUMA)."""
    if not t.has_symbol("node_states"):
        return iter([0])
    return for_each_node_mask(t, node_states(t, state))


def node_state(t: Target, node: int, state: str | int) -> bool:
    """``node_state(node, state)``: whether NODE is in STATE."""
    return node in for_each_node_state(t, state)


def for_each_node(t: Target) -> Iterator[int]:
    """``for_each_node(node)``: the possible nodes."""
    return for_each_node_state(t, "N_POSSIBLE")


def for_each_online_node(t: Target) -> Iterator[int]:
    """``for_each_online_node(node)``."""
    return for_each_node_state(t, "N_ONLINE")
