"""/proc/PID/smaps_rollup from the page tables and the struct pages (fs/proc/task_mmu.c
``show_smaps_rollup()``, ``smap_gather_stats()``, ``smaps_pte_entry()``,
``smaps_pmd_entry()``, ``smaps_account()``, ``smaps_page_accumulate()``,
``__show_smap()``).

What each line adds up, per present leaf entry of every VMA but the gate VMA (the
entries ``vm_normal_page()`` backs with a struct page: not special (the zero page, PFN
maps), a pfn below the memmap's end, not the huge zero page), with SIZE the entry's
bytes (a 2 MiB block counts whole: ``compound_nr()``) and its folio the compound head:

- ``Rss`` SIZE; ``Anonymous`` SIZE if ``folio_test_anon()`` (``mapping`` bit 0);
  ``LazyFree`` anon, not PG_swapbacked, neither the entry nor the folio dirty; ``KSM``
  (v6.6+) ``mapping & 3 == 3``; ``Referenced`` the entry young (x86_64 _PAGE_ACCESSED,
  arm64 PTE_AF) or the folio PG_young (where the kernel has that flag: 64-bit
  CONFIG_PAGE_IDLE_FLAG) or PG_referenced;
- ``AnonHugePages`` / ``ShmemPmdMapped`` / ``FilePmdMapped`` the 2 MiB entries by folio
  kind (anon, PG_swapbacked, else file);
- the sharing lines: a folio whose ``_refcount`` is 1 adds SIZE to ``Pss`` (in
  1/2^PSS_SHIFT units, PSS_SHIFT 12) and to the Private lines; otherwise each of its
  pages here adds ``(PAGE_SIZE << 12) / mapcount`` (integer division, mapcount >= 2) or
  ``PAGE_SIZE << 12`` and goes to the Shared lines when mapcount >= 2.  The mapcount is
  ``_mapcount + 1`` plus, for a large folio, the whole-folio mapcount in its first tail
  page: v6.12/7.2 ``folio_precise_page_mapcount()`` (``folio->_entire_mapcount + 1``),
  v5.10/6.1 ``page_mapcount()`` (``page[1].compound_mapcount + 1`` for anon folios,
  less one with PG_double_map; file folios their own count only).  Dirty (the entry:
  x86_64 _PAGE_DIRTY, plus _PAGE_SAVED_DIRTY from v6.6; arm64 PTE_DIRTY, or PTE_WRITE
  without PTE_RDONLY) or PG_dirty on the folio sends SIZE to the ``*_Dirty`` lines and
  the Pss to ``Pss_Dirty``, else to ``*_Clean``; ``Pss_Anon`` / ``Pss_Shmem`` /
  ``Pss_File`` by folio kind; ``Locked`` the Pss of VM_LOCKED VMAs.
- every value is printed ``>> 10`` (Pss-like ones ``>> 12`` first), 8 wide
  (``Private_Hugetlb`` 7); the header is ``show_vma_header_prefix()`` of the first VMA's
  start and the last one's end, padded like a maps line, then ``[rollup]``.

Swap entries (x86_64; :mod:`memscope.mm.swap`): each non-present PTE whose type is below
MAX_SWAPFILES adds PAGE_SIZE to ``Swap`` and ``(PAGE_SIZE << PSS_SHIFT) / count`` to
``SwapPss`` when its ``swp_swapcount()`` is 2 or more, else ``PAGE_SIZE << PSS_SHIFT``
(v6.12 ``smaps_pte_entry()``).

The lines each kernel prints come from ``struct mem_size_stats`` in its debug info:
``Pss_Dirty`` with the ``pss_dirty`` member (v6.0, "proc: smaps: add PSS_Dirty"),
``KSM`` with ``ksm`` (v6.6, "mm/smaps: add KSM accounting"; commit ids unverified).

Not reproduced (``smaps_rollup`` raises :class:`NotReproducible`, naming the line, rather
than print a guess):

- ``Swap`` / ``SwapPss`` when a swap entry cannot be counted (it names no swap area in
  use, a slot past the area's end or a free slot; the area's counts are not in a
  ``swap_map``), on a kernel whose swap entries are not decoded (arm64), or when a shmem
  file's inode has pages in swap (``shmem_inode_info.swapped``: ``shmem_swap_usage()``'s
  walk of the page cache);
- ``Rss`` (and every line the page would add to) when the tables hold a non-swap entry
  (migration, device-private, hwpoison, PTE marker) or a non-present PMD: smaps accounts
  the page a migration entry names, which is not done here;
- ``Shared_Hugetlb`` / ``Private_Hugetlb`` when a VM_HUGETLB VMA maps anything
  (``hugetlb_pmd_shared()`` needs the refcount of the page-table page itself);
- CONFIG_NO_PAGE_MAPCOUNT kernels (7.x, experimental; not Debian's) average the
  mapcount over the folio: the debug info does not say which a kernel was built with,
  so the per-page count above is what is computed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.problem import Problem
from ..target.base import TargetError
from . import memmap, page as _page, swap
from .context import KernelContext
from .task import Task
from .vma import _PAD, walk_vmas

__all__ = ("NotReproducible", "Rollup", "format_smaps_rollup", "smaps_rollup")

PSS_SHIFT = 12
VM_LOCKED = 0x2000
VM_HUGETLB = 0x00400000
PAGE_MAPPING_ANON, PAGE_MAPPING_KSM = 0x1, 0x3
X86_PAGE_ACCESSED, X86_PAGE_DIRTY, X86_PAGE_SAVED_DIRTY = 1 << 5, 1 << 6, 1 << 58
ARM64_PTE_RDONLY, ARM64_PTE_AF, ARM64_PTE_WRITE, ARM64_PTE_DIRTY = 1 << 7, 1 << 10, 1 << 51, 1 << 55

#: The lines in the kernel's order: (label, mem_size_stats member, in Pss units).
LINES = (("Rss", "resident", False), ("Pss", "pss", True), ("Pss_Dirty", "pss_dirty", True),
         ("Pss_Anon", "pss_anon", True), ("Pss_File", "pss_file", True),
         ("Pss_Shmem", "pss_shmem", True), ("Shared_Clean", "shared_clean", False),
         ("Shared_Dirty", "shared_dirty", False), ("Private_Clean", "private_clean", False),
         ("Private_Dirty", "private_dirty", False), ("Referenced", "referenced", False),
         ("Anonymous", "anonymous", False), ("KSM", "ksm", False),
         ("LazyFree", "lazyfree", False), ("AnonHugePages", "anonymous_thp", False),
         ("ShmemPmdMapped", "shmem_thp", False), ("FilePmdMapped", "file_thp", False),
         ("Shared_Hugetlb", "shared_hugetlb", False),
         ("Private_Hugetlb", "private_hugetlb", False), ("Swap", "swap", False),
         ("SwapPss", "swap_pss", True), ("Locked", "pss_locked", True))


class NotReproducible(TargetError):
    """A line of smaps_rollup that this dump does not determine (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Rollup:
    """A process's smaps_rollup: ``start``/``end`` the header's range (first VMA's start,
    last VMA's end), ``values`` each printed line's label -> its value in bytes (the Pss
    lines already shifted down by PSS_SHIFT; in the kernel's order, only the lines this
    kernel prints), ``unknown`` label -> why it cannot be reproduced from the dump (its
    value in ``values`` is then what was counted without the missing part)."""

    start: int
    end: int
    values: dict[str, int]
    unknown: dict[str, str]


class _Bits:
    """The entry bits of the architecture (pte_young(), pte_dirty())."""

    def __init__(self, t):
        self.arm = t.arch == "aarch64"
        # _PAGE_SAVED_DIRTY (bit 58) counts as dirty from v6.6 (x86 user shadow stacks,
        # which brought arch_check_zapped_pte()); before, bit 58 was _PAGE_DEVMAP
        self.saved_dirty = not self.arm and t.has_symbol("arch_check_zapped_pte")

    def young(self, e: np.ndarray) -> np.ndarray:
        return (e & np.uint64(ARM64_PTE_AF if self.arm else X86_PAGE_ACCESSED)) != 0

    def dirty(self, e: np.ndarray) -> np.ndarray:
        if self.arm:
            hw = ((e & np.uint64(ARM64_PTE_WRITE)) != 0) & ((e & np.uint64(ARM64_PTE_RDONLY)) == 0)
            return hw | ((e & np.uint64(ARM64_PTE_DIRTY)) != 0)
        bits = X86_PAGE_DIRTY | (X86_PAGE_SAVED_DIRTY if self.saved_dirty else 0)
        return (e & np.uint64(bits)) != 0


class _Folios:
    """What smaps_account() reads of the folios of a set of pages."""

    def __init__(self, ctx: KernelContext, pfns: np.ndarray):
        t = ctx.t
        pl = self.pl = _page.page_layout(ctx)
        rec = memmap.struct_pages_of(ctx, pfns)
        info = memmap.struct_page_word(rec, pl.compound_off, "<u8")
        self.mapcount = memmap.struct_page_word(rec, pl.mapcount_off, "<i4").astype(np.int64) + 1
        tail = (info & np.uint64(1)) == 1
        head = pfns.copy()
        if tail.any():
            head[tail] = _page._heads(pl, _page.vmemmap_base(ctx), pfns[tail], info[tail])
        self.head = head
        hrec = memmap.struct_pages_of(ctx, head)
        flags = memmap.struct_page_word(hrec, pl.flags_off, "<u8")
        pf = pl.pageflags

        def flag(name: str) -> np.ndarray:
            bit = pf.get(name)
            if bit is None:
                return np.zeros(len(pfns), bool)
            return (flags >> np.uint64(bit) & np.uint64(1)) == 1

        mapping = memmap.struct_page_word(hrec, pl.mapping_off, "<u8")
        self.anon = (mapping & np.uint64(PAGE_MAPPING_ANON)) != 0
        self.ksm = (mapping & np.uint64(3)) == PAGE_MAPPING_KSM
        self.swapbacked = flag("PG_swapbacked")
        self.dirty = flag("PG_dirty")
        # folio_test_young(): PG_young exists with 64-bit CONFIG_PAGE_IDLE_FLAG; without
        # it page_is_young() is false (the page_ext variant is 32-bit only)
        self.young = flag("PG_young") | flag("PG_referenced")
        self.refcount = memmap.struct_page_word(hrec, pl.refcount_off, "<i4")
        self.large = flag("PG_head")
        # the first tail page: the whole-folio mapcount (and 5.10/6.1's PG_double_map)
        self.entire = np.zeros(len(pfns), np.int64)
        self.double_map = np.zeros(len(pfns), bool)
        if self.large.any():
            sel = np.flatnonzero(self.large)
            r1 = memmap.struct_pages_of(ctx, head[sel] + 1)
            if t.layout("struct page").has("compound_mapcount"):
                # v5.10/6.1 (gone in v6.3 with the folio's _entire_mapcount, commit
                # 4b51634cd16a "mm/thp: remove page_compound_mapcount" and its series)
                off = t.layout("struct page").offset("compound_mapcount")
                self.entire[sel] = memmap.struct_page_word(r1, off, "<i4").astype(np.int64) + 1
                if "PG_double_map" in pf:
                    f1 = memmap.struct_page_word(r1, pl.flags_off, "<u8")
                    self.double_map[sel] = (f1 >> np.uint64(pf["PG_double_map"]) & np.uint64(1)) == 1
            else:
                off = t.layout("struct folio").offset("_entire_mapcount") - pl.size
                self.entire[sel] = memmap.struct_page_word(r1, off, "<i4").astype(np.int64) + 1
        self.old_mapcount = t.layout("struct page").has("compound_mapcount")

    def page_mapcount(self) -> np.ndarray:
        """Each page's mapcount as smaps reads it (see the module)."""
        m = self.mapcount.copy()
        m[m < -127] = 0  # page_mapcount_is_type(): page_type in the same word
        if self.old_mapcount:  # __page_mapcount(): whole-folio count for anon only
            add = self.large & self.anon
            m[add] += self.entire[add] - self.double_map[add]
        else:
            m[self.large] += self.entire[self.large]
        return m


def smaps_rollup(ctx: KernelContext, task: Task, problems: list[Problem] | None = None
                 ) -> Rollup:
    """TASK's /proc/PID/smaps_rollup (see the module for each line's arithmetic).

    :param problems: a page table that cannot be read is recorded here.
    :raises TargetError: a kernel thread (no address space), or a missing type."""
    t = ctx.t
    ps = t.page_size
    shift = ps.bit_length() - 1
    w = walk_vmas(ctx, task, problems)
    bits = _Bits(t)
    mss = dict.fromkeys((m for _, m, _ in LINES), 0)
    unknown: dict[str, str] = {}
    huge_zero = t.read_u64(t.symbol("huge_zero_pfn")) if t.has_symbol("huge_zero_pfn") else -1
    units = []  # per accounted entry: (pfn, pages, young, dirty, locked)
    for v, lv in zip(w.vmas, w.leaves):
        if not v.vma or not len(lv):
            continue
        if v.flags & VM_HUGETLB:
            unknown["Shared_Hugetlb"] = unknown["Private_Hugetlb"] = (
                f"VMA {v.start:#x} is a hugetlb mapping: hugetlb_pmd_shared() needs the "
                "page-table page's refcount")
            continue
        gone = ~lv.present
        if gone.any():
            _swap(ctx, v, lv.take(gone), mss, unknown)
        pfn = (lv.pa >> np.uint64(shift)).astype(np.int64)
        ok = lv.present & ~lv.special & (pfn < w.max_pfn) & ~((lv.shift == 21) & (pfn == huge_zero))
        units.append((pfn[ok], (lv.size[ok] >> shift).astype(np.int64), bits.young(lv.entry[ok]),
                      bits.dirty(lv.entry[ok]), np.full(int(ok.sum()), bool(v.flags & VM_LOCKED))))
    _shmem_swap(ctx, w.vmas, unknown)
    if units:
        pfn, pages, young, dirty, locked = (np.concatenate(c) for c in zip(*units))
        _account(ctx, mss, pfn, pages, young, dirty, locked, ps)
    lay = t.layout("struct mem_size_stats") if t.has_type("struct mem_size_stats") else None
    values = {}
    for label, m, pss in LINES:
        if lay is not None and not lay.has(m):
            continue
        values[label] = mss[m] >> PSS_SHIFT if pss else mss[m]
    real = [v for v in w.vmas if v.vma]
    return Rollup(real[0].start if real else 0, real[-1].end if real else 0, values, unknown)


def _swap(ctx: KernelContext, v, lv, mss: dict, unknown: dict) -> None:
    """smaps_pte_entry() on the non-present entries LV of VMA V: each swap entry adds
    PAGE_SIZE to Swap and to SwapPss PAGE_SIZE << PSS_SHIFT, divided by its
    swp_swapcount() when that is 2 or more (memscope.mm.swap).  Anything else (a
    migration, device or hwpoison entry, a PTE marker, a non-present PMD; the entries of
    a kernel whose swap entries are not decoded) leaves a line unknown."""
    ps = ctx.t.page_size
    why = swap.decodes(ctx)
    if why is not None:
        mss["swap"] += int(lv.size.sum())
        unknown["Swap"] = unknown["SwapPss"] = (
            f"VMA {v.start:#x} holds non-present entries (swap or migration): {why}")
        return
    pte = lv.shift == ps.bit_length() - 1
    if not pte.all():
        unknown.setdefault("Rss", f"VMA {v.start:#x} holds a non-present PMD (a migration "
                                  "entry): its page is not accounted")
    se = swap.decode(ctx, lv.entry[pte])
    if not se.swap.all():
        typ = int(se.type[~se.swap][0])
        unknown.setdefault("Rss", f"VMA {v.start:#x} holds a non-swap entry (type {typ} "
                                  f"of MAX_SWAPFILES {se.max_swapfiles}: migration, device "
                                  "or hwpoison entry, or PTE marker): its page is not "
                                  "accounted")
    counts, problem = swap.swap_counts(ctx, se)
    counts = counts[se.swap]
    mss["swap"] += ps * len(counts)
    pss = np.full(len(counts), ps << PSS_SHIFT, np.int64)
    pss[counts >= 2] //= counts[counts >= 2]
    mss["swap_pss"] += int(pss.sum())
    if problem:
        unknown["Swap"] = unknown["SwapPss"] = f"VMA {v.start:#x}: {problem}"


def _account(ctx, mss: dict, pfn, pages, young, dirty, locked, ps: int) -> None:
    """smaps_account() and smaps_page_accumulate() over arrays of entries."""
    f = _Folios(ctx, pfn)
    size = pages * ps
    mss["anonymous"] += int(size[f.anon].sum())
    mss["lazyfree"] += int(size[f.anon & ~f.swapbacked & ~dirty & ~f.dirty].sum())
    mss["ksm"] += int(size[f.ksm].sum())
    mss["resident"] += int(size.sum())
    mss["referenced"] += int(size[young | f.young].sum())
    thp = pages > 1
    mss["anonymous_thp"] += int(size[thp & f.anon].sum())
    mss["shmem_thp"] += int(size[thp & ~f.anon & f.swapbacked].sum())
    mss["file_thp"] += int(size[thp & ~f.anon & ~f.swapbacked].sum())
    one = f.refcount == 1
    _accumulate(mss, f, one, size, size << PSS_SHIFT, dirty, locked, np.ones(len(pfn), bool))
    # the others, page by page: each page of a block (its own struct page's _mapcount)
    idx = np.flatnonzero(~one)
    rep = np.repeat(idx, pages[idx])
    sub = pfn[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(pages[idx]) - pages[idx], pages[idx]))
    if len(sub):
        fs = _Folios(ctx, sub)
        mc = fs.page_mapcount()
        pss = np.full(len(sub), ps << PSS_SHIFT, np.int64)
        pss[mc >= 2] //= mc[mc >= 2]
        _accumulate(mss, fs, np.ones(len(sub), bool), np.full(len(sub), ps, np.int64), pss,
                    dirty[rep], locked[rep], mc < 2)


