"""The memmap: every ``struct page`` of a target read in bulk (include/linux/mm_types.h,
include/linux/mmzone.h, SPARSEMEM_VMEMMAP).

The plumbing every page-level reader shares, and nothing about what a page is (that is
:mod:`memscope.mm.page`'s classification):

- :class:`PageLayout`: ``struct page`` and its flag and type encodings, probed once per
  kernel (:func:`page_layout`);
- :func:`sections`: ``mem_section[]`` (present, online, ``usage``), SECTION_SIZE_BITS from
  VMCOREINFO or, when it is absent, from the debug info (checked against memory);
- :func:`vmemmap_base`: where pfn 0's struct page is;
- :func:`read_struct_pages`: the whole memmap read section by section (2 MiB reads per
  128 MiB section on x86_64) and viewed through a numpy structured dtype, one contiguous
  array per decoded field.

The decoded fields are :attr:`PageLayout.page_fields`.  A module that needs more of each
struct page (SLUB: ``slab_cache``, ``freelist`` and ``counters`` of the slab pages, which
share struct page's words as ``struct slab``) registers a provider with
:func:`register_page_fields` when it is imported, and finds its arrays, under the names it
chose, in the same decode (:attr:`memscope.mm.page.PageMap.pages`), next to the classes:
one read of the memmap serves every command.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Callable, Iterable

import numpy as np

from ..target.base import FaultError, Target, TargetError
from .context import KernelContext
from .zone import Zone


@dataclasses.dataclass(frozen=True)
class PageField:
    """
    One ``struct page`` word the bulk decode keeps per pfn.

    - ``name``: the key of its array (``"flags"``, ``"mapping"``, ... or a provider's).
    - ``offset``: bytes from the start of struct page.
    - ``format``: the numpy format of the word (``"<u8"``, ``"<i4"``, ``"u1"``).
    """

    name: str
    offset: int
    format: str


#: Providers of extra decoded fields (:func:`register_page_fields`).
_FIELD_PROVIDERS: list[Callable[[Target, "PageLayout"], Iterable[PageField]]] = []


def register_page_fields(provider: Callable[[Target, "PageLayout"], Iterable[PageField]]
                         ) -> None:
    """
    Have the memmap decode keep more struct page words: ``provider(target, layout)`` is
    called once per kernel, when its :class:`PageLayout` is probed, and returns the
    :class:`PageField` records to add (none when the kernel has no such member).  Register
    at import time, before any context decodes its memmap; registering the same provider
    twice has no effect.

    :param provider: a function of (:class:`~memscope.target.base.Target`,
        :class:`PageLayout`) to an iterable of :class:`PageField`
    :raises TargetError: (when the layout is probed) two fields share a name
    """
    if provider not in _FIELD_PROVIDERS:
        _FIELD_PROVIDERS.append(provider)


# mem_section->section_mem_map flag bits (include/linux/mmzone.h; stable 5.10-7.2).
SECTION_MARKED_PRESENT = 1 << 0
SECTION_HAS_MEM_MAP = 1 << 1
SECTION_IS_ONLINE = 1 << 2

# Old page_type encoding (5.10, 6.1: include/linux/page-flags.h): a type is set by
# clearing its bit below PAGE_TYPE_BASE.  These are #defines, absent from the debug info;
# PG_buddy and PG_offline are cross-checked against VMCOREINFO when it has them.
PAGE_TYPE_BASE = 0xF0000000
OLD_PG_BUDDY = 0x80
OLD_PG_OFFLINE = 0x100

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
        # compound_head, renamed compound_info in 7.x (may hold a mask, see
        # compound_head_pfns()).
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

    @cached_property
    def page_fields(self) -> tuple[PageField, ...]:
        """Every struct page word the bulk decode keeps per pfn: the classification's
        (:data:`FIELDS`, and ``dtor`` where struct page has ``compound_dtor``), then those
        of each provider given to :func:`register_page_fields`, in registration order."""
        out = [PageField("flags", self.flags_off, "<u8"),
               PageField("compound", self.compound_off, "<u8"),
               PageField("mapping", self.mapping_off, "<u8"),
               PageField("index", self.index_off, "<u8"),
               PageField("private", self.private_off, "<u8"),
               PageField("mapcount", self.mapcount_off, "<u4"),
               PageField("refcount", self.refcount_off, "<i4")]
        if self.dtor_off is not None:  # a first tail's compound_dtor (5.10-6.5)
            out.append(PageField("dtor", self.dtor_off, "u1"))
        for provider in _FIELD_PROVIDERS:
            taken = {f.name for f in out}
            for f in provider(self.t, self):
                if f.name in taken:
                    raise TargetError(f"struct page field {f.name!r} is decoded twice")
                out.append(f)
        return tuple(out)

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of :attr:`page_fields` (the keys of the decoded arrays)."""
        return tuple(f.name for f in self.page_fields)

    def dtype(self) -> np.dtype:
        """The numpy structured dtype of one struct page with :attr:`page_fields` at
        their offsets (``itemsize`` = sizeof(struct page))."""
        fs = self.page_fields
        return np.dtype({"names": [f.name for f in fs], "formats": [f.format for f in fs],
                         "offsets": [f.offset for f in fs], "itemsize": self.size})

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


#: The struct page fields the classification keeps per pfn (:attr:`PageLayout.page_fields`).
FIELDS = ("flags", "compound", "mapping", "index", "private", "mapcount", "refcount")


def _read_memmap(ctx: KernelContext, pl: PageLayout, vmemmap: int, n: int, lo: int = 0):
    """Read the memmap of pfns [LO, N) section by section and keep each field of
    :attr:`PageLayout.page_fields` in its own array: (field name -> array indexed by
    pfn - LO, zeros where no struct page was read; bool array: a struct page was read;
    pages present in mem_section[] whose memmap could not be read).

    Each chunk read is viewed in place (np.frombuffer with the struct page dtype) and its
    fields are copied out while the chunk is still in the CPU cache; no copy of the whole
    memmap is ever made (the field arrays are what the classification reads, contiguous)."""
    t = ctx.t
    s = sections(ctx)
    sz = pl.size
    dt = pl.dtype()
    m = max(n - lo, 0)
    out = {f: np.zeros(m, dt.fields[f][0]) for f in pl.fields}  # zero pages: holes
    valid = np.zeros(m, bool)
    unreadable = 0
    pps = s.pages_per_section

    def put(a: int, b: int, raw: bytes) -> None:
        rec = np.frombuffer(raw, dt)
        for f in pl.fields:
            out[f][a - lo:b - lo] = rec[f]
        valid[a - lo:b - lo] = True

    # One read per present section (2 MiB of struct pages for 128 MiB on x86_64 4K pages),
    # or the part of it within [LO, N); a section whose read fails (live target, vmemmap
    # page not dumped) is retried in 64 KiB pieces so that only the unreadable part
    # becomes a hole.
    present = s.present()
    for nr in (np.flatnonzero(present[lo // pps:(n + pps - 1) // pps]) + lo // pps).tolist():
        a = max(nr * pps, lo)
        b = min(nr * pps + pps, n)
        if b <= a:
            continue
        try:
            with t.speculative():  # retried in pieces: only those pieces' holes count
                raw = t.read(vmemmap + a * sz, (b - a) * sz)
            put(a, b, raw)
        except FaultError:
            step = max(1, 65536 // sz)
            for x in range(a, b, step):
                y = min(x + step, b)
                try:
                    put(x, y, t.read(vmemmap + x * sz, (y - x) * sz))
                except FaultError:
                    unreadable += y - x
    return out, valid, unreadable


def compound_head_pfns(pl: PageLayout, vmemmap: int, pfns: np.ndarray,
                       info: np.ndarray) -> np.ndarray:
    """Head pfn of the tails PFNS from their compound_head/compound_info words
    (include/linux/page-flags.h _compound_head()), int64 array."""
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


def read_struct_pages(ctx: KernelContext) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """
    Read every struct page of pfns [0, :func:`max_pfn`) in bulk and decode the words of
    :attr:`PageLayout.page_fields`.

    :param ctx: the context of the target
    :return: (field name -> array indexed by pfn, zeros where no struct page was read;
        bool array, True where a struct page was read; the number of struct pages of
        present sections that could not be read)
    :raises TargetError: the memmap cannot be located (``mem_section``,
        SECTION_SIZE_BITS, vmemmap)
    :raises FaultError: a ``mem_section[]`` root cannot be read
    """
    return _read_memmap(ctx, page_layout(ctx), vmemmap_base(ctx), max_pfn(ctx))


#: struct_pages_of() reads across a gap of up to this many pfns rather than read twice
#: (a read costs about as much as 16 KiB of copying)
_GAP_PFNS = 256


def struct_pages_of(ctx: KernelContext, pfns: np.ndarray) -> np.ndarray:
    """The struct pages of PFNS (any order, repeats allowed), raw: an (len(PFNS),
    sizeof(struct page)) uint8 array, all zeros where one cannot be read.  Pfns closer
    than 256 to each other are read together (one read per cluster: a process's pages
    lie in a few hundred scattered runs); a cluster that cannot be read whole (a hole in
    the memmap) is read run by run.  The whole memmap is :func:`read_struct_pages`.

    :param pfns: integer array of page frame numbers below :func:`max_pfn`."""
    from ..target.base import FaultError

    pl = page_layout(ctx)
    vm = vmemmap_base(ctx)
    u, inv = np.unique(np.asarray(pfns, np.int64), return_inverse=True)
    out = np.zeros((len(u), pl.size), np.uint8)

    def read(lo: int, hi: int) -> bool:
        first, last = int(u[lo]), int(u[hi - 1])
        try:
            raw = ctx.t.read(vm + first * pl.size, (last + 1 - first) * pl.size)
        except FaultError:
            return False
        rec = np.frombuffer(raw, np.uint8).reshape(-1, pl.size)
        out[lo:hi] = rec[u[lo:hi] - first]
        return True

    for lo, hi in _clusters(u, _GAP_PFNS):
        if not read(lo, hi):
            for a, b in _clusters(u[lo:hi], 1):
                read(lo + a, lo + b)
    return out[inv.ravel()]


def _clusters(u: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of sorted U where consecutive values differ by at most GAP."""
    if not len(u):
        return []
    breaks = np.flatnonzero(np.diff(u) > gap) + 1
    return list(zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(u)].tolist()))


def struct_page_word(rec: np.ndarray, off: int, dtype: str = "<u8") -> np.ndarray:
    """The field of type DTYPE at byte OFF of each record of :func:`struct_pages_of`."""
    n = np.dtype(dtype).itemsize
    return np.ascontiguousarray(rec[:, off:off + n]).view(dtype).ravel()


__all__ = ["PageField", "PageLayout", "Sections", "FIELDS", "SECTION_MARKED_PRESENT",
           "SECTION_HAS_MEM_MAP", "SECTION_IS_ONLINE", "SUBSECTION_SHIFT", "PAGE_TYPE_BASE",
           "OLD_PG_BUDDY", "OLD_PG_OFFLINE", "compound_head_pfns", "max_pfn",
           "page_is_buddy", "page_layout", "read_struct_pages", "register_page_fields",
           "section_size_bits", "section_size_bits_from_debuginfo", "sections",
           "struct_page_word", "struct_pages_of",
           "vmemmap_base", "zones"]
