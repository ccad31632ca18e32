"""Every struct page, decoded in bulk: the memmap (include/linux/mm_types.h, page-flags.h).

The whole memmap of a target is read once, section by section (``mem_section[]``, 2 MiB
reads of the vmemmap region per 128 MiB section on x86_64), and viewed through a numpy
structured dtype built from the probed ``struct page`` layout.  The decode is kept in the
snapshot state of the :class:`~memscope.mm.context.KernelContext` and shared by ``pages``,
``pageblocks``, ``frag`` and whoever else needs pages (:func:`memmap`).

Classification (:func:`classify`), in the order the decisions are taken:

``hole``        no struct page: the section is absent, or its memmap cannot be read, or the
                pfn lies outside every zone's span, or the kernel has not initialised the
                struct page yet (deferred memmap init, early in boot: mm/zone.py
                ``deferred_pfns``).
``buddy``       in a free buddy block: the first page is PageBuddy with its order in
                ``page->private``; the other 2^order - 1 pages of the block count as buddy
                too (only the first carries the type).
``pcp``         on a per-CPU free list (``zone->per_cpu_pageset`` / 5.10 ``zone->pageset``),
                with every page of a high-order pcp entry.
``slab``        PG_slab (to 6.9) or PGTY_slab (6.10+), tails included.
``kmalloc_large`` PGTY_large_kmalloc (7.2+; before 7.2 such pages carry no type and count
                as ``kernel``).
``pagetable``   PG_table / PGTY_table.
``hugetlb``     PGTY_hugetlb (6.10+); before, the first tail's compound_dtor is
                HUGETLB_PAGE_DTOR (5.10-6.5) or its flags have PG_hugetlb (6.6-6.9).
``offline``     PG_offline / PGTY_offline (balloon, memory hot-unplug).
``reserved``    PG_reserved (memblock reservations, the kernel image, holes inside a zone).
``anon``        ``page->mapping`` with PAGE_MAPPING_ANON (bit 0) set (KSM included).
``pagecache``   ``page->mapping`` a plain address_space pointer: file pages, shmem and
                tmpfs (the lab's workloads live in tmpfs, so this is /proc/meminfo's
                Cached, Shmem included).
``free``        refcount 0 but neither buddy nor pcp (being freed or allocated right now).
``kernel``      allocated (refcount > 0) with no visible owner: vmalloc backing, kernel
                stacks, per-CPU chunks, large kmalloc before 7.2, driver pages...  vmalloc and
                kernel stacks are not told apart from struct page alone.
``other``       other page types (guard, zsmalloc, unaccepted), non-LRU movable pages
                (mapping bit 1 without bit 0).

Compound tails take their head's class (so that a slab of order 3 counts 8 slab pages, as
/proc/meminfo's Slab does); :attr:`PageMap.tail` says which pages were tails.

A page is *inconsistent* when its struct page contradicts the rest: a tail whose head is
not PG_head, a buddy order out of range, buddy blocks that overlap, a pcp page that is
PageBuddy or referenced.  A frozen dump has none; a live target (``--qemu``, ``-k``)
changes under the read and reports them instead of failing.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np

from ..target.base import FaultError, Target, TargetError
from .context import KernelContext
from . import zone as _zone
from .zone import Zone

# Class codes (uint8) and names, in the order used for tables and maps.
CLASSES = ("hole", "buddy", "pcp", "slab", "kmalloc_large", "pagetable", "hugetlb", "offline",
           "reserved", "anon", "pagecache", "free", "kernel", "other")
C = {name: i for i, name in enumerate(CLASSES)}

# mem_section->section_mem_map flag bits (include/linux/mmzone.h; stable 5.10-7.2).
SECTION_MARKED_PRESENT = 1 << 0
SECTION_HAS_MEM_MAP = 1 << 1
SECTION_IS_ONLINE = 1 << 2

PAGE_MAPPING_ANON = 0x1
PAGE_MAPPING_MOVABLE = 0x2

# Old page_type encoding (5.10, 6.1: include/linux/page-flags.h): a type is set by
# clearing its bit below PAGE_TYPE_BASE.  These are #defines, absent from the debug info;
# PG_buddy and PG_offline are cross-checked against VMCOREINFO when it has them.
PAGE_TYPE_BASE = 0xF0000000
OLD_PG_BUDDY = 0x80
OLD_PG_OFFLINE = 0x100


def _u(x) -> int:
    return int(x) & 0xFFFFFFFFFFFFFFFF


class PageLayout:
    """What the decode needs from ``struct page`` and friends, probed once per target."""

    def __init__(self, t: Target):
        self.t = t
        lay = t.layout("struct page")
        self.size = lay.size
        flags = lay["flags"]
        self.flags_off = flags.offset
        if flags.size != 8 or "long" not in flags.type_name:
            # 7.2: page->flags is memdesc_flags_t { unsigned long f; } (read .f).
            self.flags_off += t.layout(flags.type_name).offset("f")
        # compound_head, renamed compound_info in 7.x (may hold a mask, see _heads()).
        self.compound_off = lay.offset("compound_info" if lay.has("compound_info")
                                       else "compound_head")
        self.lru_off = lay.offset("lru")  # also buddy_list / pcp_list (same word)
        self.mapping_off = lay.offset("mapping")
        self.index_off = lay.offset("__folio_index" if lay.has("__folio_index") else "index")
        self.private_off = lay.offset("private")
        self.mapcount_off = lay.offset("_mapcount")  # page_type shares it
        self.refcount_off = lay.offset("_refcount")

        pf = t.enum("enum pageflags")
        self.pageflags = {k: v for k, v in pf.items() if not k.startswith("__")}
        self.PG_head = pf["PG_head"]
        self.PG_reserved = pf["PG_reserved"]
        # PG_slab went away in 6.10 (commit 46df8e73a4a3, "mm: free up PG_slab"): slab pages
        # carry PGTY_slab in page_type from then on.
        self.PG_slab = pf.get("PG_slab")
        # Hugetlb folios before PGTY_hugetlb (6.10, commit d99e3140a4d3 "mm: turn
        # folio_test_hugetlb into a PageType") are marked on their first tail page:
        # 5.10-6.5 by compound_dtor == HUGETLB_PAGE_DTOR (PageHuge()); 6.6-6.9 by PG_hugetlb
        # in its flags (commit 9c5ccf2db04b "mm: remove HUGETLB_PAGE_DTOR").
        self.dtor_off = self.hugetlb_dtor = None
        if lay.has("compound_dtor"):
            try:
                self.hugetlb_dtor = t.enum("enum compound_dtor_id")["HUGETLB_PAGE_DTOR"]
                self.dtor_off = lay.offset("compound_dtor")
            except (TargetError, KeyError):
                pass
        self.PG_hugetlb = pf.get("PG_hugetlb")

        # page_type: 6.10+ has enum pagetype with the type in the top byte (commit
        # 4ffca5a96678 "mm: support only one page_type per page"); older kernels clear a
        # bit below PAGE_TYPE_BASE.
        try:
            self.pagetype = t.enum("enum pagetype")
        except TargetError:
            self.pagetype = None
        if self.pagetype is None:
            vi = t.vmcoreinfo_fields
            self.old_buddy = _mask_from_vmcoreinfo(vi, "PAGE_BUDDY_MAPCOUNT_VALUE", OLD_PG_BUDDY)
            self.old_offline = _mask_from_vmcoreinfo(vi, "PAGE_OFFLINE_MAPCOUNT_VALUE",
                                                     OLD_PG_OFFLINE)
            # PG_table follows PG_offline; 5.10 still had PG_kmemcg (0x200) in between,
            # removed in 5.11 together with page->mem_cgroup becoming page->memcg_data
            # (commit 18b2db3b0385 "mm: Convert page kmemcg type to a page memcg flag").
            self.old_table = 0x400 if lay.has("mem_cgroup") else 0x200

    @property
    def fields(self) -> tuple[str, ...]:
        """The struct page fields the decode keeps per pfn (:attr:`PageMap.pages`)."""
        return FIELDS + (("dtor",) if self.dtor_off is not None else ())

    def dtype(self) -> np.dtype:
        names = ["flags", "compound", "lru_prev", "mapping", "index", "private", "mapcount",
                 "refcount"]
        formats = ["<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u4", "<i4"]
        offsets = [self.flags_off, self.compound_off, self.lru_off + 8, self.mapping_off,
                   self.index_off, self.private_off, self.mapcount_off, self.refcount_off]
        if self.dtor_off is not None:  # a first tail's compound_dtor (5.10-6.5)
            names.append("dtor")
            formats.append("u1")
            offsets.append(self.dtor_off)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": self.size})

    # --- page_type decisions (usable on scalars or numpy arrays) ----------------------
    def _typed(self, page_type, pgty: str | None, old_bit: int | None):
        pt = np.asarray(page_type, dtype=np.uint32)
        if self.pagetype is not None:
            if pgty not in self.pagetype:
                return np.zeros(pt.shape, bool)
            return (pt >> 24) == self.pagetype[pgty]
        if old_bit is None:
            return np.zeros(pt.shape, bool)
        return (pt & np.uint32(PAGE_TYPE_BASE | old_bit)) == np.uint32(PAGE_TYPE_BASE)

    def is_buddy(self, page_type):
        """PageBuddy from page->page_type (the 32-bit word shared with _mapcount).

        6.10+: ``(page_type >> 24) == PGTY_buddy``; 5.10/6.1: ``(page_type &
        (PAGE_TYPE_BASE | PG_buddy)) == PAGE_TYPE_BASE``."""
        return self._typed(page_type, "PGTY_buddy", self.old_buddy if self.pagetype is None
                           else None)

    def is_table(self, page_type):
        return self._typed(page_type, "PGTY_table",
                           self.old_table if self.pagetype is None else None)

    def is_offline(self, page_type):
        return self._typed(page_type, "PGTY_offline",
                           self.old_offline if self.pagetype is None else None)

    def is_slab_type(self, page_type):
        return self._typed(page_type, "PGTY_slab", None)

    def has_type(self, page_type):
        """page_type holds a type rather than a mapcount."""
        pt = np.asarray(page_type, dtype=np.uint32).view(np.int32)
        if self.pagetype is not None:
            # page_type_has_type(): (int)page_type < PGTY_mapcount_underflow << 24
            return pt < np.int32(-(1 << 24))
        return pt < -128  # PAGE_MAPCOUNT_RESERVE


def _mask_from_vmcoreinfo(vi: dict, key: str, default: int) -> int:
    v = vi.get(f"NUMBER({key})")
    if v is None:
        return default
    return ~int(v, 0) & 0xFFFFFFFF


def page_is_buddy(ctx: KernelContext, page_type) -> np.ndarray:
    """PageBuddy for one page_type word or an array of them (the decision shared by every
    command that needs it: see :meth:`PageLayout.is_buddy`)."""
    return page_layout(ctx).is_buddy(page_type)


def page_layout(ctx: KernelContext) -> PageLayout:
    """The :class:`PageLayout` of the target's kernel (a probe)."""
    return ctx.probe("page_layout", lambda: PageLayout(ctx.t))


