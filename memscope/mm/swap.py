"""Swap entries in page tables and their swap counts (include/linux/swapops.h,
arch/x86/include/asm/pgtable_64.h, mm/swapfile.c ``swp_swapcount()``).

A non-present, non-empty x86_64 PTE is a swap entry in its arch form: since the L1TF
mitigation (v4.19: commit bcd11afa7ada "x86/speculation/l1tf: Change order of
offset/type in swap entry" moved the type to bits 59-63 and the offset to 9-58, and the
next, "x86/speculation/l1tf: Protect swap entries against L1TF" (id not checked here),
stores the offset inverted; every lab kernel is later) the type is the top
``SWP_TYPE_BITS`` (5) bits and the offset bits ``SWP_OFFSET_FIRST_BIT`` (9,
``_PAGE_BIT_PROTNONE + 1``) .. 58 stored inverted (v6.12
arch/x86/include/asm/pgtable_64.h)::

    __swp_type(x)   = x >> (64 - 5)
    __swp_offset(x) = ~x << 5 >> (9 + 5)

``pte_to_swp_entry()`` clears the software bits first (soft-dirty, uffd-wp, exclusive:
bits 1, 2 and 7), all below bit 9, so they never reach the type or offset.  A type at or
above ``MAX_SWAPFILES`` is not a swap entry (``non_swap_entry()``: device-private,
migration, hwpoison entries and PTE markers, from the top of the type space down);
``MAX_SWAPFILES`` is read from the debug info as the length of ``swap_info[]``
(``struct swap_info_struct *swap_info[MAX_SWAPFILES]``), not from the kernel's version.

``swp_swapcount()`` (v6.12 mm/swapfile.c) of a swap entry: ``swap_count()`` of
``si->swap_map[offset]`` (the byte less ``SWAP_HAS_CACHE``, 0x40); when that has
``COUNT_CONTINUED`` (0x80) the count goes on in the continuation pages listed on the
``lru`` of the swap map's own page (``vmalloc_to_page(si->swap_map + offset)``), each
holding one digit at the same offset in its page: ``count += (digit & ~0x80) * n``, n
starting at ``SWAP_MAP_MAX + 1`` (0x3f) and multiplied by ``SWAP_CONT_MAX + 1`` (0x80)
per page, while the digit has ``COUNT_CONTINUED``.  These constants are #defines
(include/linux/swap.h), the same from v2.6.34 ("mm: swap_map continuation") to 6.12.
``_swap_info_get()`` refuses an entry whose area is not ``SWP_USED``, whose offset is at
or past ``si->max`` or whose map byte is 0: such an entry is reported, not counted as 0
(the kernel logs "Bad swap ..." and counts it as unshared)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..target.base import TargetError
from .context import KernelContext

__all__ = ("SwapEntries", "decode", "swap_counts")

X86_SWP_TYPE_BITS = 5
X86_SWP_OFFSET_SHIFT = 9 + X86_SWP_TYPE_BITS  # SWP_OFFSET_FIRST_BIT + SWP_TYPE_BITS
SWAP_HAS_CACHE, COUNT_CONTINUED = 0x40, 0x80
SWAP_MAP_MAX, SWAP_CONT_MAX = 0x3E, 0x7F


@dataclasses.dataclass(frozen=True)
class SwapEntries:
    """Non-present PTEs decoded (parallel arrays): ``type`` and ``offset`` (uint64),
    ``swap`` (bool) the entries that are swap entries (type below ``max_swapfiles``)."""

    type: np.ndarray
    offset: np.ndarray
    swap: np.ndarray
    max_swapfiles: int


def decodes(ctx: KernelContext) -> str | None:
    """Why this kernel's swap entries are not decoded, or None when they are."""
    t = ctx.t
    if t.arch != "x86_64":
        return f"{t.arch} swap entries are not decoded"
    if not t.has_symbol("swap_info"):
        return "the kernel has no swap (CONFIG_SWAP)"
    return None


def decode(ctx: KernelContext, entries: np.ndarray) -> SwapEntries:
    """The x86_64 swap entries ENTRIES (raw non-present, non-empty PTEs; see the module).

    :raises TargetError: not decoded on this kernel (:func:`decodes` says why)."""
    why = decodes(ctx)
    if why:
        raise TargetError(why)
    e = entries.astype(np.uint64)
    typ = e >> np.uint64(64 - X86_SWP_TYPE_BITS)
    off = ((~e) << np.uint64(X86_SWP_TYPE_BITS)) >> np.uint64(X86_SWP_OFFSET_SHIFT)
    max_swapfiles = ctx.probe("MAX_SWAPFILES", lambda: ctx.t.array_length("swap_info"))
    return SwapEntries(typ, off, typ < np.uint64(max_swapfiles), max_swapfiles)


@dataclasses.dataclass
class _Area:
    si: int
    map: np.ndarray  # swap_map[0 .. max)
    map_addr: int


