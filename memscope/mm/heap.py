"""A process's memory as glibc's malloc sees it, read from the kernel's side.

- The brk heap is ``[mm->start_brk, mm->brk)``: malloc's main arena grows it with
  ``sbrk()``.  Its pages are read through the process's page tables
  (:func:`memscope.kernel.pgtable.walk_leaves`); a page the tables do not map (never
  touched), that is swapped out or that the dump does not hold is reported as such
  (:data:`MISSING`), not guessed.
- The chunk walk (glibc malloc/malloc.c, ``struct malloc_chunk``): each chunk starts
  with ``mchunk_prev_size`` and ``mchunk_size`` (8 bytes each on 64-bit); the size's low
  bits are PREV_INUSE (1), IS_MMAPPED (2) and NON_MAIN_ARENA (4); the next chunk starts
  ``size & ~7`` bytes later.  The first chunk sits at ``start_brk`` (sbrk returns a
  page-aligned break, already MALLOC_ALIGNMENT-aligned); the last one is the top chunk,
  which must end exactly at ``brk``.  A chunk is in use when the next chunk's PREV_INUSE
  is set: chunks in tcache and fastbins keep it set, so they count as in use here unless
  found in the tcache (``tcache_perthread_struct``, the heap's first chunk since glibc
  2.26: ``counts[64]`` of u16 then ``entries[64]``; glibc >= 2.32 protects each
  ``next`` pointer as ``(pos >> 12) ^ ptr``; glibc 2.42 made it ``num_slots[76]`` then
  ``entries[76]``, allocated when first used, anywhere in the heap: :data:`TCACHE_LAYOUTS`).  Fastbins live in ``main_arena``, which a
  static binary keeps in its own data segment without symbols: not searched.
- Direct mmaps: malloc serves a request of at least ``M_MMAP_THRESHOLD`` (128 KiB by
  default) with its own anonymous mapping, whose first chunk header says IS_MMAPPED and
  whose size fits the mapping.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from ..kernel.pgtable import walk_leaves
from ..target.base import TargetError
from .context import KernelContext
from .task import Task
from .vma import address_space, vmas

__all__ = ("STATES", "HeapReport", "heap")

PREV_INUSE, IS_MMAPPED, NON_MAIN_ARENA = 1, 2, 4
SIZE_BITS = 7
MIN_CHUNK = 32
MMAP_THRESHOLD = 128 << 10
#: A walk stops after this many chunks (a 64 GiB heap of minimum-size chunks).
MAX_CHUNKS = 1 << 31


#: A chunk's state, as HeapReport.state codes index it.
STATES = ("in use", "free", "tcache", "top")


@dataclasses.dataclass
class HeapReport:
    """What :func:`heap` found, sizes in bytes.

    ``start_brk``/``brk`` the heap's bounds; ``first_chunk`` where malloc's chunks start
    (``start_brk`` unless something took memory with sbrk() before malloc); ``resident`` bytes of it the page tables map;
    ``missing`` (start, end, why) ranges of the heap whose bytes cannot be read, WHY one of
    :data:`MISSING` ("not mapped": no page-table entry, never touched or unmapped;
    "swapped out": a non-present entry, a swap or migration entry; "not in the dump": the
    tables map a page the dump does not hold); the walk, one entry per chunk in address order (empty when it could not
    start): ``address`` of each header, ``size`` in bytes (flags cleared) and ``state``,
    an index into :data:`STATES` (in use, free, tcache, top); ``tiles`` whether the chunks
    cover [first_chunk, brk) exactly, the top chunk last; ``error`` why the walk stopped
    early (a corrupt size, a page missing under a header), or None; ``by_size`` per chunk
    size (bytes) the number of chunks of each state; ``mmapped`` (start, end, chunk size)
    of anonymous mappings that hold a malloc mmap chunk; ``tcache_problems`` tcache
    entries that are not chunks of the heap."""

    pid: int
    start_brk: int
    brk: int
    first_chunk: int
    resident: int
    missing: list[tuple[int, int, str]]
    address: np.ndarray  # uint64
    size: np.ndarray  # uint64
    state: np.ndarray  # uint8, index into STATES
    tiles: bool
    error: str | None
    by_size: dict[int, dict[str, int]]
    mmapped: list[tuple[int, int, int]]
    tcache_problems: list[str]

    def count(self, state: str) -> int:
        """Chunks in STATE (one of :data:`STATES`)."""
        return int(np.count_nonzero(self.state == STATES.index(state)))


class _UserMemory:
    """A process's memory read through its page tables, page by page."""

    def __init__(self, ctx: KernelContext, task: Task):
        self.t = ctx.t
        _lay, self.paging, self.read_phys, self.pgd = address_space(ctx, task)
        self.page = ctx.t.page_size

    def pages(self, start: int, end: int) -> tuple[dict[int, bytes], dict[int, str]]:
        """({page address: its bytes} for every page of [START, END) the tables map and the
        target holds, {page address: why} for the other pages under an entry: "swapped
        out" (a non-present entry) or "not in the dump")."""
        out, why = {}, {}
        lv = walk_leaves(self.paging, self.pgd, start, end, self.read_phys)
        for i in range(len(lv)):
            va, pa, lsize = int(lv.va[i]), int(lv.pa[i]), 1 << int(lv.shift[i])
            lo, hi = max(va, start - start % self.page), min(va + lsize, end)
            data = self.read_phys(pa + (lo - va), hi - lo) if lv.present[i] else None
            if data is None or len(data) != hi - lo:
                reason = MISSING[2] if lv.present[i] else MISSING[1]
                why.update(dict.fromkeys(range(lo, hi, self.page), reason))
                continue
            for off in range(0, hi - lo, self.page):
                out[lo + off] = data[off:off + self.page]
        return out, why