@dataclasses.dataclass
class Sections:
    """mem_section[] for the pfns of interest (SPARSEMEM_VMEMMAP)."""

    pages_per_section: int
    mem_map: np.ndarray  # section_mem_map per section nr (0 = absent)
    usage: np.ndarray  # mem_section.usage pointer per section nr

    def present(self) -> np.ndarray:
        return (self.mem_map & (SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP)) == (
            SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP)

    def online(self) -> np.ndarray:
        return self.present() & ((self.mem_map & SECTION_IS_ONLINE) != 0)


def sections(ctx: KernelContext) -> Sections:
    """``mem_section[]`` as read for this snapshot."""
    return ctx.snapshot("sections", lambda: _read_sections(ctx))


def zones(ctx: KernelContext) -> list[Zone]:
    """ctx.all_zones(), one list per snapshot (the memmap decode is a snapshot too)."""
    return ctx.snapshot("page_zones", ctx.all_zones)


def max_pfn(ctx: KernelContext) -> int:
    return max(z.end_pfn for z in zones(ctx))


#: include/linux/mmzone.h: a subsection is 2 MiB on every architecture.
SUBSECTION_SHIFT = 21


def section_size_bits_from_debuginfo(t) -> int:
    """SECTION_SIZE_BITS without VMCOREINFO (a guest stopped before the kernel wrote it, or
    a kernel built without it), from the debug info: ``struct mem_section_usage``'s
    ``subsection_map`` is DECLARE_BITMAP(, SUBSECTIONS_PER_SECTION), SUBSECTIONS_PER_SECTION
    = 1 << (SECTION_SIZE_BITS - SUBSECTION_SHIFT) (commit f1eca35a0dc7, v5.3).  The bitmap
    is whole longs, so one long says only "at most 27" (x86_64's and arm64 4K's 27): the
    largest value it allows is taken, and :func:`_check_sections` rejects it when the
    memory says otherwise.

    :raises TargetError: no ``subsection_map`` in the debug info."""
    m = t.layout("struct mem_section_usage")["subsection_map"]
    if not m.array_length:
        raise TargetError("struct mem_section_usage.subsection_map has no length: cannot "
                          "tell SECTION_SIZE_BITS without VMCOREINFO")
    bits = m.array_length * 8 * t.sizeof("unsigned long")
    return SUBSECTION_SHIFT + bits.bit_length() - 1