def _areas(ctx: KernelContext) -> dict[int, _Area | str]:
    """Each swap type below ``nr_swapfiles``: its area, or why ``_swap_info_get()``
    refuses it."""
    t = ctx.t
    nr = t.read_u32(t.symbol("nr_swapfiles"))
    if not nr:
        return {}
    lay = t.layout("struct swap_info_struct")
    if not lay.has("swap_map"):
        raise TargetError("struct swap_info_struct has no swap_map: this kernel keeps "
                          "swap counts elsewhere, which is not read")
    used = t.constant("SWP_USED")
    flags_m, max_m = lay["flags"], lay["max"]
    out: dict[int, _Area | str] = {}
    for typ in range(nr):
        si = t.read_u64(t.symbol("swap_info") + 8 * typ)
        if not si:
            out[typ] = f"swap type {typ} has no swap_info"
            continue
        if not t.read_int(si + flags_m.offset, flags_m.size) & used:
            out[typ] = f"swap type {typ} is not in use (SWP_USED clear)"
            continue
        n = t.read_int(si + max_m.offset, max_m.size)
        addr = t.read_u64(si + lay.offset("swap_map"))
        out[typ] = _Area(si, np.frombuffer(t.read(addr, n), np.uint8), addr)
    return out


def swap_counts(ctx: KernelContext, se: SwapEntries) -> tuple[np.ndarray, str | None]:
    """``swp_swapcount()`` of each swap entry of SE (its non-swap entries: 0), and why
    some entry could not be counted (None when all were: the swap areas cannot be read,
    or an entry names no area, a slot past its end or a free slot)."""
    t = ctx.t
    counts = np.zeros(len(se.type), np.int64)
    sel = np.flatnonzero(se.swap)
    if not len(sel):
        return counts, None
    try:
        areas = ctx.snapshot("swap_areas", lambda: _areas(ctx))
    except TargetError as e:
        return counts, str(e)
    problem = None
    for typ in np.unique(se.type[sel]).tolist():
        idx = sel[se.type[sel] == np.uint64(typ)]
        area = areas.get(typ, f"swap type {typ} names no swap area (nr_swapfiles "
                              f"{len(areas)})")
        if isinstance(area, str):
            problem = problem or area
            continue
        off = se.offset[idx]
        bad = off >= np.uint64(len(area.map))
        if bad.any():
            problem = problem or (f"swap entry offset {int(off[bad][0]):#x} is past swap "
                                  f"type {typ}'s {len(area.map)} slots")
        idx, off = idx[~bad], off[~bad].astype(np.int64)
        raw = area.map[off]
        if (raw == 0).any():
            problem = problem or (f"swap type {typ} slot {int(off[raw == 0][0]):#x} is "
                                  "free, yet a page table holds it")
        c = (raw & ~np.uint8(SWAP_HAS_CACHE)).astype(np.int64)  # swap_count()
        cont = (c & COUNT_CONTINUED) != 0
        c[cont] &= ~COUNT_CONTINUED
        for i in np.flatnonzero(cont).tolist():
            try:
                c[i] += _continued(ctx, area, int(off[i]))
            except TargetError as e:  # FaultError is one
                problem = problem or f"swap type {typ} slot {int(off[i]):#x}: {e}"
        counts[idx] = c
    return counts, problem


def _continued(ctx: KernelContext, area: _Area, offset: int) -> int:
    """What swp_swapcount()'s loop over the continuation pages adds for OFFSET."""
    from . import memmap
    from .vtop import vtop

    t = ctx.t
    ps = t.page_size
    tr = vtop(ctx, area.map_addr + offset)  # vmalloc_to_page(si->swap_map + offset)
    if tr.physical is None:
        raise TargetError(f"swap map page at {area.map_addr + offset:#x} is not mapped")
    vm = memmap.vmemmap_base(ctx)
    size = t.layout("struct page").size
    lru = t.layout("struct page").offset("lru")
    page = vm + (tr.physical // ps) * size
    offset &= ps - 1
    count, n = 0, SWAP_MAP_MAX + 1
    for _ in range(64):  # a count needs at most a few digits
        page = t.read_u64(page + lru) - lru  # list_next_entry(page, lru)
        pfn = (page - vm) // size
        digit = t.read_phys(pfn * ps + offset, 1)[0]
        count += (digit & ~COUNT_CONTINUED) * n
        n *= SWAP_CONT_MAX + 1
        if not digit & COUNT_CONTINUED:
            return count
    raise TargetError(f"swap count continuation of slot {offset:#x} does not end")


def swap_entries(ctx: KernelContext, lv) -> np.ndarray:
    """Which of the leaves LV (:class:`memscope.kernel.pgtable.Leaves`) are swap entries
    as ``smaps_pte_entry()`` counts them (``is_swap_pte()`` and not
    ``non_swap_entry()``): PTEs only (a non-present PMD is a migration entry).  Where
    this kernel's entries are not decoded (:func:`decodes`), every non-present entry."""
    gone = ~lv.present
    if decodes(ctx) is not None:
        return gone
    out = np.zeros(len(lv), bool)
    pte = gone & (lv.shift == ctx.t.page_size.bit_length() - 1)
    if pte.any():
        out[pte] = decode(ctx, lv.entry[pte]).swap
    return out