#: Why a heap page cannot be read (:attr:`HeapReport.missing`).
MISSING = ("not mapped", "swapped out", "not in the dump")


def _missing(pages: dict[int, bytes], why: dict[int, str], start: int, end: int,
             size: int) -> list[tuple[int, int, str]]:
    """The pages of [START, END) not in PAGES as (start, end, why) ranges."""
    out: list[tuple[int, int, str]] = []
    for p in range(start - start % size, end, size):
        if p in pages:
            continue
        w = why.get(p, MISSING[0])
        if out and out[-1][1] == p and out[-1][2] == w:
            out[-1] = (out[-1][0], p + size, w)
        else:
            out.append((p, p + size, w))
    return out


class _Image:
    """The heap [START, END) as one buffer (END - START a multiple of 16), and which
    16-byte slots lie on pages the tables map and the dump holds: what the chunk walk
    and the tcache reads both read."""

    def __init__(self, pages: dict[int, bytes], start: int, end: int, page: int):
        self.start = start
        nslot = (end - start) // 16 if end > start else 0
        buf = bytearray(nslot * 16)
        held = bytearray(nslot)
        for p, data in pages.items():
            lo, hi = max(p, start), min(p + page, start + nslot * 16)
            if hi <= lo:
                continue
            buf[lo - start:hi - start] = data[lo - p:hi - p]
            held[(lo - start) // 16:(hi - start) // 16] = b"\1" * ((hi - lo) // 16)
        self.buf, self.held, self.nslot = bytes(buf), held, nslot

    def sizes(self) -> list[int]:
        """The second word of every 16-byte slot (a chunk header's size field)."""
        return np.frombuffer(self.buf, "<u8")[1::2].tolist() if self.nslot else []

    def unpack(self, fmt: str, addr: int) -> int | None:
        """The little-endian integer of struct format FMT at ADDR, None where it is not
        in the heap or not held."""
        n = struct.calcsize(fmt)
        off = addr - self.start
        if off < 0 or off + n > len(self.buf) or \
                not all(self.held[off // 16:(off + n - 1) // 16 + 1]):
            return None
        return struct.unpack_from("<" + fmt, self.buf, off)[0]


@dataclasses.dataclass(frozen=True)
class TcacheLayout:
    """One glibc's ``struct tcache_perthread_struct`` (malloc/malloc.c), told apart by the
    size field of the chunk that holds it: ``counts[bins]`` of ``count`` ("B": u8, "H":
    u16) then ``entries[bins]``; with ``slots`` the counts are glibc 2.42's
    ``num_slots[]``, the room left in each bin (a bin holds the fill count minus its slots).
    ``first``: the heap's first chunk (tcache_init at the first malloc), which glibc 2.42's
    lazily made tcache need not be."""

    size_field: int
    count: str
    bins: int
    slots: bool
    first: bool


#: glibc 2.26-2.29 (char counts[64]), 2.30-2.41 (uint16_t counts[64]) and 2.42+
#: (uint16_t num_slots[76]: 64 small bins and TCACHE_LARGE_BINS 12, NEWS of 2.42: "tcache
#: now supports caching of large blocks").
TCACHE_LAYOUTS = (TcacheLayout(0x251, "B", 64, False, True),
                  TcacheLayout(0x291, "H", 64, False, True),
                  TcacheLayout(0x301, "H", 76, True, False))
#: A bin's walk stops here (counts are u16).
TCACHE_MAX_WALK = 1 << 16


def _find_tcache(img: "_Image", raw: list[tuple[int, int]], lo: int,
                 hi: int) -> tuple[int, TcacheLayout] | None:
    """(address of the chunk holding the tcache_perthread_struct, its layout), or None: the
    first chunk when its size is an older glibc's; else the first chunk of 2.42's size
    whose every entry is NULL or a chunk of the heap."""
    if not raw:
        return None
    for lay in TCACHE_LAYOUTS:
        if lay.first and raw[0][1] == lay.size_field:
            return raw[0][0], lay
    for lay in TCACHE_LAYOUTS:
        if lay.first:
            continue
        for at, field in raw:
            if field != lay.size_field:
                continue
            entries_at = at + 16 + (2 if lay.count == "H" else 1) * lay.bins
            mems = [img.unpack("Q", entries_at + 8 * b) for b in range(lay.bins)]
            if all(m is not None and (m == 0 or (lo + 16 <= m < hi and m % 16 == 0))
                   for m in mems):
                return at, lay
    return None


def _tcache(img: _Image, at: int, lay: TcacheLayout, lo: int, hi: int,
            problems: list[str]) -> set[int]:
    """Chunk addresses held in the tcache whose tcache_perthread_struct (layout LAY) is the
    chunk at AT; safe-linking (2.32: ``next = (&e->next >> 12) ^ real next``) is recognised
    per pointer."""
    held: set[int] = set()
    counts_at = at + 16
    width = 2 if lay.count == "H" else 1
    entries_at = counts_at + width * lay.bins
    counts = [img.unpack(lay.count, counts_at + width * b) or 0 for b in range(lay.bins)]
    if lay.slots:
        # num_slots: the fill count (mp_.tcache_count, a tunable) where a bin is empty;
        # the largest of them is it (at least one bin of 76 is empty in any real heap)
        fill = max(counts)
        counts = [fill - c for c in counts]
    for b in range(lay.bins):
        n = counts[b]
        mem = img.unpack("Q", entries_at + 8 * b)
        if not n or not mem:
            continue
        seen = 0
        while mem and seen < min(n, TCACHE_MAX_WALK):
            if not lo + 16 <= mem < hi or mem % 16:
                problems.append(f"tcache bin {b}: entry {mem:#x} is not a chunk of the heap")
                break
            held.add(mem - 16)
            seen += 1
            nxt = img.unpack("Q", mem)
            if nxt is None:
                break
            demangled = (mem >> 12) ^ nxt
            mem = demangled if nxt and (lo <= demangled < hi or not lo <= nxt < hi) else nxt
    return held


def heap(ctx: KernelContext, task: Task) -> HeapReport:
    """The brk heap of TASK walked chunk by chunk, and its malloc mmaps (see the module).

    :raises TargetError: TASK has no address space."""
    t = ctx.t
    if not task.mm:
        raise TargetError(f"pid {task.pid} ({task.comm}) has no address space")
    mm = t.layout("struct mm_struct")
    start = t.read_u64(task.mm + mm.offset("start_brk"))
    brk = t.read_u64(task.mm + mm.offset("brk"))
    um = _UserMemory(ctx, task)
    pages, why = um.pages(start, brk) if brk > start else ({}, {})
    size = um.page
    missing = _missing(pages, why, start, brk, size) if brk > start else []
    resident = sum(min(p + size, brk) - max(p, start) for p in pages)

    # The heap's words at every 16-byte step as Python ints (a chunk header is 16-aligned:
    # its size field is the second word), with whether the page under each is held.
    img = _Image(pages, start, brk, size)
    nslot, held_slot, fields = img.nslot, img.held, img.sizes()

    def walk(pos: int) -> tuple[list[tuple[int, int]], int, str | None]:
        raw: list[tuple[int, int]] = []  # (address, size field)
        i, end = (pos - start) // 16, nslot
        while i < end and len(raw) < MAX_CHUNKS:
            if not held_slot[i]:
                at = start + 16 * i
                return raw, at, (f"chunk header at {at:#x} cannot be read: its page is "
                                 f"{why.get(at - at % size, MISSING[0])}")
            field = fields[i]
            csize = field & ~SIZE_BITS
            if csize < MIN_CHUNK or csize % 16 or i + csize // 16 > end:
                return raw, start + 16 * i, f"chunk at {start + 16 * i:#x} has a bad size {field:#x}"
            raw.append((start + 16 * i, field))
            i += csize // 16
        return raw, start + 16 * i, None

    # malloc's first sbrk() need not be the first: a static binary's TLS block comes from
    # sbrk() before malloc runs (__libc_setup_tls).  malloc's heap starts at its
    # mp_.sbrk_base, which a symbol-less static binary does not name.  Its first chunk is
    # the tcache_perthread_struct (glibc >= 2.26: 0x290 bytes with u16 counts, 0x250 with
    # u8 counts before 2.30), in use: take the first 16-aligned place in the first 64 KiB
    # that holds such a header and from which the chunks tile to brk; else the first
    # place from which any chunks tile to brk.
    first = start
    raw, pos, error = walk(start)
    if error is not None or pos != brk:
        limit = min(64 << 10, nslot * 16)
        cands = [c for c in range(0, limit, 16) if held_slot[c // 16]]
        sizes = {lay.size_field for lay in TCACHE_LAYOUTS if lay.first}
        tcache_like = [c for c in cands if fields[c // 16] in sizes]
        others = set(tcache_like)
        for cand in tcache_like + [c for c in cands if c not in others]:
            r2, p2, e2 = walk(start + cand)
            if e2 is None and p2 == brk and r2 and r2[0][1] & PREV_INUSE:
                first, raw, pos, error = start + cand, r2, p2, None
                break
        else:
            if missing and error is not None and "cannot be read" not in error:
                # The walk from start_brk met no missing page, yet no start tiles: malloc's
                # first chunk may be on one (a static binary's TLS comes first).
                error += ("; no other start tiles the heap, and malloc's first chunk may "
                          f"be on a page that is {missing[0][2]} ({missing[0][0]:#x})")
    tiles = error is None and pos == brk and bool(raw)
    problems: list[str] = []
    found = _find_tcache(img, raw, start, brk)
    held = _tcache(img, *found, start, brk, problems) if found else set()
    addr = np.array([a for a, _ in raw], np.uint64)
    field = np.array([f for _, f in raw], np.uint64)
    state = np.full(len(raw), STATES.index("in use"), np.uint8)
    if len(raw) > 1:
        free = (field[1:] & np.uint64(PREV_INUSE)) == 0
        state[:-1][free] = STATES.index("free")
    if held:
        state[np.isin(addr, np.array(sorted(held), np.uint64))] = STATES.index("tcache")
    if tiles:
        state[-1] = STATES.index("top")
    csize = field & ~np.uint64(SIZE_BITS)
    by_size: dict[int, dict[str, int]] = {}
    if len(raw):
        keys, counts = np.unique(csize * np.uint64(8) + state, return_counts=True)
        for k, n in zip(keys.tolist(), counts.tolist()):
            by_size.setdefault(k // 8, {})[STATES[k % 8]] = n
    mmapped = []
    for v in vmas(ctx, task):
        if v.file or v.name or not v.vma or v.end - v.start < MMAP_THRESHOLD:
            continue
        head = um.pages(v.start, v.start + 16)[0].get(v.start)
        if head is None:
            continue
        prev, word = struct.unpack_from("<QQ", head)
        msize = word & ~SIZE_BITS
        if word & IS_MMAPPED and prev % 16 == 0 and MMAP_THRESHOLD <= msize + prev \
                <= v.end - v.start:
            mmapped.append((v.start, v.end, msize))
    return HeapReport(task.pid, start, brk, first, resident, missing, addr, csize, state,
                      tiles, error, dict(sorted(by_size.items())), mmapped, problems)