def section_size_bits(t) -> tuple[int, bool]:
    """(SECTION_SIZE_BITS, whether it was derived rather than read from VMCOREINFO)."""
    vi = t.vmcoreinfo_fields
    if "NUMBER(SECTION_SIZE_BITS)" in vi:
        return int(vi["NUMBER(SECTION_SIZE_BITS)"]), False
    return section_size_bits_from_debuginfo(t), True


def _check_sections(t, roots_addr: int, nr: int, per_root: int, ms, bits: int) -> None:
    """A derived SECTION_SIZE_BITS must agree with mem_section[]: the section holding the
    last pfn is present (SECTION_MARKED_PRESENT, bit 0 of section_mem_map) and no section
    after it in the same root is (a too-large value leaves present sections past the end
    of memory; a too-small one finds the last section absent).

    :raises TargetError: they disagree."""
    last = nr - 1
    r, i = divmod(last, per_root)
    root = t.read_u64(roots_addr + 8 * r)
    raw = t.read(root, per_root * ms.size) if root else b""
    mo = ms.offset("section_mem_map")
    present = [j for j in range(len(raw) // ms.size)
               if int.from_bytes(raw[j * ms.size + mo:j * ms.size + mo + 8], "little") & 1]
    if not present or present[-1] != i:
        raise TargetError(f"SECTION_SIZE_BITS {bits} (derived from the debug info, "
                          "VMCOREINFO has none) disagrees with mem_section[]: the last "
                          "present section is not the one holding the last pfn")


def _read_sections(ctx: KernelContext) -> Sections:
    t = ctx.t
    vi = t.vmcoreinfo_fields
    page_shift = t.page_size.bit_length() - 1
    bits, derived = section_size_bits(t)
    pps = 1 << (bits - page_shift)
    ms = t.layout("struct mem_section")
    # SPARSEMEM_EXTREME (every Debian kernel): mem_section is a pointer to an array of
    # NR_SECTION_ROOTS pointers, each to a page of struct mem_section.  VMCOREINFO's
    # SYMBOL(mem_section) is that array; without it read the pointer variable.
    if "SYMBOL(mem_section)" in vi:
        roots_addr = int(vi["SYMBOL(mem_section)"], 16)
    else:
        roots_addr = t.read_u64(t.symbol("mem_section"))
    per_root = t.page_size // ms.size
    nr = (max_pfn(ctx) + pps - 1) // pps
    if derived:
        _check_sections(t, roots_addr, nr, per_root, ms, bits)
    nroots = (nr + per_root - 1) // per_root
    roots = np.frombuffer(t.read(roots_addr, 8 * nroots), "<u8")
    mem_map = np.zeros(nr, np.uint64)
    usage = np.zeros(nr, np.uint64)
    mo, uo = ms.offset("section_mem_map"), ms.offset("usage")
    for r, root in enumerate(roots):
        if not root:
            continue
        n = min(per_root, nr - r * per_root)
        try:
            raw = np.frombuffer(t.read(int(root), n * ms.size), np.uint8).reshape(n, ms.size)
        except FaultError:
            continue
        mem_map[r * per_root:r * per_root + n] = raw[:, mo:mo + 8].copy().view("<u8")[:, 0]
        usage[r * per_root:r * per_root + n] = raw[:, uo:uo + 8].copy().view("<u8")[:, 0]
    return Sections(pps, mem_map, usage)


def vmemmap_base(ctx: KernelContext) -> int:
    """The address of pfn 0's struct page (SPARSEMEM_VMEMMAP)."""
    t = ctx.t
    if t.arch == "x86_64":
        try:  # randomized by KASLR
            v = t.read_u64(t.symbol("vmemmap_base"))
        except TargetError:
            v = 0
        if v:
            return v
    vi = t.vmcoreinfo_fields
    if "SYMBOL(vmemmap)" in vi:  # the generic crash_core export (6.x)
        return int(vi["SYMBOL(vmemmap)"], 16)
    if "NUMBER(VMEMMAP_START)" in vi and t.has_symbol("memstart_addr"):
        # arm64: vmemmap = (struct page *)VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)
        shift = t.page_size.bit_length() - 1
        sz = t.sizeof("struct page")
        return (int(vi["NUMBER(VMEMMAP_START)"], 0)
                - (t.read_u64(t.symbol("memstart_addr")) >> shift) * sz) & (2**64 - 1)
    # Last resort: a present section's encoded mem_map is vmemmap itself
    # (sparse_encode_mem_map(): mem_map - section_nr_to_pfn(pnum)).
    s = sections(ctx)
    for m in s.mem_map[s.present()]:
        return int(m) & ~0xFFF
    raise TargetError("cannot find vmemmap (no vmemmap_base, VMCOREINFO vmemmap, or section)")


@dataclasses.dataclass
class PageMap:
    """The decoded memmap of pfns [0, nr_pages) and the classification of each page."""

    vmemmap: int
    page_size_struct: int
    # One contiguous array per decoded struct page field (PageLayout.fields: "flags",
    # "compound", "mapping", "index", "private", "mapcount", "refcount", and "dtor" where
    # struct page has compound_dtor; dtypes as in
    # PageLayout.dtype()), indexed by pfn; zeros where invalid.
    pages: dict[str, np.ndarray]
    valid: np.ndarray  # bool: a struct page was read
    cls: np.ndarray  # uint8 class code (CLASSES)
    order: np.ndarray  # int8: buddy/pcp order on the first page of a free block, else -1
    tail: np.ndarray  # bool: compound tail (class is its head's)
    inconsistent: np.ndarray  # bool
    zone_id: np.ndarray  # int16: index into zones, -1 outside every zone
    zones: list[Zone]
    pcp_findings: list[str]
    unreadable_pages: int  # present in mem_section but the memmap read failed

    @property
    def nr_pages(self) -> int:
        return len(self.cls)


# The struct page fields kept per pfn (see PageMap.pages).
FIELDS = ("flags", "compound", "mapping", "index", "private", "mapcount", "refcount")


def _read_memmap(ctx: KernelContext, pl: PageLayout, vmemmap: int, n: int):
    """Read the memmap section by section and keep each field in its own array.

    Each chunk read is viewed in place (np.frombuffer with the struct page dtype) and its
    fields are copied out while the chunk is still in the CPU cache; no copy of the whole
    memmap is ever made (the field arrays are what the classification reads, contiguous)."""
    t = ctx.t
    s = sections(ctx)
    sz = pl.size
    dt = pl.dtype()
    out = {f: np.zeros(n, dt.fields[f][0]) for f in pl.fields}  # zero pages: holes
    valid = np.zeros(n, bool)
    unreadable = 0
    pps = s.pages_per_section

    def put(lo: int, hi: int, raw: bytes) -> None:
        a = np.frombuffer(raw, dt)
        for f in pl.fields:
            out[f][lo:hi] = a[f]
        valid[lo:hi] = True

    # One read per present section (2 MiB of struct pages for 128 MiB on x86_64 4K pages);
    # a section whose read fails (live target, vmemmap page not dumped) is retried in
    # 64 KiB pieces so that only the unreadable part becomes a hole.
    for nr in np.flatnonzero(s.present()).tolist():
        lo = nr * pps
        hi = min(lo + pps, n)
        if hi <= lo:
            continue
        try:
            put(lo, hi, t.read(vmemmap + lo * sz, (hi - lo) * sz))
        except FaultError:
            step = max(1, 65536 // sz)
            for a in range(lo, hi, step):
                b = min(a + step, hi)
                try:
                    put(a, b, t.read(vmemmap + a * sz, (b - a) * sz))
                except FaultError:
                    unreadable += b - a
    return out, valid, unreadable


def memmap(ctx: KernelContext) -> PageMap:
    """The decoded and classified memmap of the target, computed once per snapshot."""
    return ctx.snapshot("pagemap", lambda: _build(ctx))


def _zone_ids(zones: list[Zone], n: int) -> np.ndarray:
    zid = np.full(n, -1, np.int16)
    for i, z in enumerate(zones):
        zid[z.zone_start_pfn:min(z.end_pfn, n)] = i
    return zid


def _heads(pl: PageLayout, vmemmap: int, pfns: np.ndarray, info: np.ndarray) -> np.ndarray:
    """Head pfn of the tails PFNS from their compound_head/compound_info words."""
    sz = pl.size
    ptr = info - np.uint64(1)
    # 7.x with HUGETLB_PAGE_OPTIMIZE_VMEMMAP stores a mask (GENMASK(63, order +
    # log2(sizeof(struct page))) | 1) instead of head | 1: head = page & mask.  A mask is
    # -2^k; a struct page pointer is not.
    neg = (~ptr + np.uint64(1))
    is_mask = (neg & (neg - np.uint64(1))) == 0
    addr = np.uint64(vmemmap) + pfns.astype(np.uint64) * np.uint64(sz)
    head_addr = np.where(is_mask, addr & ptr, ptr)
    return ((head_addr - np.uint64(vmemmap)) // np.uint64(sz)).astype(np.int64)


# Page type codes of _type_codes(), in increasing precedence (a later one wins when a
# page_type word matches several, which only the old bit encoding allows).
T_NONE, T_OTHER, T_OFFLINE, T_TABLE, T_HUGETLB, T_KMALLOC, T_SLAB = range(7)
_T_CLASS = {T_OTHER: "other", T_OFFLINE: "offline", T_TABLE: "pagetable",
            T_HUGETLB: "hugetlb", T_KMALLOC: "kmalloc_large", T_SLAB: "slab"}
_T_PGTY = ((T_OFFLINE, "PGTY_offline"), (T_TABLE, "PGTY_table"), (T_HUGETLB, "PGTY_hugetlb"),
           (T_KMALLOC, "PGTY_large_kmalloc"), (T_SLAB, "PGTY_slab"))


def _type_codes(pl: PageLayout, pt: np.ndarray) -> np.ndarray:
    """T_* code of every page_type word (uint8; T_NONE when the word is a mapcount)."""
    if pl.pagetype is not None:
        # 6.10+: the type is the top byte: a 256-entry table on that byte (little endian).
        lut = np.zeros(256, np.uint8)
        top = np.arange(256, dtype=np.uint32) << np.uint32(24)
        lut[pl.has_type(top)] = T_OTHER
        for code, name in _T_PGTY:
            if name in pl.pagetype:
                lut[pl.pagetype[name] & 0xFF] = code
        return lut[pt.view(np.uint8)[3::4]]
    codes = np.where(pl.has_type(pt), np.uint8(T_OTHER), np.uint8(T_NONE))
    for code, sel in ((T_OFFLINE, pl.is_offline(pt)), (T_TABLE, pl.is_table(pt))):
        codes[sel] = code
    return codes


def _head_class_lut() -> np.ndarray:
    """The class of an untyped-or-typed head page from an 8-bit key: bits 0-2 the T_* code,
    bit 3 PG_reserved, bits 4-5 page->mapping & 3, bit 6 mapping != 0, bit 7 refcount 0.

    The decisions, from the least to the most specific (a later one wins): refcount 0 is
    free; a plain mapping is page cache; PAGE_MAPPING_ANON is anon; PAGE_MAPPING_MOVABLE
    alone is other; PG_reserved; then the page type."""
    lut = np.empty(256, np.uint8)
    for key in range(256):
        tcode, res, low2, mnz, ref0 = key & 7, key >> 3 & 1, key >> 4 & 3, key >> 6 & 1, key >> 7
        c = C["kernel"]
        if ref0:
            c = C["free"]
        if mnz and not low2 & (PAGE_MAPPING_ANON | PAGE_MAPPING_MOVABLE):
            c = C["pagecache"]
        if low2 & PAGE_MAPPING_ANON:
            c = C["anon"]
        elif low2 & PAGE_MAPPING_MOVABLE:
            c = C["other"]
        if res:
            c = C["reserved"]
        if tcode in _T_CLASS:
            c = C[_T_CLASS[tcode]]
        lut[key] = c
    return lut


_HEAD_CLASS = _head_class_lut()


def _flag(flags: np.ndarray, bit: int | None) -> np.ndarray:
    """Bit BIT of every flags word, as a bool array (reads the one byte that holds it)."""
    if bit is None:
        return np.zeros(len(flags), bool)
    return (flags.view(np.uint8)[bit >> 3::8] & np.uint8(1 << (bit & 7))) != 0


def _old_hugetlb_heads(pl: PageLayout, pages: dict[str, np.ndarray], is_head: np.ndarray,
                       tail: np.ndarray) -> np.ndarray | None:
    """Heads of hugetlb folios on kernels without PGTY_hugetlb (bool per pfn): a PG_head
    page whose next page is a tail with HUGETLB_PAGE_DTOR in compound_dtor (5.10-6.5) or
    PG_hugetlb in its flags (6.6-6.9).  None when the kernel has PGTY_hugetlb (the page
    type says it) or no marking memscope knows."""
    if pl.pagetype is not None and "PGTY_hugetlb" in pl.pagetype:
        return None
    if "dtor" in pages:
        first_tail = pages["dtor"][1:] == np.uint8(pl.hugetlb_dtor)
    elif pl.PG_hugetlb is not None:
        first_tail = _flag(pages["flags"][1:], pl.PG_hugetlb)
    else:
        return None
    out = np.zeros(len(is_head), bool)
    out[:-1] = is_head[:-1] & tail[1:] & first_tail
    return out


def _build(ctx: KernelContext) -> PageMap:
    pl = page_layout(ctx)
    zones_ = zones(ctx)
    n = max_pfn(ctx)
    vm = vmemmap_base(ctx)
    pages, valid, unreadable = _read_memmap(ctx, pl, vm, n)
    for nid in ctx.node_ids():
        # struct pages not initialised yet (early in boot) are holes, read as zeros
        span = _zone.deferred_pfns(ctx, nid)
        if span is not None:
            valid[span[0]:span[1]] = False
            for a in pages.values():
                a[span[0]:span[1]] = 0
    flags = pages["flags"]
    pt = pages["mapcount"]
    ref = pages["refcount"]
    mapping = pages["mapping"]
    comp = pages["compound"]
    u8 = np.uint8
    # Invalid pages are all zeros, so every test below is false on them unless it is a
    # "== 0" test; those pages become holes at the end whatever they were on the way.

    tail = (comp.view(u8)[::8] & u8(1)).view(bool)
    head = ~tail
    ref0 = ref == 0
    tcode = _type_codes(pl, pt)
    typed = tcode != T_NONE
    is_head = _flag(flags, pl.PG_head)
    hugetlb = _old_hugetlb_heads(pl, pages, is_head, tail)
    if hugetlb is not None:
        tcode = np.where(hugetlb, u8(T_HUGETLB), tcode)

    # Head pages: one table lookup on an 8-bit key (see _head_class_lut); tails "kernel"
    # until they take their head's class below.
    key = tcode if pl.PG_slab is None else np.where(_flag(flags, pl.PG_slab), u8(T_SLAB), tcode)
    key = key | (_flag(flags, pl.PG_reserved).view(u8) << u8(3))
    key |= (mapping.view(u8)[::8] & u8(3)) << u8(4)
    key |= (mapping != 0).view(u8) << u8(6)
    key |= ref0.view(u8) << u8(7)
    cls = np.where(tail, u8(C["kernel"]), _HEAD_CLASS[key])
    order = np.full(n, -1, np.int8)
    bad = np.zeros(n, bool)

    # Buddy blocks: the first page is PageBuddy with the order in private.  Computed first
    # (it reads no class) so that the blank-page grouping below can skip their pages.
    if pl.pagetype is not None and "PGTY_buddy" in pl.pagetype:  # the top byte alone
        is_buddy = pt.view(u8)[3::4] == u8(pl.pagetype["PGTY_buddy"] & 0xFF)
    else:
        is_buddy = pl.is_buddy(pt)
    bud = np.flatnonzero(head & is_buddy)
    bo = pages["private"][bud]
    good = bo < ctx.nr_orders
    bad[bud[~good]] = True
    bud, bo = bud[good], bo[good].astype(np.int64)
    cover = _cover(n, bud, bo)
    covered = cover > 0

    # alloc_pages(order > 0) without __GFP_COMP: only the first page holds the reference;
    # the other pages of the block are blank with refcount 0.  A blank refcount-0 page
    # right after an allocated untyped page, inside the naturally aligned block that page
    # would head, is counted with it ("kernel") rather than as "free".  (A blank page is
    # exactly a head still classed "free" here.  Those inside a buddy block end as buddy
    # whatever happens here, unless they are PG_head and pass their class to tails.)
    blank = np.flatnonzero((cls == C["free"]) & valid & (~covered | is_head))
    if len(blank):
        allocated = np.flatnonzero(valid & head & (ref > 0))
        k = np.searchsorted(allocated, blank) - 1
        ok = k >= 0
        last = np.where(ok, allocated[np.maximum(k, 0)], 0)
        dist = blank - last
        span = np.left_shift(1, np.ceil(np.log2(dist + 1.0)).astype(np.int64))
        ok &= (dist < (1 << (ctx.nr_orders - 1))) & (last % span == 0) & (cls[last] == C["kernel"])
        cls[blank[ok]] = C["kernel"]

    # Compound tails take their head's class.
    tpfn = np.flatnonzero(tail)
    if len(tpfn):
        hp = _heads(pl, vm, tpfn, comp[tpfn])
        ok = (hp >= 0) & (hp < tpfn) & (tpfn - hp < (1 << 20))
        hp_c = np.where(ok, hp, 0)
        ok &= valid[hp_c] & is_head[hp_c]
        cls[tpfn[ok]] = cls[hp_c[ok]]
        bad[tpfn[~ok]] = True

    bad |= cover > 1
    inner = covered.copy()
    inner[bud] = False
    bad |= inner & (~ref0 | typed | tail)
    cls = np.where(covered, u8(C["buddy"]), cls)
    order[bud] = bo

    # Per-CPU lists.
    findings: list[str] = []
    pcp_pfns, pcp_orders = _pcp_pages(ctx, pl, vm, n, findings, comp, valid)
    if len(pcp_pfns):
        bad[pcp_pfns[(cls[pcp_pfns] == C["buddy"]) | (ref[pcp_pfns] != 0)]] = True
        pc = _expand(n, pcp_pfns, pcp_orders)
        pc = pc[cls[pc] != C["buddy"]]
        cls[pc] = C["pcp"]
        order[pcp_pfns] = pcp_orders

    zid = _zone_ids(zones_, n)
    cls = np.where(valid & (zid >= 0), cls, u8(C["hole"]))
    bad &= valid
    return PageMap(vm, pl.size, pages, valid, cls, order, tail, bad, zid, zones_,
                   findings, unreadable)


def _cover(n: int, starts: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """How many blocks [start, start + 2^order) cover each pfn."""
    d = np.zeros(n + 1, np.int32)
    ends = np.minimum(starts + (1 << orders), n)
    np.add.at(d, starts, 1)
    np.add.at(d, ends, -1)
    return np.cumsum(d[:-1], dtype=np.int32)


def _expand(n: int, starts: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Every pfn of the blocks [start, start + 2^order) (clipped to n; repeats kept)."""
    lens = np.maximum(np.minimum(starts + (1 << orders), n) - starts, 0)
    total = int(lens.sum())
    first = np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + (np.arange(total) - first)


# --- per-CPU page lists --------------------------------------------------------------
def pcp_layout(ctx: KernelContext) -> tuple[int, int, int, int, int]:
    """(zone member offset, offset of the pcp struct in what it points to, count offset,
    lists offset, number of lists) for this kernel."""
    t, zl = ctx.t, ctx.zone_layout
    if zl.has("per_cpu_pageset"):
        # 5.14+ (commit 28f836b6777b "mm/page_alloc: split per cpu page lists and zone
        # stats"): zone->per_cpu_pageset is a __percpu struct per_cpu_pages.
        pcp = t.layout("struct per_cpu_pages")
        return (zl.offset("per_cpu_pageset"), 0, pcp.offset("count"), pcp.offset("lists"),
                pcp["lists"].array_length)
    # 5.10: zone->pageset is a __percpu struct per_cpu_pageset { struct per_cpu_pages pcp }.
    ps = t.layout("struct per_cpu_pageset")
    pcp = t.layout("struct per_cpu_pages")
    return (zl.offset("pageset"), ps.offset("pcp"), pcp.offset("count"), pcp.offset("lists"),
            pcp["lists"].array_length)


def pindex_to_order(ctx: KernelContext, pindex: int, nlists: int) -> int:
    """mm/page_alloc.c pindex_to_order(): 3 lists (one per PCPTYPE) per order up to
    PAGE_ALLOC_COSTLY_ORDER (3), then the THP lists of order HPAGE_PMD_ORDER."""
    pcptypes = ctx.migratetypes.get("MIGRATE_PCPTYPES", 3)
    if nlists <= pcptypes:  # 5.10: order-0 only
        return 0
    low = pcptypes * 4
    if pindex >= low:
        # HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT: a page of 8-byte entries.
        return (ctx.t.page_size // 8).bit_length() - 1
    return pindex // pcptypes


def pcp_set_up(count: int, lists: bytes) -> bool:
    """Whether a CPU's ``struct per_cpu_pages`` has been set up: per_cpu_pages_init()
    (mm/page_alloc.c) runs INIT_LIST_HEAD on every ``lists[]`` head, so a head is never
    all zeros afterwards.  Early in boot (before setup_per_cpu_pageset(), or for the CPUs
    whose boot_pageset is not initialised yet) the count and every head are still zero:
    such lists are not there yet, not broken."""
    return count != 0 or any(lists)


def _pcp_pages(ctx: KernelContext, pl: PageLayout, vmemmap: int, n: int, findings: list[str],
               nxt: np.ndarray, valid: np.ndarray):
    """(pfns, orders) of every page block on every per-CPU list of every zone.

    Each list is walked at most pcp->count + 1 steps (count is in pages, so it bounds the
    number of entries); a cycle, a pointer outside the memmap or an overlong list becomes a
    finding.  The next pointers come from the decoded memmap (``pcp_list.next`` is the
    word after flags), not from one read per page."""
    t = ctx.t
    try:
        zoff, pcp_in, count_off, lists_off, nlists = pcp_layout(ctx)
    except TargetError as e:
        findings.append(f"per-CPU lists not decoded: {e}")
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sz = pl.size
    out_p: list[int] = []
    out_o: list[int] = []
    # for_each_possible_cpu() and __per_cpu_offset[]: the target's (memscope.target.base).
    try:
        offsets = {cpu: t.per_cpu_offset(cpu) for cpu in t.possible_cpus}
    except TargetError as e:
        findings.append(f"per-CPU lists not decoded: {e}")
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Python ints straight from the arrays (memoryview items), not numpy scalars.
    nxt_v = memoryview(np.ascontiguousarray(nxt, dtype=np.uint64))
    valid_v = memoryview(np.ascontiguousarray(valid, dtype=bool))
    entry0 = pl.lru_off + vmemmap  # pcp_list.next points at page->pcp_list (the lru word)
    for z in zones(ctx):
        try:
            ptr = t.read_u64(z.address + zoff)
        except FaultError:
            continue
        for cpu, off in offsets.items():
            base = (ptr + off) & (2**64 - 1)
            base += pcp_in
            try:
                count = t.read_int(base + count_off, 4, signed=True)
                heads = np.frombuffer(t.read(base + lists_off, 16 * nlists), "<u8")
            except FaultError:
                findings.append(f"node {z.node} zone {z.name} cpu {cpu}: pcp unreadable")
                continue
            if not pcp_set_up(count, heads.tobytes()):
                continue
            for li in range(nlists):
                head_addr = base + lists_off + 16 * li
                o = pindex_to_order(ctx, li, nlists)
                node = int(heads[2 * li])
                seen = set()
                steps = 0
                bound = max(count, 0)
                first = len(out_p)
                while node != head_addr:
                    if steps > bound or node in seen:
                        findings.append(f"node {z.node} zone {z.name} cpu {cpu} list {li}: "
                                        "cycle or longer than pcp->count")
                        break
                    seen.add(node)
                    steps += 1
                    pfn, rem = divmod(node - entry0, sz)
                    if rem or not 0 <= pfn < n:
                        findings.append(f"node {z.node} zone {z.name} cpu {cpu} list {li}: "
                                        f"pointer {node:#x} outside the memmap")
                        break
                    if not valid_v[pfn]:
                        findings.append(f"node {z.node} zone {z.name} cpu {cpu}: "
                                        f"unreadable list entry {node:#x}")
                        break
                    out_p.append(pfn)
                    node = nxt_v[pfn]
                out_o.extend([o] * (len(out_p) - first))
    return np.array(out_p, np.int64), np.array(out_o, np.int64)


# --- records -------------------------------------------------------------------------
@dataclasses.dataclass
class ZonePages:
    """
    The pages of one zone by class (:func:`zone_counts`, the ``pages`` command).

    Pages are counted over the zone's span, pfns [``start_pfn``, ``end_pfn``); where
    spans overlap (ZONE_MOVABLE, interleaved nodes) a pfn counts for the later zone in
    node and ``node_zones[]`` order only.

    - ``node``, ``zone``: node id and zone name.
    - ``start_pfn``, ``end_pfn``: ``zone->zone_start_pfn`` and ``zone_start_pfn +
      spanned_pages`` (exclusive).
    - ``counts``: class -> pages, every class of :data:`CLASSES` present (0 when none);
      they add up to the pfns of the span the zone owns, holes included.
    - ``buddy_blocks``: free buddy blocks per order (one entry per ``free_area[]``
      element), counted from the memmap (first pages that are PageBuddy with the order in
      ``page->private``), not from the lists.
    - ``pcp_pages``: pages on the per-CPU lists (``counts["pcp"]``).
    - ``compound_tails``: pages that are tails of a compound page (whatever their class).
    - ``inconsistent``: pages whose struct page contradicts the others (see the module's
      documentation; 0 on a frozen dump).
    """

    node: int
    zone: str
    start_pfn: int
    end_pfn: int
    counts: dict[str, int]  # class -> pages
    buddy_blocks: list[int]  # free buddy blocks per order (first pages found)
    pcp_pages: int
    compound_tails: int
    inconsistent: int


def zone_counts(ctx: KernelContext) -> list[ZonePages]:
    """
    Count the classified pages of every populated zone (the ``pages`` command).

    :param ctx: the context of the target (the memmap is decoded once per context)
    :return: one :class:`ZonePages` per populated zone, online nodes then
        ``node_zones[]`` order
    :raises TargetError: a type, member or enumerator is missing, or the memmap cannot be
        located (``mem_section``, SECTION_SIZE_BITS, vmemmap)
    :raises FaultError: a ``struct zone`` or ``mem_section[]`` root cannot be read (an
        unreadable part of the memmap is holes instead)
    """
    pm = memmap(ctx)
    n = pm.nr_pages
    out = []
    for i, z in enumerate(pm.zones):
        # zone_id == i only inside the zone's span (a later, overlapping zone may own part
        # of it): count on that slice, masked only when it is not all ours.
        lo, hi = min(z.zone_start_pfn, n), min(z.end_pfn, n)
        mine = pm.zone_id[lo:hi] == i
        whole = bool(mine.all())

        def part(a: np.ndarray) -> np.ndarray:
            return a[lo:hi] if whole else a[lo:hi][mine]

        cls = part(pm.cls)
        c = np.bincount(cls, minlength=len(CLASSES))
        order = part(pm.order)
        bo = order[(cls == C["buddy"]) & (order >= 0)]
        out.append(ZonePages(
            z.node, z.name, z.zone_start_pfn, z.end_pfn,
            {name: int(c[i2]) for i2, name in enumerate(CLASSES)},
            [int(x) for x in np.bincount(bo, minlength=ctx.nr_orders)],
            int(c[C["pcp"]]), int(np.count_nonzero(part(pm.tail))),
            int(np.count_nonzero(part(pm.inconsistent)))))
    return out


def flag_names(pl: PageLayout, flags: int) -> list[str]:
    """
    Name the set bits of a ``page->flags`` word from ``enum pageflags``
    (include/linux/page-flags.h), without the ``PG_`` prefix; of the enumerators that
    share a bit (aliases such as PG_owner_priv_1 / PG_checked) the first in the enum is
    used.

    :param pl: the probed struct page layout
    :param flags: the flags word (callers pass its low 32 bits: the zone, node and
        section numbers live in the top bits)
    :return: names in bit order, e.g. ``["uptodate", "lru", "head"]``
    """
    by_bit: dict[int, str] = {}
    for name, bit in pl.pageflags.items():
        by_bit.setdefault(bit, name)
    return [by_bit[b][3:] for b in sorted(by_bit) if flags >> b & 1]


@dataclasses.dataclass
class PageRecord:
    """
    One page's ``struct page`` decoded and classified (:func:`page_records`, ``pages
    --pfn``).

    - ``pfn``: the page frame number.
    - ``cls``: its class, a name of :data:`CLASSES` (the module's documentation says how
      it is decided); ``"hole"`` when there is no readable struct page or the pfn lies
      outside every zone.
    - ``flags``: the set ``page->flags`` bits below bit 32 (``flags.f`` on 7.2) of this
      struct page itself (a tail's word is not its head's), by :func:`flag_names`.
    - ``order``: the order of the free block this page starts (buddy: ``page->private``
      of a PageBuddy page; pcp: the list's order), else None.
    - ``refcount``: ``page->_refcount`` (signed 32-bit).
    - ``mapcount``: ``page->_mapcount + 1`` (0 for a page mapped nowhere), the raw word of
      this page alone; None when the word holds a page type instead.
    - ``page_type``: the type held in the ``_mapcount`` / ``page_type`` word, without
      prefix: 6.10+ the ``enum pagetype`` name without ``PGTY_`` ("buddy", "slab",
      "table", "hugetlb", ...); 5.10-6.9 "buddy", "offline" or "table"; a hex number for
      a type memscope does not know; None when the word is a mapcount.
    - ``mapping``: ``page->mapping`` as stored (bit 0 PAGE_MAPPING_ANON, bit 1
      PAGE_MAPPING_MOVABLE).
    - ``index``: ``page->index`` (7.x ``__folio_index``).
    - ``private``: ``page->private``.
    - ``head_pfn``: for a compound tail, its head's pfn (from ``compound_head``, 7.x
      ``compound_info``), else None.
    - ``inconsistent``: the struct page contradicts the others (see the module's
      documentation).

    A pfn without a readable struct page has every other field empty: ``flags=[]``,
    ``refcount=0``, ``mapping=index=private=0``, the rest None or False.
    """

    pfn: int
    cls: str
    flags: list[str]
    order: int | None
    refcount: int
    mapcount: int | None  # None when page_type holds a type
    page_type: str | None
    mapping: int
    index: int
    private: int
    head_pfn: int | None
    inconsistent: bool


def page_records(ctx: KernelContext, lo: int, hi: int) -> list[PageRecord]:
    """
    Get the pages of pfns [*lo*, *hi*) as records (``pages --pfn``).

    :param ctx: the context of the target (the memmap is decoded once per context)
    :param lo: first pfn (``lo >= 0``)
    :param hi: end pfn, exclusive (``hi <= max_pfn``, the end of the last zone's span)
    :return: one :class:`PageRecord` per pfn, in pfn order
    :raises TargetError: a range that is empty, starts below 0 or ends past the last pfn
        (the message says the memory's extent), or as :func:`zone_counts`
    :raises FaultError: as :func:`zone_counts`
    """
    pm = memmap(ctx)
    pl = page_layout(ctx)
    if not 0 <= lo < hi <= pm.nr_pages:
        raise TargetError(f"pfns {lo:#x}-{hi - 1:#x} are not within this kernel's memory "
                          f"(pfn 0-{pm.nr_pages - 1:#x})")
    out = []
    typenames = {v: k[5:] for k, v in (pl.pagetype or {}).items()}
    for pfn in range(lo, hi):
        if not pm.valid[pfn]:
            out.append(PageRecord(pfn, "hole", [], None, 0, None, None, 0, 0, 0, None, False))
            continue
        p = {f: a[pfn] for f, a in pm.pages.items()}
        ptv = int(p["mapcount"])
        typed = bool(pl.has_type(ptv))
        if typed:
            if pl.pagetype is not None:
                tname = typenames.get(ptv >> 24, f"{ptv >> 24:#x}")
            else:
                tname = next((nm for nm, f in (("buddy", pl.is_buddy), ("offline", pl.is_offline),
                                               ("table", pl.is_table)) if f(ptv)), f"{ptv:#x}")
        head = None
        if pm.tail[pfn]:
            head = int(_heads(pl, pm.vmemmap, np.array([pfn]),
                              np.array([p["compound"]], np.uint64))[0])
        o = int(pm.order[pfn])
        out.append(PageRecord(
            pfn, CLASSES[pm.cls[pfn]], flag_names(pl, int(p["flags"]) & ((1 << 32) - 1)),
            o if o >= 0 else None, int(p["refcount"]),
            None if typed else ptv - (1 << 32) + 1 if ptv >= 1 << 31 else ptv + 1,
            tname if typed else None, int(p["mapping"]), int(p["index"]), int(p["private"]),
            head, bool(pm.inconsistent[pfn])))
    return out
