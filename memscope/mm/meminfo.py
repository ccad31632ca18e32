"""/proc/meminfo (fs/proc/meminfo.c ``meminfo_proc_show()``), every line, as the kernel in
the dump would print it.

Each line is computed with the kernel's own arithmetic from the variables it reads, in the
order and under the conditions of that kernel's ``meminfo_proc_show()``.  A line the
kernel prints only under a configuration option is printed when the debug info shows
that option (the variable or enumerator the line reads exists), never by version.  Where
a layout changed, the probe names the commit.

Where each line comes from (``gz(X)``: ``global_zone_page_state(X)``, ``vm_zone_stat[X]``;
``gn(X)``: ``global_node_page_state(X)``, ``vm_node_stat[X]``; both clamped at 0, per-CPU
differences not folded: :mod:`memscope.mm.vmstat`), in pages unless said, printed as kB
(``pages << (PAGE_SHIFT - 10)``, ``show_val_kb()``)::

    MemTotal          totalram_pages(): _totalram_pages          mm/show_mem.c si_meminfo()
    MemFree           gz(NR_FREE_PAGES)                                    si_meminfo()
    MemAvailable      si_mem_available(): gz(NR_FREE_PAGES) - totalreserve_pages
                      + file LRU and reclaimable slab/misc, each less min(half, the
                      sum of every zone's low watermark + boost), at least 0
                      (mm/show_mem.c; 5.10: mm/page_alloc.c)
    Buffers           nr_blockdev_pages(): i_mapping->nrpages of every inode on
                      blockdev_superblock->s_inodes                        block/bdev.c
    Cached            gn(NR_FILE_PAGES) - total_swapcache_pages() - Buffers, at least 0
    SwapCached        total_swapcache_pages(): gn(NR_SWAPCACHE) (5.12+); 5.10: the nrpages of
                      swapper_spaces[type][] of each usable swap type     mm/swap_state.c
    Active .. Unevictable   gn(NR_ACTIVE_ANON) + gn(NR_ACTIVE_FILE), ... (NR_LRU_BASE + lru)
    Mlocked           gz(NR_MLOCK)
    SwapTotal/Free    si_swapinfo(): total_swap_pages, nr_swap_pages, plus the in-use pages
                      of swap areas being swapped off                     mm/swapfile.c
    Zswap             6.12+: zswap_total_pages() (each pool's zsmalloc pages_allocated);
                      6.1-6.11: zswap_pool_total_size >> 10 (bytes)       mm/zswap.c
    Zswapped          zswap_stored_pages (atomic_t; atomic_long_t in 7.x)
    Dirty, Writeback, AnonPages, Mapped   gn(NR_FILE_DIRTY), gn(NR_WRITEBACK),
                      gn(NR_ANON_MAPPED), gn(NR_FILE_MAPPED)
    Shmem             gn(NR_SHMEM)
    KReclaimable      gn(NR_SLAB_RECLAIMABLE_B) + gn(NR_KERNEL_MISC_RECLAIMABLE)
    Slab, SReclaimable, SUnreclaim   gn(NR_SLAB_RECLAIMABLE_B), gn(NR_SLAB_UNRECLAIMABLE_B)
    KernelStack       gn(NR_KERNEL_STACK_KB), already KiB
    ShadowCallStack   gn(NR_KERNEL_SCS_KB), KiB (CONFIG_SHADOW_CALL_STACK)
    PageTables        gn(NR_PAGETABLE) (5.11+); gz(NR_PAGETABLE) before
    SecPageTables     gn(NR_SECONDARY_PAGETABLE) (6.0+)
    NFS_Unstable      0
    Bounce            gz(NR_BOUNCE); 0 once the item is gone (7.x)
    WritebackTmp      gn(NR_WRITEBACK_TEMP); 0 once the item is gone (7.x)
    CommitLimit       vm_commit_limit(): (totalram - hugetlb_total_pages()) *
                      sysctl_overcommit_ratio / 100 (or sysctl_overcommit_kbytes) +
                      total_swap_pages                                      mm/util.c
    Committed_AS      vm_memory_committed(): percpu_counter_sum_positive(&vm_committed_as),
                      the global count plus every online (or dying) CPU's part
    VmallocTotal      (VMALLOC_END - VMALLOC_START) >> 10 (bytes)       memscope.kernel.addr
    VmallocUsed       7.x: gn(NR_VMALLOC); before: vmalloc_nr_pages(), nr_vmalloc_pages
    VmallocChunk      0
    Percpu            pcpu_nr_pages(): pcpu_nr_populated * pcpu_nr_units   mm/percpu.c
    EarlyMemtestBad   early_memtest_bad_size >> 10, printed when early_memtest_done
                      (CONFIG_MEMTEST)                                    mm/memtest.c
    HardwareCorrupted num_poisoned_pages (CONFIG_MEMORY_FAILURE)
    AnonHugePages .. FilePmdMapped   gn(NR_ANON_THPS), gn(NR_SHMEM_THPS),
                      gn(NR_SHMEM_PMDMAPPED), gn(NR_FILE_THPS), gn(NR_FILE_PMDMAPPED): pages
                      since v5.12, huge pages (x HPAGE_PMD_NR) before
                      (CONFIG_TRANSPARENT_HUGEPAGE)
    CmaTotal, CmaFree totalcma_pages, gz(NR_FREE_CMA_PAGES) (CONFIG_CMA)
    Unaccepted        gz(NR_UNACCEPTED) (CONFIG_UNACCEPTED_MEMORY)
    Balloon           gn(NR_BALLOON_PAGES) (7.x)
    GPUActive/Reclaim gn(NR_GPU_ACTIVE), gn(NR_GPU_RECLAIM) (7.x)
    HugePages_*, Hugepagesize, Hugetlb   hugetlb_report_meminfo(): the default hstate's
                      nr_huge_pages, free_huge_pages, resv_huge_pages, surplus_huge_pages
                      and size; every hstate's pages in kB                   mm/hugetlb.c
    DirectMap4k/2M/1G direct_pages_count[PG_LEVEL_*] (x86 arch_report_meminfo(); 1G only
                      when direct_gbpages)                      arch/x86/mm/pat/set_memory.c

Not reproduced (never in a 64-bit kernel): the CONFIG_HIGHMEM lines (HighTotal, HighFree,
LowTotal, LowFree) and !CONFIG_MMU's MmapCopy.

JSON (``--format json``)::

    {"page_size": int,
     "lines": [{"name": str,        # as printed before the colon: "MemTotal"
                "value": int,       # the number printed (kB, or a count: HugePages_*)
                "unit": "kB" | "",
                "source": str}],    # the kernel expression it comes from
     "problems": [problem]}         # the Buffers walk: {"kind", "where", "message", ...}
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernel.addr import kernel_layout
from ..kernel.list import list_for_each_entry
from ..kernel.percpu import percpu_counter_sum
from ..kernel.problem import Problem
from ..target.base import TargetError, Variable
from . import vmstat
from .context import KernelContext
from .frag import zone_state

__all__ = ("Meminfo", "MeminfoLine", "format_meminfo", "meminfo")

MASK64 = (1 << 64) - 1

#: x86 X86_FEATURE_PSE (arch/x86/include/asm/cpufeatures.h: word 0, bit 3, CPUID 1 EDX):
#: hugepages_supported() on x86 is boot_cpu_has(X86_FEATURE_PSE).  A #define, not in the
#: debug info; the bit is the CPU's.
X86_FEATURE_PSE = 3


@dataclasses.dataclass(frozen=True)
class MeminfoLine:
    """
    One line of /proc/meminfo.

    - ``name``: what the kernel prints before the colon (``"MemTotal"``, ``"HugePages_Total"``).
    - ``value``: the number printed: kB for ``unit == "kB"``, else a count (huge pages).
    - ``unit``: ``"kB"`` or ``""``.
    - ``width``: the field width of the number: 8 (``show_val_kb()``,
      ``seq_put_decimal_ull_width(..., 8)``, ``%8lu``) or 5 (``%5lu``: HugePages_*,
      HardwareCorrupted, EarlyMemtestBad), the name padded to 16 or 19 columns.
    - ``source``: the kernel expression the value comes from.
    """

    name: str
    value: int
    unit: str
    width: int
    source: str

    def format(self) -> str:
        """The line as the kernel prints it, newline included."""
        label = f"{self.name}:".ljust(16 if self.width == 8 else 19)
        return f"{label}{self.value:>{self.width}}" + (f" {self.unit}" if self.unit else "") \
            + "\n"


@dataclasses.dataclass
class Meminfo:
    """
    /proc/meminfo of one kernel: its lines in the kernel's order, and what went wrong
    reading them (``problems``: corruption found by the bounded walk of the block-device
    inodes for Buffers; the line then counts what was walked).

    ``info["MemTotal"]`` is the value of a line (KeyError when the kernel has no such
    line).
    """

    page_size: int
    lines: list[MeminfoLine]
    problems: list[Problem]

    def __getitem__(self, name: str) -> int:
        for line in self.lines:
            if line.name == name:
                return line.value
        raise KeyError(name)


def format_meminfo(info: Meminfo) -> str:
    """Print INFO as /proc/meminfo, byte for byte."""
    return "".join(line.format() for line in info.lines)


# --- reading globals -----------------------------------------------------------------------

def _variable(ctx: KernelContext, name: str) -> Variable | None:
    """The variable NAME (its address and type), or None when the kernel has none."""
    def probe():
        try:
            return ctx.t.variable(name)
        except TargetError:
            return None

    return ctx.probe(f"meminfo.var.{name}", probe)


def _read(ctx: KernelContext, name: str, signed: bool = False) -> int:
    """The integer variable NAME (its size from the debug info: int, long, atomic_t,
    atomic_long_t...).

    :raises TargetError: no such variable (the message names it)"""
    v = _variable(ctx, name)
    if v is None:
        raise TargetError(f"symbol {name} not found")
    if v.size not in (1, 2, 4, 8):
        raise TargetError(f"{name} is a {v.type_name}, not an integer")
    return ctx.t.read_int(v.address, v.size, signed)


def _has(ctx: KernelContext, name: str) -> bool:
    return _variable(ctx, name) is not None


# --- the kernel's helpers ----------------------------------------------------------------

def si_mem_available(ctx: KernelContext, gz, gn, slab_reclaimable: str) -> int:
    """si_mem_available() (mm/show_mem.c since v6.2, mm/page_alloc.c before; the same
    arithmetic in 5.10-7.2), in pages."""
    wmark_low = 0
    for z in ctx.all_zones(populated_only=False):  # for_each_zone(): every zone of each online node
        s = zone_state(ctx, z)
        wmark_low += s.watermark["low"] + s.boost  # low_wmark_pages()
    available = gz("NR_FREE_PAGES") - _read(ctx, "totalreserve_pages")
    pagecache = gn("NR_ACTIVE_FILE") + gn("NR_INACTIVE_FILE")
    pagecache -= min(pagecache // 2, wmark_low)
    reclaimable = gn(slab_reclaimable) + gn("NR_KERNEL_MISC_RECLAIMABLE")
    reclaimable -= min(reclaimable // 2, wmark_low)
    return max(available + pagecache + reclaimable, 0)


def nr_blockdev_pages(ctx: KernelContext, problems: list[Problem]) -> int:
    """nr_blockdev_pages() (block/bdev.c; fs/block_dev.c in 5.10): the page cache of every
    block device inode, ``inode->i_mapping->nrpages`` over
    ``blockdev_superblock->s_inodes``.  The walk is bounded by how many inodes fit in
    memory (``totalram_pages * PAGE_SIZE / sizeof(struct inode)``)."""
    t = ctx.t
    sb = t.read_u64(t.symbol("blockdev_superblock"))
    if not sb:
        return 0
    head = sb + t.layout("struct super_block").offset("s_inodes")
    il = t.layout("struct inode")
    nrpages = t.layout("struct address_space").offset("nrpages")
    bound = _read(ctx, "_totalram_pages") * t.page_size // il.size + 1
    total = 0
    for inode in list_for_each_entry(t, "struct inode", head, "i_sb_list", bound=bound,
                                     problems=problems, where="blockdev_superblock->s_inodes"):
        mapping = t.read_u64(inode + il.offset("i_mapping"))
        total += t.read_u64(mapping + nrpages)
    return total


def total_swapcache_pages(ctx: KernelContext, gn) -> int:
    """total_swapcache_pages(): gn(NR_SWAPCACHE) since v5.12 (commit b6038942480e "mm:
    memcg: add swapcache stat for memcg v2"; include/linux/swap.h); before, the sum of
    ``swapper_spaces[type][0 .. nr_swapper_spaces[type])->nrpages`` over the swap types
    get_swap_device() accepts (mm/swap_state.c, 5.10); 0 without CONFIG_SWAP."""
    if vmstat.has_node_stat(ctx, "NR_SWAPCACHE"):
        return gn("NR_SWAPCACHE")
    spaces = _variable(ctx, "swapper_spaces")
    if spaces is None:
        return 0  # !CONFIG_SWAP: #define total_swapcache_pages() 0UL
    t = ctx.t
    nr_swapfiles = _read(ctx, "nr_swapfiles")
    si_l = t.layout("struct swap_info_struct")
    as_size = t.sizeof("struct address_space")
    nrpages = t.layout("struct address_space").offset("nrpages")
    valid = t.constant("SWP_VALID")  # get_swap_device() (5.10): si->flags & SWP_VALID
    total = 0
    for i in range(min(nr_swapfiles, spaces.array_length or 0)):
        si = t.read_u64(t.symbol("swap_info") + 8 * i)  # swap_type_to_swap_info()
        if not si:
            continue
        flags = t.read_u64(si + si_l.offset("flags"))
        smax = t.read_int(si + si_l.offset("max"), si_l["max"].size)
        if not flags & valid or 1 >= smax:  # swp_entry(i, 1): offset 1 < si->max
            continue
        nr = t.read_u32(t.symbol("nr_swapper_spaces") + 4 * i)
        base = t.read_u64(spaces.address + 8 * i)
        for j in range(nr):
            total += t.read_u64(base + j * as_size + nrpages)
    return total


def si_swapinfo(ctx: KernelContext) -> tuple[int, int]:
    """si_swapinfo() (mm/swapfile.c): (totalswap, freeswap) in pages, the in-use pages of
    areas being swapped off (SWP_USED but not SWP_WRITEOK) added to both; 0, 0 without
    CONFIG_SWAP."""
    if not _has(ctx, "total_swap_pages"):
        return 0, 0
    t = ctx.t
    to_be_unused = 0
    n = _read(ctx, "nr_swapfiles")
    if n:
        si_l = t.layout("struct swap_info_struct")
        inuse = si_l["inuse_pages"]
        used, writeok = t.constant("SWP_USED"), t.constant("SWP_WRITEOK")
        for i in range(n):
            si = t.read_u64(t.symbol("swap_info") + 8 * i)
            flags = t.read_u64(si + si_l.offset("flags"))
            if flags & used and not flags & writeok:
                v = t.read_int(si + inuse.offset, inuse.size)
                if inuse.type_name == "atomic_long_t":
                    # swap_usage_in_pages(): inuse_pages became an atomic_long_t whose
                    # bit BITS_PER_LONG - 2 (SWAP_USAGE_OFFLIST_BIT) is a flag (7.x).
                    v &= ~(1 << 62) & MASK64
                to_be_unused += v
    free = _read(ctx, "nr_swap_pages", signed=True) + to_be_unused
    total = _read(ctx, "total_swap_pages", signed=True) + to_be_unused
    return total & MASK64, free & MASK64


def _hstates(ctx: KernelContext) -> tuple[list[dict[str, int]], int] | None:
    """for_each_hstate(): each hstate's order and counters, and default_hstate_idx; None
    without CONFIG_HUGETLB_PAGE."""
    hs = _variable(ctx, "hstates")
    if hs is None:
        return None
    t = ctx.t
    lay = t.layout("struct hstate")
    n = _read(ctx, "hugetlb_max_hstate")
    if n > (hs.array_length or 0):
        raise TargetError(f"hugetlb_max_hstate {n} is beyond hstates[{hs.array_length}]")
    raw = t.read(hs.address, n * lay.size) if n else b""
    names = ("order", "nr_huge_pages", "free_huge_pages", "resv_huge_pages",
             "surplus_huge_pages")
    out = []
    for i in range(n):
        rec = raw[i * lay.size:(i + 1) * lay.size]
        out.append({k: int.from_bytes(rec[lay[k].offset:lay[k].offset + lay[k].size], "little")
                    for k in names})
    return out, _read(ctx, "default_hstate_idx")


def hugetlb_total_pages(hstates) -> int:
    """hugetlb_total_pages() (mm/hugetlb.c): nr_huge_pages * pages_per_huge_page() over
    every hstate."""
    if hstates is None:
        return 0
    return sum(h["nr_huge_pages"] << h["order"] for h in hstates[0])


def hugepages_supported(ctx: KernelContext) -> bool:
    """hugepages_supported(): x86 boot_cpu_has(X86_FEATURE_PSE) (arch/x86/include/asm/
    hugetlb.h; PSE is not a required feature with CONFIG_PARAVIRT_XXL, which Debian sets,
    so the bit is tested at run time); elsewhere HPAGE_SHIFT != 0 (arm64: PMD_SHIFT)."""
    if ctx.t.arch != "x86_64":
        return True
    t = ctx.t
    cap = t.layout("struct cpuinfo_x86")["x86_capability"]
    word0 = t.read_u32(t.symbol("boot_cpu_data") + cap.offset)
    return bool(word0 >> X86_FEATURE_PSE & 1)


def thp_unit(ctx: KernelContext) -> int:
    """The pages one unit of the THP counters (NR_ANON_THPS...) stands for: 1 since v5.12
    (the series "Convert all THP vmstat counters to pages", e.g. commit 69473e5de873
    "mm: memcontrol: convert NR_ANON_THPS account to pages"), HPAGE_PMD_NR before.  The
    same series' "mm: memcontrol: make the slab calculation consistent" dropped the
    member ``ratio`` of mm/memcontrol.c's ``struct memory_stat`` ("The unit of the vmstat
    counters are either pages or bytes now"): a kernel with that member counts THPs.
    HPAGE_PMD_NR = PTRS_PER_PMD = PAGE_SIZE / sizeof(pmd_t)."""
    def probe():
        try:
            old = ctx.t.layout("struct memory_stat").has("ratio")
        except TargetError:  # !CONFIG_MEMCG: no struct memory_stat to tell by
            old = False
        return ctx.t.page_size // 8 if old else 1

    return ctx.probe("meminfo.thp_unit", probe)


def zswap_total_pages(ctx: KernelContext) -> int:
    """zswap_total_pages() (mm/zswap.c, 6.12+): each pool's pages, ``zs_pool.pages_allocated``
    (7.x: ``pool->zs_pool``; 6.12: ``pool->zpool``, whose driver must be zsmalloc)."""
    t = ctx.t
    pl = t.layout("struct zswap_pool")
    head = t.symbol("zswap_pools")
    zs_pages = t.layout("struct zs_pool").offset("pages_allocated")
    total = 0
    problems: list[Problem] = []
    for pool in list_for_each_entry(t, "struct zswap_pool", head, "list", bound=64,
                                    problems=problems, where="zswap_pools"):
        if pl.has("zs_pool"):
            zs = t.read_u64(pool + pl.offset("zs_pool"))
        else:
            zp = t.read_u64(pool + pl.offset("zpool"))
            zl = t.layout("struct zpool")
            drv = t.read_u64(zp + zl.offset("driver"))
            dtype = t.read_cstr(t.read_u64(drv + t.layout("struct zpool_driver").offset("type")))
            if dtype != "zsmalloc":
                raise TargetError(f"zswap pool with zpool driver {dtype}: only zsmalloc is read")
            zs = t.read_u64(zp + zl.offset("pool"))
        total += t.read_u64(zs + zs_pages)
    if problems:
        raise TargetError(f"zswap_pools: {problems[0]}")
    return total


# --- the file --------------------------------------------------------------------------

def meminfo(ctx: KernelContext) -> Meminfo:
    """
    Compute /proc/meminfo as ``meminfo_proc_show()`` of the kernel in the target prints it
    (the module says where each line comes from).

    :param ctx: the context of the target
    :return: a :class:`Meminfo`: the lines in the kernel's order, values in kB (counts
        for ``HugePages_*``)
    :raises TargetError: a variable, type or enumerator every kernel has is missing
        (``vm_node_stat``, ``vm_committed_as``, ...: the message names it)
    :raises FaultError: a variable cannot be read
    """
    t = ctx.t
    shift = t.page_size.bit_length() - 1
    lines: list[MeminfoLine] = []
    problems: list[Problem] = []

    def gz(item: str) -> int:
        return vmstat.global_zone_page_state(ctx, item)

    def gn(item: str) -> int:
        return vmstat.global_node_page_state(ctx, item)

    def kb(name: str, pages: int, source: str) -> None:  # show_val_kb()
        lines.append(MeminfoLine(name, (pages << (shift - 10)) & MASK64, "kB", 8, source))

    def raw(name: str, value: int, source: str, width: int = 8, unit: str = "kB") -> None:
        lines.append(MeminfoLine(name, value & MASK64, unit, width, source))

    # Slab counters in bytes' names since v5.9 (commit d42f3245c7e2 "mm: memcg: convert
    # vmstat slab counters to bytes"); the global array holds pages either way.
    slab_r, slab_u = ("NR_SLAB_RECLAIMABLE_B", "NR_SLAB_UNRECLAIMABLE_B") \
        if vmstat.has_node_stat(ctx, "NR_SLAB_RECLAIMABLE_B") \
        else ("NR_SLAB_RECLAIMABLE", "NR_SLAB_UNRECLAIMABLE")

    # si_meminfo(), si_swapinfo(), vm_memory_committed()
    totalram = _read(ctx, "_totalram_pages")
    freeram = gz("NR_FREE_PAGES")
    bufferram = nr_blockdev_pages(ctx, problems)
    totalswap, freeswap = si_swapinfo(ctx)
    committed = max(percpu_counter_sum(t, t.symbol("vm_committed_as")), 0)
    swapcache = total_swapcache_pages(ctx, gn)
    cached = max(gn("NR_FILE_PAGES") - swapcache - bufferram, 0)
    available = si_mem_available(ctx, gz, gn, slab_r)
    sreclaimable, sunreclaim = gn(slab_r), gn(slab_u)
    active_anon, inactive_anon = gn("NR_ACTIVE_ANON"), gn("NR_INACTIVE_ANON")
    active_file, inactive_file = gn("NR_ACTIVE_FILE"), gn("NR_INACTIVE_FILE")

    kb("MemTotal", totalram, "totalram_pages()")
    kb("MemFree", freeram, "global_zone_page_state(NR_FREE_PAGES)")
    kb("MemAvailable", available, "si_mem_available()")
    kb("Buffers", bufferram, "nr_blockdev_pages()")
    kb("Cached", cached, "NR_FILE_PAGES - total_swapcache_pages() - Buffers")
    kb("SwapCached", swapcache, "total_swapcache_pages()")
    kb("Active", active_anon + active_file, "NR_ACTIVE_ANON + NR_ACTIVE_FILE")
    kb("Inactive", inactive_anon + inactive_file, "NR_INACTIVE_ANON + NR_INACTIVE_FILE")
    kb("Active(anon)", active_anon, "global_node_page_state(NR_ACTIVE_ANON)")
    kb("Inactive(anon)", inactive_anon, "global_node_page_state(NR_INACTIVE_ANON)")
    kb("Active(file)", active_file, "global_node_page_state(NR_ACTIVE_FILE)")
    kb("Inactive(file)", inactive_file, "global_node_page_state(NR_INACTIVE_FILE)")
    kb("Unevictable", gn("NR_UNEVICTABLE"), "global_node_page_state(NR_UNEVICTABLE)")
    kb("Mlocked", gz("NR_MLOCK"), "global_zone_page_state(NR_MLOCK)")
    kb("SwapTotal", totalswap, "si_swapinfo(): total_swap_pages")
    kb("SwapFree", freeswap, "si_swapinfo(): nr_swap_pages")
    if _has(ctx, "zswap_stored_pages"):  # CONFIG_ZSWAP (the lines since v5.19)
        if _has(ctx, "zswap_pool_total_size"):  # bytes, until zswap_total_pages() (6.12)
            raw("Zswap", _read(ctx, "zswap_pool_total_size") >> 10, "zswap_pool_total_size >> 10")
        else:
            kb("Zswap", zswap_total_pages(ctx), "zswap_total_pages()")
        # atomic_t until 7.x's atomic_long_t: the variable's own size says which.
        raw("Zswapped", _read(ctx, "zswap_stored_pages") << (shift - 10), "zswap_stored_pages")
    kb("Dirty", gn("NR_FILE_DIRTY"), "global_node_page_state(NR_FILE_DIRTY)")
    kb("Writeback", gn("NR_WRITEBACK"), "global_node_page_state(NR_WRITEBACK)")
    kb("AnonPages", gn("NR_ANON_MAPPED"), "global_node_page_state(NR_ANON_MAPPED)")
    kb("Mapped", gn("NR_FILE_MAPPED"), "global_node_page_state(NR_FILE_MAPPED)")
    kb("Shmem", gn("NR_SHMEM"), "global_node_page_state(NR_SHMEM)")
    kb("KReclaimable", sreclaimable + gn("NR_KERNEL_MISC_RECLAIMABLE"),
       f"{slab_r} + NR_KERNEL_MISC_RECLAIMABLE")
    kb("Slab", sreclaimable + sunreclaim, f"{slab_r} + {slab_u}")
    kb("SReclaimable", sreclaimable, f"global_node_page_state_pages({slab_r})")
    kb("SUnreclaim", sunreclaim, f"global_node_page_state_pages({slab_u})")
    raw("KernelStack", gn("NR_KERNEL_STACK_KB"), "global_node_page_state(NR_KERNEL_STACK_KB)")
    if vmstat.has_node_stat(ctx, "NR_KERNEL_SCS_KB"):  # CONFIG_SHADOW_CALL_STACK
        raw("ShadowCallStack", gn("NR_KERNEL_SCS_KB"), "global_node_page_state(NR_KERNEL_SCS_KB)")
    # NR_PAGETABLE: a node counter since v5.11 (commit f0c0c115fb81 "mm: memcontrol:
    # account pagetables per node"), a zone counter before.
    if vmstat.has_node_stat(ctx, "NR_PAGETABLE"):
        kb("PageTables", gn("NR_PAGETABLE"), "global_node_page_state(NR_PAGETABLE)")
    else:
        kb("PageTables", gz("NR_PAGETABLE"), "global_zone_page_state(NR_PAGETABLE)")
    if vmstat.has_node_stat(ctx, "NR_SECONDARY_PAGETABLE"):  # v6.0, commit ebc97a52b5d6
        kb("SecPageTables", gn("NR_SECONDARY_PAGETABLE"),
           "global_node_page_state(NR_SECONDARY_PAGETABLE)")
    kb("NFS_Unstable", 0, "0")
    # NR_BOUNCE and NR_WRITEBACK_TEMP went away in 7.x, which prints 0 for both.
    if vmstat.has_zone_stat(ctx, "NR_BOUNCE"):
        kb("Bounce", gz("NR_BOUNCE"), "global_zone_page_state(NR_BOUNCE)")
    else:
        kb("Bounce", 0, "0")
    if vmstat.has_node_stat(ctx, "NR_WRITEBACK_TEMP"):
        kb("WritebackTmp", gn("NR_WRITEBACK_TEMP"), "global_node_page_state(NR_WRITEBACK_TEMP)")
    else:
        kb("WritebackTmp", 0, "0")
    hstates = _hstates(ctx)
    kb("CommitLimit", vm_commit_limit(ctx, totalram, hstates), "vm_commit_limit()")
    kb("Committed_AS", committed, "percpu_counter_sum_positive(&vm_committed_as)")
    layout = kernel_layout(t)
    raw("VmallocTotal", (layout.vmalloc_end - layout.vmalloc_start) >> 10,
        "(VMALLOC_END - VMALLOC_START) >> 10")
    if vmstat.has_node_stat(ctx, "NR_VMALLOC"):  # 7.x
        kb("VmallocUsed", gn("NR_VMALLOC"), "global_node_page_state(NR_VMALLOC)")
    else:
        kb("VmallocUsed", _read(ctx, "nr_vmalloc_pages"), "vmalloc_nr_pages()")
    kb("VmallocChunk", 0, "0")
    kb("Percpu", _read(ctx, "pcpu_nr_populated") * _read(ctx, "pcpu_nr_units"),
       "pcpu_nr_populated * pcpu_nr_units")
    if _has(ctx, "early_memtest_done") and _read(ctx, "early_memtest_done"):
        # memtest_report_meminfo() (v6.4+, CONFIG_MEMTEST)
        bad = _read(ctx, "early_memtest_bad_size")
        raw("EarlyMemtestBad", (bad >> 10) or (1 if bad else 0), "early_memtest_bad_size >> 10",
            width=5)
    if _has(ctx, "num_poisoned_pages"):  # CONFIG_MEMORY_FAILURE
        raw("HardwareCorrupted", _read(ctx, "num_poisoned_pages") << (shift - 10),
            "num_poisoned_pages", width=5)
    if _has(ctx, "transparent_hugepage_flags"):  # CONFIG_TRANSPARENT_HUGEPAGE
        unit = thp_unit(ctx)
        for name, item in (("AnonHugePages", "NR_ANON_THPS"), ("ShmemHugePages", "NR_SHMEM_THPS"),
                           ("ShmemPmdMapped", "NR_SHMEM_PMDMAPPED"),
                           ("FileHugePages", "NR_FILE_THPS"),
                           ("FilePmdMapped", "NR_FILE_PMDMAPPED")):
            kb(name, gn(item) * unit, f"global_node_page_state({item})"
               + (f" * {unit}" if unit > 1 else ""))
    # CONFIG_CMA: MIGRATE_CMA exists only then (totalcma_pages is defined either way).
    if "MIGRATE_CMA" in ctx.migratetypes:
        kb("CmaTotal", _read(ctx, "totalcma_pages"), "totalcma_pages")
        kb("CmaFree", gz("NR_FREE_CMA_PAGES"), "global_zone_page_state(NR_FREE_CMA_PAGES)")
    if vmstat.has_zone_stat(ctx, "NR_UNACCEPTED"):  # CONFIG_UNACCEPTED_MEMORY
        kb("Unaccepted", gz("NR_UNACCEPTED"), "global_zone_page_state(NR_UNACCEPTED)")
    for name, item in (("Balloon", "NR_BALLOON_PAGES"), ("GPUActive", "NR_GPU_ACTIVE"),
                       ("GPUReclaim", "NR_GPU_RECLAIM")):  # 7.x: printed with the items
        if vmstat.has_node_stat(ctx, item):
            kb(name, gn(item), f"global_node_page_state({item})")
    if hstates is not None and hugepages_supported(ctx):  # hugetlb_report_meminfo()
        total_kb = 0
        for i, h in enumerate(hstates[0]):
            size_kb = (t.page_size << h["order"]) >> 10
            total_kb += size_kb * h["nr_huge_pages"]
            if i == hstates[1]:  # h == &default_hstate
                for name, k in (("HugePages_Total", "nr_huge_pages"),
                                ("HugePages_Free", "free_huge_pages"),
                                ("HugePages_Rsvd", "resv_huge_pages"),
                                ("HugePages_Surp", "surplus_huge_pages")):
                    raw(name, h[k], f"default_hstate.{k}", width=5, unit="")
                raw("Hugepagesize", size_kb, "huge_page_size(&default_hstate) / SZ_1K")
        raw("Hugetlb", total_kb, "sum of huge_page_size(h) * h->nr_huge_pages / SZ_1K")
    if _has(ctx, "direct_pages_count"):  # x86 arch_report_meminfo()
        levels = t.enum("enum pg_level")
        v = _variable(ctx, "direct_pages_count")
        count = np.frombuffer(t.read(v.address, v.size), dtype="<u8")
        # kB per entry: 4 KiB, 2 MiB, 1 GiB pages ("<< 2", "<< 11", "<< 20" in the source).
        shown = [("4k", "PG_LEVEL_4K", 2), ("2M", "PG_LEVEL_2M", 11)]
        if _read(ctx, "direct_gbpages"):
            shown.append(("1G", "PG_LEVEL_1G", 20))
        for size, level, kb_shift in shown:
            raw(f"DirectMap{size}", int(count[levels[level]]) << kb_shift,
                f"direct_pages_count[{level}]")
    return Meminfo(t.page_size, lines, problems)


def vm_commit_limit(ctx: KernelContext, totalram: int, hstates) -> int:
    """vm_commit_limit() (mm/util.c), in pages, in the kernel's unsigned long arithmetic."""
    kbytes = _read(ctx, "sysctl_overcommit_kbytes")
    shift = ctx.t.page_size.bit_length() - 1
    if kbytes:
        allowed = kbytes >> (shift - 10)
    else:
        ratio = _read(ctx, "sysctl_overcommit_ratio", signed=True) & MASK64
        allowed = ((totalram - hugetlb_total_pages(hstates)) & MASK64) * ratio & MASK64
        allowed //= 100
    # !CONFIG_SWAP: #define total_swap_pages 0L
    swap = _read(ctx, "total_swap_pages", signed=True) if _has(ctx, "total_swap_pages") else 0
    return (allowed + swap) & MASK64