def _accumulate(mss, f: _Folios, sel, size, pss, dirty, locked, private) -> None:
    """smaps_page_accumulate() for the entries SEL selects."""
    def add(key, mask, vals):
        mss[key] += int(vals[sel & mask].sum())

    every = np.ones(len(sel), bool)
    add("pss", every, pss)
    add("pss_anon", f.anon, pss)
    add("pss_shmem", ~f.anon & f.swapbacked, pss)
    add("pss_file", ~f.anon & ~f.swapbacked, pss)
    add("pss_locked", locked, pss)
    d = dirty | f.dirty
    add("pss_dirty", d, pss)
    add("private_dirty", d & private, size)
    add("shared_dirty", d & ~private, size)
    add("private_clean", ~d & private, size)
    add("shared_clean", ~d & ~private, size)


def _shmem_swap(ctx: KernelContext, vmas, unknown: dict) -> None:
    """shmem_swap_usage() is 0 when the inode's ``shmem_inode_info.swapped`` is: say which
    file VMA's is not (its pages in swap are not counted)."""
    t = ctx.t
    if not t.has_symbol("shmem_aops") or not t.read_u32(t.symbol("nr_swapfiles")):
        return  # no swap area was ever enabled: nothing can be in swap
    from ..kernel.fields import member

    aops = t.symbol("shmem_aops")
    v = t.layout("struct vm_area_struct")
    info = t.layout("struct shmem_inode_info")
    for vma in vmas:
        if not vma.file or not vma.vma:
            continue
        f = t.read_u64(vma.vma + v.offset("vm_file"))
        mapping = t.read_u64(f + t.layout("struct file").offset("f_mapping"))
        if t.read_u64(mapping + member(t, "struct address_space", "a_ops").offset) != aops:
            continue
        inode = t.read_u64(f + t.layout("struct file").offset("f_inode"))
        if t.read_u64(inode - info.offset("vfs_inode") + info.offset("swapped")):
            unknown["Swap"] = unknown["SwapPss"] = (
                f"VMA {vma.start:#x} maps a shmem file with pages in swap")


def format_smaps_rollup(r: Rollup) -> str:
    """/proc/PID/smaps_rollup's text (``show_smaps_rollup()``, ``__show_smap()``).

    :raises NotReproducible: a line the dump does not determine (named in the message)."""
    if r.unknown:
        label, why = next(iter(r.unknown.items()))
        raise NotReproducible(f"smaps_rollup's {label} line cannot be reproduced from "
                              f"this dump: {why}")
    head = f"{r.start:08x}-{r.end:08x} ---p 00000000 00:00 0 "
    out = [head.ljust(_PAD) + " [rollup]\n"]
    for label, value in r.values.items():
        width = 7 if label == "Private_Hugetlb" else 8
        out.append(f"{label + ':':<{16 if width == 8 else 17}}{value >> 10:>{width}} kB\n")
    return "".join(out)
